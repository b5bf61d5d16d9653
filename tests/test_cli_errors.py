"""Bad arguments stop each command with exit status 2 and a message naming the problem, not a traceback."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_image_folder

from brainmri.models.checkpoint import write_manifest
from reports import audit
from train import evaluate
from train import train as train_cli


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Each bad data folder, with the text its error message must contain."""
    root = tmp_path_factory.mktemp("bad")
    corrupt = make_image_folder(root / "corrupt", per_class=2)
    (corrupt / "Training" / "glioma" / "broken.jpg").write_bytes(b"this is not a JPEG")
    truncated = make_image_folder(root / "truncated", per_class=2)
    whole = (truncated / "Training" / "pituitary" / "img_0.png").read_bytes()
    (truncated / "Training" / "pituitary" / "cut.png").write_bytes(whole[: len(whole) // 2])
    empty = make_image_folder(root / "empty", per_class=2)
    for f in (empty / "Training" / "notumor").iterdir():
        f.unlink()
    return {
        "missing": (root / "no_such_folder", str(root / "no_such_folder")),
        "corrupt": (corrupt, "broken.jpg"),
        "truncated": (truncated, "cut.png"),
        "empty": (empty, str(empty / "Training" / "notumor")),
    }


def assert_fails_naming(main, argv: list[str], needle: str, caplog, capsys) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(argv) == 2
    text = caplog.text + capsys.readouterr().err
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and needle in errors[-1], f"{needle!r} not in {errors}"
    assert "Traceback" not in text


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated", "empty"])
def test_train_bad_data(case, bad_data, tmp_path, caplog, capsys):
    data, needle = bad_data[case]
    assert_fails_naming(
        train_cli.main, ["--model", "simple_cnn_7", "--data", str(data), "--out", str(tmp_path / "o")], needle, caplog, capsys
    )


def test_train_unknown_model(synthetic_data, tmp_path, caplog, capsys):
    assert_fails_naming(
        train_cli.main, ["--model", "resnet_nope", "--data", str(synthetic_data), "--out", str(tmp_path)], "resnet_nope", caplog, capsys
    )


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated", "empty"])
def test_evaluate_bad_data(case, bad_data, tiny_checkpoint, caplog, capsys):
    data, needle = bad_data[case]
    assert_fails_naming(evaluate.main, [str(tiny_checkpoint), "--data", str(data)], needle, caplog, capsys)


def test_evaluate_unknown_architecture(tiny_checkpoint, synthetic_data, tmp_path, caplog, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in tiny_checkpoint.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "resnet_nope"
    (folder / "config.json").write_text(json.dumps(config))
    write_manifest(folder)
    assert_fails_naming(evaluate.main, [str(folder), "--data", str(synthetic_data)], "resnet_nope", caplog, capsys)


def test_evaluate_missing_checkpoint(synthetic_data, tmp_path, caplog, capsys):
    assert_fails_naming(
        evaluate.main, [str(tmp_path / "nothing"), "--data", str(synthetic_data)], str(tmp_path / "nothing"), caplog, capsys
    )


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated", "empty"])
def test_audit_bad_data(case, bad_data, tmp_path, caplog, capsys):
    data, needle = bad_data[case]
    assert_fails_naming(audit.main, [str(data), "--out", str(tmp_path)], needle, caplog, capsys)


def test_audit_name_that_is_neither_folder_nor_hub_dataset(tmp_path, caplog, capsys, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)  # a relative name that does not exist is tried as a Hub dataset id ...
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # ... offline, as in CI, rather than waiting on the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert_fails_naming(audit.main, ["no_such_dataset_folder"], "no_such_dataset_folder", caplog, capsys)


def test_commands_exit_2_without_traceback(bad_data, tiny_checkpoint, tmp_path):
    """The same through real processes: exit status and stderr as a user sees them."""
    data, needle = bad_data["corrupt"]
    commands = {
        "train": ["train.train", "--model", "simple_cnn_7", "--data", str(data), "--out", str(tmp_path / "o")],
        "evaluate": ["train.evaluate", str(tiny_checkpoint), "--data", str(data)],
        "audit": ["reports.audit", str(data), "--out", str(tmp_path / "a")],
    }
    procs = {
        name: subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in commands.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{err[-2000:]}"
        assert needle in err and "Traceback" not in err, f"{name}:\n{err[-2000:]}"
