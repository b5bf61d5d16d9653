"""OOD fitting (train.ood) writes statistics that the serving check (brainmri.ood) loads and verifies.

A random simple_cnn_7 checkpoint over a tiny synthetic data folder: seconds, no training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, write_checkpoint
from PIL import Image

from brainmri.data.preprocess import data_config, eval_transform
from brainmri.data.split import checkpoint_split
from brainmri.models.checkpoint import MANIFEST, OOD_CONFIG, OOD_TENSORS, TRAIN_CONFIG, load_checkpoint
from brainmri.ood import OODResult, colourfulness, grey_contrast, load_stats, pooled_features
from train import ood as train_ood
from train.config import TrainConfig


def checkpoint_on(data: Path, folder: Path) -> Path:
    """An untrained checkpoint with the train_config.json its split is rebuilt from."""
    write_checkpoint(folder)
    # 3 images per class: a 0.34 validation fraction (3 folds) is the most they allow.
    cfg = TrainConfig(model="simple_cnn_7", data=str(data), val_fraction=0.34, seed=0)
    (folder / TRAIN_CONFIG).write_text(cfg.to_json())
    return folder


def test_fitted_statistics_load_are_in_the_manifest_and_judge_images(tmp_path, synthetic_data):
    folder = checkpoint_on(synthetic_data, tmp_path / "ckpt")
    fitted = train_ood.fit(folder, str(synthetic_data), percentile=97.5)
    stats = load_stats(folder)
    assert stats is not None
    torch.testing.assert_close(stats.means, fitted.means)
    assert stats.means.shape == (len(CLASSES), stats.precision.shape[0]) and stats.threshold == pytest.approx(fitted.threshold)
    train, val = checkpoint_split(folder)
    assert (stats.meta["n_train"], stats.meta["n_val"]) == (len(train), len(val))
    assert {OOD_CONFIG, OOD_TENSORS} <= set(json.loads((folder / MANIFEST).read_text()))
    model = load_checkpoint(folder)  # verifies the manifest, the OOD files included

    image = val.open(0)
    x = torch.stack([eval_transform(data_config(model))(image)])
    with torch.no_grad():
        verdict = stats.check(image, pooled_features(model, x))
        blank = stats.check(Image.new("RGB", (64, 64)), pooled_features(model, torch.zeros_like(x)))
    assert verdict.distance is not None and verdict.colourfulness == 0.0  # a greyscale slice-like image
    assert verdict.percentile == 97.5  # as fitted: what the summary tells a visitor
    assert not blank.in_distribution and any("uniform" in r for r in blank.reasons)
    limit = f"where every training slice has more than {stats.contrast_threshold:.1f})"  # a figure says what it is against
    assert any(r.startswith("it is almost uniform (grey-level spread 0.0, ") and r.endswith(limit) for r in blank.reasons)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        colourful = stats.check(noise, pooled_features(model, torch.stack([eval_transform(data_config(model))(noise)])))
    under = f"where every training slice stays under {stats.colour_threshold:.1f}); MRI slices are greyscale"
    within = f"where 97.5% of validation slices are within {stats.threshold:.1f})"  # the fitted percentile, in words
    assert any(r.startswith("it is in colour (colour spread ") and r.endswith(under) for r in colourful.reasons)
    assert any(r.startswith("its features are far from every training class (distance ") and r.endswith(within) for r in colourful.reasons)

    (folder / OOD_TENSORS).write_bytes((folder / OOD_TENSORS).read_bytes()[:-8])
    with pytest.raises(ValueError, match=OOD_TENSORS):
        load_checkpoint(folder)


def test_the_judge_scores_the_features_it_was_fitted_on(tmp_path, synthetic_data, monkeypatch):
    """One definition of the OOD features: what serving hands the statistics (the classifier's heatmap pass, and the
    judge's own pass) equals what the fit measured, for the same images decoded the same way."""
    from brainmri.serving import load_model, ood_check_batch, run_model_batch

    folder = checkpoint_on(synthetic_data, tmp_path / "ckpt")
    train_ood.fit(folder, str(synthetic_data))
    _, val = checkpoint_split(folder)
    images = [val.open(i) for i in range(len(val))]
    fitted = train_ood.extract(load_checkpoint(folder), iter(images), len(images))["features"]

    loaded = load_model("simple_cnn_7", folder, device="cpu")  # batch norm folded, as served
    scored = []

    def check(_stats, _image, features: torch.Tensor) -> OODResult:
        scored.append(features)
        return OODResult(True, [], None, None, 0.0, 0.0)

    monkeypatch.setattr(type(loaded.ood), "check", check)
    ood_check_batch(loaded, images)
    by_judge, scored[:] = torch.cat(scored), []
    run_model_batch(loaded, images)
    by_classifier = torch.cat(scored)
    torch.testing.assert_close(by_judge, fitted, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(by_classifier, fitted, rtol=1e-4, atol=1e-4)


def test_statistics_of_other_weights_are_not_used(tmp_path, synthetic_data):
    folder = checkpoint_on(synthetic_data, tmp_path / "ckpt")
    train_ood.fit(folder, str(synthetic_data))
    write_checkpoint(folder, seed=1)  # new weights; the manifest still covers the OOD files
    assert load_stats(folder) is None  # a warning, and no verdicts from statistics of other weights


def test_a_split_that_cannot_support_a_fit_warns_instead_of_failing(tmp_path, synthetic_data, monkeypatch, caplog):
    folder = checkpoint_on(synthetic_data, tmp_path / "ckpt")
    train, _ = checkpoint_split(folder)
    monkeypatch.setattr(train_ood, "checkpoint_split", lambda *_: (train, train.subset(np.array([], dtype=int))))
    with pytest.raises(train_ood.CannotFit, match="no validation images"):
        train_ood.fit(folder, str(synthetic_data))  # the command line still fails, naming why
    with caplog.at_level(logging.WARNING, logger="train.ood"):
        assert train_ood.fit_or_warn(folder, str(synthetic_data)) is None  # what training calls
    assert "no OOD statistics written" in caplog.text and "no validation images" in caplog.text
    assert not (folder / OOD_CONFIG).exists() and load_stats(folder) is None


def test_whitened_distance_is_the_mahalanobis_definition():
    """distance() through the Cholesky factor of the precision equals (x - m)^T P (x - m) to the nearest mean."""
    from brainmri.ood import OODStats

    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=g)
    precision, means, x = a @ a.T + 0.1 * torch.eye(16), torch.randn(4, 16, generator=g), torch.randn(5, 16, generator=g)
    stats = OODStats(means, precision, 1.0, 1.0, 1.0, {})
    diff = x.double()[:, None] - means.double()[None]
    expected = torch.einsum("bcd,de,bce->bc", diff, precision.double(), diff).min(dim=1).values.sqrt()
    assert stats._whiten is not None and torch.allclose(stats.distance(x).double(), expected, rtol=1e-5)
    singular = OODStats(means, -precision, 1.0, 1.0, 1.0, {})  # not positive definite: the definition itself
    assert singular._whiten is None and torch.isfinite(singular.distance(x)).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_measures_are_the_reductions_over_the_channels(seed: int):
    """colourfulness and grey_contrast read the three planes apart (faster): the same figures as max - min and the
    mean over the channel axis."""
    a = np.random.default_rng(seed).integers(0, 256, (97, 131, 3)).astype(np.float32)
    assert colourfulness(a) == float((a.max(axis=2) - a.min(axis=2)).mean())
    assert grey_contrast(a) == pytest.approx(float(a.mean(axis=2).std()), rel=1e-6)
