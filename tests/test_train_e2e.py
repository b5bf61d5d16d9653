"""Training end to end, and the checkpoint folder it writes.

The subprocess runs train.train on a few real images per class and checks the files it
wrote load with plain timm (``local-dir:``). Checkpoints store fp16 weights, so "the same
outputs as the in-memory model" means: the same as the in-memory fp32 model whose
weights were rounded to fp16 (to float precision), and close to the unrounded one.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import CLASSES, ROOT
from safetensors.torch import load_file
from timm.data import create_transform, resolve_data_config

import brainmri  # noqa: F401  (registers simple_cnn_* with timm for local-dir:)
from brainmri.data.records import limit_per_class, load_records
from brainmri.models import registry
from brainmri.models.checkpoint import load_checkpoint, save_checkpoint, verify_checkpoint
from brainmri.ood import load_stats

PER_CLASS = 8  # the smallest that leaves every class in a 0.15 validation split (7 folds)
FILES = ["config.json", "model.safetensors", "manifest.json", "metrics.json", "history.csv", "train_config.json", "curves.png"]
FILES += ["confusion.png", "README.md", "calibration.json", "ood.json", "ood.safetensors", "val_split.txt"]


def run_train(data: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "train.train",
        "--data",
        str(data),
        "--limit-per-class",
        str(PER_CLASS),
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def independent_accuracy(folder: Path, data: Path) -> tuple[torch.nn.Module, float]:
    """Accuracy of the folder's model, loaded by plain timm, on the Testing subset train.train scored."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    test = limit_per_class(load_records(data, "test"), PER_CLASS, seed=0)
    with torch.no_grad():
        x = torch.stack([transform(test.open(i)) for i in range(len(test))])
        preds = model(x).argmax(1).numpy()
    return model, float(np.mean(preds == test.labels))


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_name, extra, init",
    [
        ("simple_cnn_7", ["--cuda-graphs"], "random"),  # asked for on a CPU: refused with a log line, trained eagerly
        ("tf_efficientnet_lite0", ["--pretrained", "--max-train-batches", "2", "--amp", "bf16"], "ImageNet"),
    ],
)
def test_train_writes_a_folder_that_timm_loads(data_dir: Path, tmp_path: Path, model_name: str, extra: list[str], init: str):
    out = tmp_path / "run"
    run_train(data_dir, out, "--model", model_name, *extra)

    missing = [f for f in FILES if not (out / f).is_file()]
    assert not missing, f"not written: {missing}"
    assert not (out / "best.safetensors").exists() and not (out / "resume").exists(), "training leftovers not cleaned up"
    verify_checkpoint(out)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == model_name and config["label_names"] == CLASSES
    assert config["initialization"].startswith(init)
    assert config["pretrained_cfg"]["input_size"][1] == registry.get_spec(model_name).input_size
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 4 * PER_CLASS
    assert 0 < metrics["test_unseen"]["n"] < metrics["test"]["n"]  # some of the drawn Testing images have Training twins
    assert 0 <= metrics["test_unseen"]["accuracy"] <= 1 and "test_dedup" not in metrics
    listed = [line for line in (out / "val_split.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(listed) == metrics["validation"]["n"] and all(p.startswith("Training/") for p in listed)
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 2
    card = (out / "README.md").read_text()
    assert "model-index:" in card and config["initialization"] in card and "`ood.json`" in card
    # The OOD statistics, fitted as training finished on the very validation images it chose the epoch on.
    stats = load_stats(out)
    assert stats is not None and stats.means.shape[0] == len(CLASSES)
    assert stats.meta["n_val"] == metrics["validation"]["n"] and stats.meta["n_train"] + stats.meta["n_val"] == 4 * PER_CLASS
    assert {"ood.json", "ood.safetensors"} <= set(json.loads((out / "manifest.json").read_text()))

    # Plain timm reproduces the accuracy train.train recorded, through the folder's own preprocessing ...
    model, accuracy = independent_accuracy(out, data_dir)
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    # ... and is the very model a registry build with the stored tensors gives.
    reference = registry.create_model(model_name).eval()
    reference.load_state_dict(load_file(out / "model.safetensors"))
    x = torch.randn(2, 3, *config["pretrained_cfg"]["input_size"][1:])
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model_name", ["simple_cnn_7", "tf_efficientnet_lite0"])
def test_saved_folder_gives_the_in_memory_models_outputs(tmp_path: Path, model_name: str):
    torch.manual_seed(0)
    model = registry.create_model(model_name)
    size = registry.get_spec(model_name).input_size
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        model.train()(torch.randn(8, 3, size, size) * 2 + 0.5)
    model.eval()
    save_checkpoint(model, tmp_path, CLASSES, extra={"registry_name": model_name})

    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in rounded.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        out, out_rounded, out_fp32 = loaded(x), rounded(x), model(x)
    torch.testing.assert_close(out, out_rounded, rtol=1e-5, atol=1e-5)
    # fp16 storage moves the probabilities only a little.
    assert (out.softmax(1) - out_fp32.softmax(1)).abs().max() < 1e-2
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, size, size)
    # The project's loader is the same model.
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path)(x), out, rtol=0, atol=0)


def test_amp_picks_bf16_autocast_or_fp32():
    from train.train import mixed_precision

    assert mixed_precision("bf16") == "bf16" and mixed_precision("none") == "no"
    assert mixed_precision("auto") == ("bf16" if torch.cuda.is_available() else "no")
    with pytest.raises(ValueError, match="amp must be"):
        mixed_precision("fp16")
