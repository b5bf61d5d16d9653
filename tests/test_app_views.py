"""What the Experiments and Data tabs read: tables from files, counts from the data folder, the real preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from brainmri.app import dataview, experiments
from brainmri.data import eval_transform


def _fake_checkpoint(folder: Path, model: str, val: float) -> None:
    folder.mkdir(parents=True)
    metrics = {
        "model": model,
        "parameters": 1234,
        "input_size": 128,
        "epochs_run": 7,
        "best_epoch": 5,
        "train": {"accuracy": 0.99},
        "validation": {"accuracy": val},
        "test": {"accuracy": 0.9, "loss": 0.3},
        "test_dedup": {"accuracy": 0.85},
        "train_seconds": 600,
        "calibration": {"temperature": 0.51234, "test_ece_before": 0.07783, "test_ece_after": 0.005352},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text("epoch,train_loss,val_acc\n1,1.0,0.5\n2,0.5,0.8\n")


def test_experiment_table_is_read_from_the_folders(tmp_path: Path):
    _fake_checkpoint(tmp_path / "tf_efficientnet_lite0", "tf_efficientnet_lite0", 0.95)
    _fake_checkpoint(tmp_path / "simple_cnn_7", "simple_cnn_7", 0.8)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    rows = experiments.experiment_table(tmp_path)
    assert [r["model"] for r in rows] == ["simple_cnn_7", "tf_efficientnet_lite0"]  # registry order; the broken one skipped
    lite = rows[1]
    assert lite["val acc"] == 0.95 and lite["near-dedup test acc"] == 0.85 and lite["epochs (best)"] == "7 (5)"
    assert lite["train time (min)"] == 10.0 and lite["family"] == "efficientnet"
    assert (lite["temperature"], lite["test ECE raw"], lite["test ECE calibrated"]) == (0.512, 0.0778, 0.0054)
    assert set(experiments.COLUMNS) == set(lite)
    assert experiments.history(tmp_path / "simple_cnn_7")[1]["val_acc"] == "0.8"
    assert experiments.figure(tmp_path / "simple_cnn_7", "curves.png") is None
    assert experiments.results_table(tmp_path / "none.csv") is None


def test_heatmap_check_names_a_model_that_looks_outside_the_brain(tmp_path: Path):
    report = {
        "models": {
            "tf_efficientnet_lite0": {"n": 1311, "mean": 0.8604, "verdict": "attention mostly inside the brain"},
            "simple_cnn_7": {"n": 1311, "mean": 0.42, "verdict": "attention mostly outside the brain"},
        }
    }
    (tmp_path / "cam.json").write_text(json.dumps(report))
    shares = experiments.cam_in_brain(tmp_path / "cam.json")
    assert shares == {"tf_efficientnet_lite0": "0.86 (n=1311)", "simple_cnn_7": "0.42 (n=1311): attention mostly OUTSIDE the brain"}
    assert experiments.cam_in_brain(tmp_path / "missing.json") == {}
    _fake_checkpoint(tmp_path / "simple_cnn_7", "simple_cnn_7", 0.8)
    assert "OUTSIDE" in experiments.experiment_row(tmp_path / "simple_cnn_7", shares)["heatmap in brain"]


def test_shipped_heatmap_report_covers_the_full_testing_split():
    """results/cam_sanity.json, as committed, was measured on all of Testing for every shipped model."""
    report = json.loads(experiments.CAM_SANITY_JSON.read_text())
    assert report["subset"] == "all" and report["images"] == 1311
    assert {"tf_efficientnet_lite0", "simple_cnn_7"} <= set(report["models"])
    assert all(r["n"] == 1311 for r in report["models"].values())


def test_class_counts_match_the_folder(data_dir: Path):
    rows = {r["class"]: r for r in dataview.class_counts(data_dir)}
    n_glioma_test = len(list((data_dir / "Testing" / "glioma").glob("*.jpg")))
    assert rows["glioma"]["Testing"] == n_glioma_test
    assert rows["all"]["total"] == sum(r["total"] for name, r in rows.items() if name != "all")


def test_preprocessing_steps_end_in_what_the_model_gets(data_dir: Path):
    cfg = {
        "input_size": (3, 96, 96),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    path = dataview.widest_example(data_dir)
    image = Image.open(path).convert("RGB")
    steps = dataview.preprocessing_steps(image, cfg)
    names = [caption.split(":")[0] for _, caption in steps]
    assert names == ["0. decoded", "1. Resize", "2. CenterCrop", "3. MaybeToTensor", "4. Normalize"]
    assert steps[2][0].size == (96, 96)
    x = eval_transform(cfg)(image)
    shown = np.asarray(steps[-1][0], dtype=np.float32)
    c0 = x[0]
    expected = ((c0 - c0.min()) / (c0.max() - c0.min()) * 255).to(torch.uint8).numpy()
    assert np.abs(shown - expected).max() <= 1


def test_example_files_one_per_class_copied_to_a_servable_folder(data_dir: Path, tmp_path: Path):
    examples = dataview.copy_examples(dataview.example_files(data_dir, per_class=1), tmp_path / "ex")
    assert [c for _, c in examples] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert all(p.is_file() and p.parent == tmp_path / "ex" for p, _ in examples)
