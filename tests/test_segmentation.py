"""The tumour segmenter: its registry entry, the outline geometry, its training run, and the shipped folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brainmri.models.registry import create_model
from brainmri.models.segmenters import SEGMENTERS, UNET, create_segmenter
from brainmri.segmentation import MIN_AREA, binary_mask, load_segmenter, outline, tumour_probability
from brainmri.settings import checkpoint_dir

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = checkpoint_dir() / UNET  # the U-Net and its train.segment run


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_segmenter_gives_one_probability_per_pixel_and_every_parameter_learns(name: str):
    spec = SEGMENTERS[name]
    model = create_segmenter(name)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    model.eval()
    p = tumour_probability(model, x)
    assert p.shape == (2, 64, 64) and torch.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    model.train()
    out = model(x.float())
    sum(o.mean() for o in (out if isinstance(out, tuple) else [out])).backward()  # a multi-task model: both heads
    assert all(q.grad is not None for q in model.parameters()), "a parameter gets no gradient"
    assert spec.input_size % 32 == 0


def test_the_encoder_starts_from_the_classifiers_offline_imagenet_weights():
    seg = create_segmenter(UNET, pretrained=True).encoder.model.state_dict()
    cls = create_model("tf_efficientnet_lite0", pretrained=True).state_dict()
    shared = [k for k in seg if k in cls and "num_batches" not in k]
    assert len(shared) > 200 and all(torch.equal(seg[k], cls[k]) for k in shared)


def test_outline_is_in_the_uploaded_images_frame():
    p = torch.zeros(224, 224)
    p[56:112, 112:168] = 0.9  # a square a quarter of the side wide, right of centre
    o = outline(p, (448, 224))  # an upload twice as wide as tall
    assert o.mask.shape == (224, 448) and o.box == pytest.approx((0.5, 0.25, 0.75, 0.5), abs=0.01)
    assert o.area == pytest.approx(0.25 * 0.25, rel=0.05) and not o.empty


def test_specks_below_the_minimum_area_are_no_outline():
    p = np.zeros((224, 224))
    p[:3, :3] = 0.99
    assert not binary_mask(p).any() and 9 / 224**2 < MIN_AREA
    empty = outline(torch.from_numpy(p), (224, 224))
    assert empty.empty and empty.area == 0 and empty.box is None


@pytest.mark.slow
def test_train_segment_writes_a_folder_that_smp_loads(data_dir: Path, tmp_path: Path):
    out = tmp_path / "seg"
    cmd = [sys.executable, "-m", "train.segment", "--data", str(data_dir), "--out", str(out), "--limit-per-class", "10"]
    cmd += ["--epochs", "1", "--max-train-batches", "2", "--batch-size", "4"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=600)
    for name in ("config.json", "model.safetensors", "manifest.json", "metrics.json", "history.csv", "curves.png", "README.md"):
        assert (out / name).is_file(), name
    assert not (out / "resume").exists()
    import segmentation_models_pytorch as smp

    model = smp.from_pretrained(str(out))  # the library alone
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["validation"]["per_class"]) == {"glioma", "meningioma", "pituitary"}
    assert 0 <= metrics["validation"]["tumour"]["dice"] <= 1 and model is not None
    listed = [line for line in (out / "val_split.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(listed) == metrics["validation"]["tumour"]["n"] + metrics["validation"]["no_tumour"]["n"]


def test_a_folder_that_is_not_a_segmenter_is_refused_by_name(tmp_path: Path):
    with pytest.raises(ValueError, match="missing config.json|cannot load segmentation"):
        load_segmenter(tmp_path)


@pytest.mark.slow
def test_the_shipped_segmenter_reproduces_its_validation_figures(data_dir: Path):
    """Re-measured from the folder alone on the scans its val_split.txt lists: the Dice its metrics.json reports."""
    from train.segment import SegmentConfig, evaluate_only

    recorded = json.loads((SHIPPED / "metrics.json").read_text())["validation"]
    listed = [line for line in (SHIPPED / "val_split.txt").read_text().splitlines() if not line.startswith("#")]
    scores = evaluate_only(SegmentConfig(data=str(data_dir), out=str(SHIPPED)))
    assert scores["tumour"]["n"] + scores["no_tumour"]["n"] == len(listed)
    assert scores["tumour"]["dice"] == pytest.approx(recorded["tumour"]["dice"], abs=2e-3)
    for name, r in recorded["per_class"].items():
        assert scores["per_class"][name]["dice"] == pytest.approx(r["dice"], abs=5e-3), name
    assert scores["no_tumour"]["empty_share"] == pytest.approx(recorded["no_tumour"]["empty_share"], abs=0.01)


def test_the_shipped_card_carries_dice_against_the_expert_masks(tmp_path: Path):
    """Loaded back with huggingface_hub's ModelCard: Dice against Cheng et al.'s masks, all tumours and per class, with
    n and the 95% CI, as metrics.json has them; and the card is what write_segmentation_card makes of it today."""
    import shutil

    from huggingface_hub import ModelCard

    from brainmri.eval.report import DATASET
    from train.segment import write_segmentation_card

    card, validation = ModelCard.load(SHIPPED / "README.md"), json.loads((SHIPPED / "metrics.json").read_text())["validation"]
    assert card.data.library_name == "segmentation-models-pytorch" and card.data.datasets == [DATASET]
    results = {r.metric_name.split(" (")[0]: r for r in card.data.eval_results}
    expected = {"Dice, all tumours": validation["tumour"], **{f"Dice, {c}": r for c, r in validation["per_class"].items()}}
    assert set(results) == set(expected)
    for name, recorded in expected.items():
        result = results[name]
        assert result.metric_type == "dice" and result.metric_value == round(recorded["dice"], 4)
        assert result.dataset_config == "cheng-figshare-masks" and result.dataset_split == "validation"
        assert f"n={recorded['n']}, 95% CI {recorded['dice_ci95'][0]:.3f}-{recorded['dice_ci95'][1]:.3f}" in result.metric_name
    for name in ("metrics.json", "train_config.json"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    assert write_segmentation_card(tmp_path).read_text() == (SHIPPED / "README.md").read_text()


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_a_segmenter_trainer_reads_its_input_size_from_the_registry_unless_told(name: str, monkeypatch):
    import dataclasses

    from train.multitask import MultiTaskConfig
    from train.segment import SegmentConfig

    # Another size than the data's 224, which the trainers used to restate: the registry's must be the one read.
    monkeypatch.setitem(SEGMENTERS, name, dataclasses.replace(SEGMENTERS[name], input_size=288))
    config = MultiTaskConfig if SEGMENTERS[name].num_classes else SegmentConfig
    assert config(model=name).input_size == 288 and json.loads(config(model=name).to_json())["input_size"] == 288
    assert config(model=name, input_size=256).input_size == 256
