"""A broken checkpoint folder is a ValueError naming the folder and the problem; weights never go through pickle.

One tiny checkpoint is trained (a subprocess, as a user would) and copied for each fault.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brainmri.calibration import load_temperature
from brainmri.models.checkpoint import CALIBRATION, CONFIG, MANIFEST, WEIGHTS, load_checkpoint, write_manifest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # trains a checkpoint in a subprocess (about 30 s on 2 CPU cores)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("faults") / "simple_cnn_7"
    cmd = [sys.executable, "-m", "train.train", "--model", "simple_cnn_7", "--data", str(data_dir)]
    cmd += ["--limit-per-class", "8", "--epochs", "1", "--evaluate-test", "false", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {CONFIG, WEIGHTS, MANIFEST, CALIBRATION} <= {p.name for p in out.iterdir()}
    return out


@pytest.fixture
def checkpoint(trained_checkpoint, tmp_path) -> Path:
    """A fresh copy to break."""
    return Path(shutil.copytree(trained_checkpoint, tmp_path / "ckpt"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_intact_checkpoint_loads_and_predicts(checkpoint):
    model = load_checkpoint(checkpoint)
    size = model.pretrained_cfg["input_size"]
    assert model(torch.zeros(1, *size)).shape == (1, 4)
    assert load_temperature(checkpoint) > 0


def test_truncated_weights(checkpoint):
    weights = checkpoint / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(f"{checkpoint}: {WEIGHTS} does not match its sha256")):
        load_checkpoint(checkpoint)
    write_manifest(checkpoint)  # even with a manifest that vouches for it, the file itself is unreadable
    with pytest.raises(ValueError, match=re.escape(f"cannot load checkpoint {checkpoint}")):
        load_checkpoint(checkpoint)


def test_altered_weights(checkpoint):
    flip_byte(checkpoint / WEIGHTS, (checkpoint / WEIGHTS).stat().st_size // 2)
    with pytest.raises(ValueError, match=re.escape(f"{checkpoint}: {WEIGHTS} does not match its sha256")):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("name", [CONFIG, WEIGHTS, CALIBRATION])
def test_missing_file(checkpoint, name):
    (checkpoint / name).unlink()
    with pytest.raises(ValueError, match=re.escape(f"{checkpoint} is missing {name}")):
        load_checkpoint(checkpoint)


def test_pickled_weights_are_never_a_fallback(checkpoint):
    """timm would fall back to pytorch_model.bin (a pickle) without model.safetensors; we refuse instead."""
    torch.save(load_checkpoint(checkpoint).state_dict(), checkpoint / "pytorch_model.bin")
    (checkpoint / WEIGHTS).unlink()
    with pytest.raises(ValueError, match=re.escape(f"{checkpoint} is missing {WEIGHTS}")):
        load_checkpoint(checkpoint)


def test_corrupt_config(checkpoint):
    (checkpoint / CONFIG).write_text((checkpoint / CONFIG).read_text()[:-20])
    with pytest.raises(ValueError, match=re.escape(f"{checkpoint}: {CONFIG} does not match its sha256")):
        load_checkpoint(checkpoint)
    write_manifest(checkpoint)
    with pytest.raises(ValueError, match=re.escape(f"{checkpoint}/{CONFIG} is not valid JSON")):
        load_checkpoint(checkpoint)


def test_config_naming_an_unknown_architecture(checkpoint):
    config = json.loads((checkpoint / CONFIG).read_text())
    (checkpoint / CONFIG).write_text(json.dumps({**config, "architecture": "no_such_net"}))
    write_manifest(checkpoint)
    with pytest.raises(ValueError, match=re.escape(f"cannot load checkpoint {checkpoint}")):
        load_checkpoint(checkpoint)


def test_corrupt_manifest(checkpoint):
    (checkpoint / MANIFEST).write_text("{")
    with pytest.raises(ValueError, match=re.escape(f"{checkpoint}: {MANIFEST} is not valid JSON")):
        load_checkpoint(checkpoint)


def test_one_broken_folder_leaves_the_others_loadable(trained_checkpoint, tmp_path):
    good, bad = (Path(shutil.copytree(trained_checkpoint, tmp_path / n)) for n in ("good", "bad"))
    flip_byte(bad / WEIGHTS, 100)
    loaded, errors = {}, {}
    for folder in (bad, good):
        try:
            loaded[folder.name] = load_checkpoint(folder)
        except ValueError as e:
            errors[folder.name] = str(e)
    assert list(loaded) == ["good"] and "bad" in errors["bad"]


def test_nothing_is_unpickled(checkpoint, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load went through pickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model = load_checkpoint(checkpoint)
    assert load_temperature(checkpoint) > 0
    assert torch.isfinite(model(torch.zeros(1, *model.pretrained_cfg["input_size"]))).all()


def test_a_broken_default_model_does_not_stop_the_app_from_starting(trained_checkpoint, tmp_path, caplog):
    """Warming at start-up logs the broken default model; its requests get the error, as they would unwarmed."""
    from brainmri.models.catalog import ModelSource
    from brainmri.serving import Predictor

    bad = Path(shutil.copytree(trained_checkpoint, tmp_path / "simple_cnn_7"))
    flip_byte(bad / WEIGHTS, 100)
    predictor = Predictor({"simple_cnn_7": ModelSource("simple_cnn_7", "local", str(bad))}, max_batch=8, workers=2)
    assert predictor.default_model == "simple_cnn_7"
    with caplog.at_level("WARNING"):
        predictor.warm()
    assert "could not load simple_cnn_7" in caplog.text and "sha256" in caplog.text
    with pytest.raises(ValueError, match="sha256"):
        predictor.model("simple_cnn_7")


def test_a_broken_judge_fails_before_the_gpu_call_and_warming_hands_the_check_to_another_judge(trained_checkpoint, tmp_path, caplog):
    """A judge whose weights cannot load: a request fails in check_request (before ZeroGPU's task), naming it. Warming
    hands the check to the next model with OOD statistics; with none left the judge stays, so that every request
    keeps failing with the reason rather than being answered unjudged (a simple CNN alone has no statistics)."""
    from PIL import Image

    from brainmri.models.catalog import ModelSource
    from brainmri.models.checkpoint import OOD_CONFIG
    from brainmri.serving import Predictor

    good = Path(shutil.copytree(trained_checkpoint, tmp_path / "simple_cnn_7"))
    bad = Path(shutil.copytree(trained_checkpoint, tmp_path / "simple_cnn_10"))
    flip_byte(bad / WEIGHTS, 100)
    assert (good / OOD_CONFIG).is_file(), "the fixture's run fits OOD statistics (train.train --fit-ood, the default)"
    sources = {n: ModelSource(n, "local", str(f)) for n, f in (("simple_cnn_10", bad), ("simple_cnn_7", good))}
    image = Image.new("RGB", (64, 64), "gray")

    predictor = Predictor(sources, ood_model="simple_cnn_10", segmenter=None)
    predictor.run_passes_on_gpu = lambda *a, **k: pytest.fail("the GPU task ran for a request its judge cannot serve")
    with pytest.raises(ValueError, match="sha256"):
        predictor.predict(image, "simple_cnn_7")
    with caplog.at_level("WARNING"):
        predictor.warm()
    assert "could not load the OOD judge simple_cnn_10" in caplog.text and predictor.ood_model == "simple_cnn_7"
    predictor.run_passes_on_gpu = predictor.run_passes  # off ZeroGPU, the task is the method itself
    answer = predictor.predict(image, "simple_cnn_7")
    assert answer.model == "simple_cnn_7" and answer.ood is not None and answer.ood.checked_by == "simple_cnn_7"

    alone = Predictor({"simple_cnn_10": sources["simple_cnn_10"]}, ood_model="simple_cnn_10", segmenter=None)
    alone.warm()
    assert alone.ood_model == "simple_cnn_10"  # no other judge: the check stays on, and requests say why they fail
    with pytest.raises(ValueError, match="sha256"):
        alone.predict(image, "simple_cnn_10")


def test_a_judge_whose_statistics_are_not_its_weights_hands_the_check_to_another(trained_checkpoint, tmp_path, caplog):
    """New weights beside the old OOD statistics (load_stats refuses them): warming moves the check to the next model
    whose statistics are its own, instead of answering every upload unjudged."""
    from conftest import write_checkpoint
    from PIL import Image

    from brainmri.models.catalog import ModelSource
    from brainmri.serving import Predictor

    good = Path(shutil.copytree(trained_checkpoint, tmp_path / "simple_cnn_7"))
    stale = Path(shutil.copytree(trained_checkpoint, tmp_path / "simple_cnn_10"))
    write_checkpoint(stale, seed=1)  # other weights; the rewritten manifest still covers the old OOD files
    sources = {n: ModelSource(n, "local", str(f)) for n, f in (("simple_cnn_10", stale), ("simple_cnn_7", good))}
    predictor = Predictor(sources, ood_model="simple_cnn_10", segmenter=None)
    with caplog.at_level("WARNING"):
        predictor.warm()
    assert "no statistics for its weights" in caplog.text and predictor.ood_model == "simple_cnn_7"
    answer = predictor.predict(Image.new("RGB", (64, 64), "gray"), "simple_cnn_10")
    assert answer.ood is not None and answer.ood.checked_by == "simple_cnn_7"
