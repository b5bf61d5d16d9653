"""The ensemble is evaluated like one model, each member through its own preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainmri.calibration import calibrated_probs, save_temperature
from brainmri.data.records import load_records
from brainmri.models.checkpoint import load_checkpoint, save_checkpoint
from brainmri.models.registry import create_model, set_input_size
from train.evaluate import evaluate_ensemble, load_test_split, main, predict_logits


@pytest.fixture
def members(tmp_path, data_dir):
    """Two untrained checkpoints at different input sizes, with different temperatures."""
    class_names = load_records(data_dir, "test").class_names
    folders = []
    for seed, size, temperature in ((0, 128, 2.0), (1, 96, 0.5)):
        torch.manual_seed(seed)
        model = create_model("simple_cnn_7", num_classes=len(class_names))
        set_input_size(model, size)
        folder = save_checkpoint(model, tmp_path / f"member_{size}", class_names, extra={"registry_name": f"simple_cnn_7@{size}"})
        save_temperature(folder, temperature)
        folders.append(folder)
    return folders


@pytest.mark.slow  # unseen Testing: twins against all of Training
def test_ensemble_is_scored_like_a_model(members, data_dir, tmp_path):
    out = tmp_path / "results" / "ensemble_metrics.json"
    results = evaluate_ensemble(members, str(data_dir), out, limit=3)
    test, clean = load_test_split(data_dir, limit=3)
    probs = []
    for folder, temperature in zip(members, (2.0, 0.5)):
        model = load_checkpoint(folder)
        assert model.pretrained_cfg["input_size"][1] in (128, 96)
        probs.append(calibrated_probs(predict_logits(model, test), temperature))
    expected = np.mean(probs, axis=0)
    assert results["test"]["n"] == len(test) == 12 and results["test_unseen"]["n"] == len(clean)
    assert results["test"]["accuracy"] == pytest.approx(float((expected.argmax(1) == test.labels).mean()))
    assert results["test"]["loss"] == pytest.approx(float(-np.log(expected[np.arange(len(test)), test.labels]).mean()), rel=1e-5)
    assert [m["temperature"] for m in results["members"]] == [2.0, 0.5]
    assert json.loads(out.read_text())["test"]["accuracy"] == results["test"]["accuracy"]
    assert (out.parent / "ensemble_metrics_confusion.png").is_file() and (out.parent / "ensemble_metrics_reliability.png").is_file()


def test_ensemble_cli_needs_folders_or_one_checkpoint(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "--ensemble" in capsys.readouterr().err


def test_ensemble_with_a_broken_member_is_a_clear_error(members, data_dir, tmp_path):
    (members[1] / "config.json").unlink()
    with pytest.raises(ValueError, match="missing config.json"):
        evaluate_ensemble(members, str(data_dir), tmp_path / "out.json", limit=1)


def test_the_memoised_logits_key_sees_every_weight():
    """Two models that differ in one weight past the first 4 KiB of every tensor get two keys: the logits memoised
    for one are never served for the other."""
    from train.evaluate import _weights_key

    first = create_model("simple_cnn_7")
    second = create_model("simple_cnn_7")
    second.load_state_dict(first.state_dict())
    assert _weights_key(first) == _weights_key(second)
    with torch.no_grad():
        max(second.parameters(), key=lambda p: p.numel()).view(-1)[-1] += 1.0
    assert _weights_key(first) != _weights_key(second)


def test_a_confusion_matrix_is_drawn_again_from_metrics_json_alone(tmp_path):
    from brainmri.models.checkpoint import CONFUSION, METRICS
    from train.evaluate import redraw_confusion

    folder = tmp_path / "simple_cnn_7"
    save_checkpoint(create_model("simple_cnn_7"), folder, "simple_cnn_7")
    with pytest.raises(ValueError, match="cannot read .*metrics.json"):
        redraw_confusion(folder)
    (folder / METRICS).write_text(json.dumps({"validation": {"accuracy": 0.9}}))
    with pytest.raises(ValueError, match="no Testing confusion matrix: run python -m train.evaluate"):
        redraw_confusion(folder)
    (folder / METRICS).write_text(json.dumps({"test": {"confusion_matrix": np.eye(4, dtype=int).tolist()}}))
    assert redraw_confusion(folder) == folder / CONFUSION and (folder / CONFUSION).stat().st_size > 1000
    assert main([str(folder), "--redraw-confusion"]) == 0  # the command the docstring names, no data folder needed


def test_redraw_confusion_takes_one_folder_and_no_ensemble(tmp_path, capsys):
    """An --ensemble beside it would score Testing and overwrite results/ensemble_metrics.json: refused before anything runs."""
    for argv in (["--ensemble", "a", "b", "--redraw-confusion"], ["--redraw-confusion"]):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == 2 and "--redraw-confusion takes one checkpoint folder" in capsys.readouterr().err
