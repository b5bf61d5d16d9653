"""Temperature scaling, its calibration.json in the checkpoint manifest, and the ensemble of calibrated models."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax

from brainmri.calibration import calibrated_probs, fit_temperature, load_temperature, negative_log_likelihood, save_temperature
from brainmri.eval.ensemble import ensemble_probs
from brainmri.eval.metrics import expected_calibration_error
from brainmri.eval.report import reliability_diagram
from brainmri.models.checkpoint import (
    CALIBRATION,
    MANIFEST,
    OOD_CONFIG,
    OOD_TENSORS,
    OUTLINE_RULE,
    add_to_manifest,
    load_checkpoint,
    verify_checkpoint,
)


def sampled(n: int = 4000, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated by construction (T = 1)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, classes))
    u = rng.random((n, 1))
    labels = (softmax(logits, axis=1).cumsum(axis=1) < u).sum(axis=1)
    return logits, labels


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_scale(scale):
    logits, labels = sampled()
    assert fit_temperature(logits * scale, labels) == pytest.approx(scale, rel=0.08)


def test_temperature_lowers_nll_and_ece_of_an_overconfident_model():
    logits, labels = sampled()
    overconfident = logits * 3
    t = fit_temperature(overconfident, labels)
    assert negative_log_likelihood(overconfident, labels, t) < negative_log_likelihood(overconfident, labels) - 0.1
    before = expected_calibration_error(calibrated_probs(overconfident, 1.0), labels)
    after = expected_calibration_error(calibrated_probs(overconfident, t), labels)
    assert after < before / 3


def test_calibrated_probs_keep_the_prediction_and_the_type():
    logits, _ = sampled(50)
    probs = calibrated_probs(logits, 2.0)
    assert np.allclose(probs.sum(axis=1), 1) and (probs.argmax(1) == logits.argmax(1)).all()
    assert probs.max(axis=1).mean() < calibrated_probs(logits, 1.0).max(axis=1).mean()  # T > 1 softens
    tensor = calibrated_probs(torch.from_numpy(logits), 2.0)
    assert isinstance(tensor, torch.Tensor) and np.allclose(tensor.numpy(), probs, atol=1e-6)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            calibrated_probs(logits, bad)


def test_fit_temperature_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros((3, 4)), np.zeros(2, dtype=int))


def test_ensemble_is_the_mean_of_calibrated_probs():
    a, _ = sampled(20, seed=1)
    b, _ = sampled(20, seed=2)
    expected = (calibrated_probs(a, 2.0) + calibrated_probs(b, 0.5)) / 2
    assert np.allclose(ensemble_probs([(a, 2.0), (b, 0.5)]), expected)
    assert np.allclose(ensemble_probs([(a, 1.5)]), calibrated_probs(a, 1.5))
    tensor = ensemble_probs([(torch.from_numpy(a), 2.0), (torch.from_numpy(b), 0.5)])
    assert isinstance(tensor, torch.Tensor) and np.allclose(tensor.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        ensemble_probs([])
    with pytest.raises(ValueError, match="shape"):
        ensemble_probs([(a, 1.0), (b[:, :3], 1.0)])


def test_temperature_round_trip_through_the_manifest(tiny_checkpoint):
    assert load_temperature(tiny_checkpoint) == 1.0  # absent: uncalibrated
    save_temperature(tiny_checkpoint, 2.5, fitted_on="test")
    assert load_temperature(tiny_checkpoint) == 2.5
    assert CALIBRATION in json.loads((tiny_checkpoint / MANIFEST).read_text())
    verify_checkpoint(tiny_checkpoint)
    load_checkpoint(tiny_checkpoint)


def test_tampered_calibration_is_caught(tiny_checkpoint):
    save_temperature(tiny_checkpoint, 2.5)
    path = tiny_checkpoint / CALIBRATION
    path.write_text(path.read_text().replace("2.5", "0.1"))
    assert load_temperature(tiny_checkpoint) == 0.1  # readable, but no longer the one the manifest vouches for
    with pytest.raises(ValueError, match=re.escape(f"{CALIBRATION} does not match its sha256")):
        verify_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match=re.escape(str(tiny_checkpoint))):
        load_checkpoint(tiny_checkpoint)


def test_calibration_outside_the_manifest_or_missing_is_caught(tiny_checkpoint):
    save_temperature(tiny_checkpoint, 2.5)
    manifest = json.loads((tiny_checkpoint / MANIFEST).read_text())
    (tiny_checkpoint / MANIFEST).write_text(json.dumps({k: v for k, v in manifest.items() if k != CALIBRATION}))
    with pytest.raises(ValueError, match="not listed"):
        verify_checkpoint(tiny_checkpoint)
    (tiny_checkpoint / MANIFEST).write_text(json.dumps(manifest))
    (tiny_checkpoint / CALIBRATION).unlink()
    with pytest.raises(ValueError, match=re.escape(f"missing {CALIBRATION}")):
        verify_checkpoint(tiny_checkpoint)


@pytest.mark.parametrize("name", [OOD_CONFIG, OOD_TENSORS, OUTLINE_RULE])
def test_a_served_rule_beside_the_weights_but_outside_the_manifest_is_caught(tiny_checkpoint, name: str):
    (tiny_checkpoint / name).write_text("{}")  # an OOD threshold or outline rule nobody vouched for
    with pytest.raises(ValueError, match=re.escape(f"{name} is not listed in {MANIFEST}")):
        verify_checkpoint(tiny_checkpoint)
    add_to_manifest(tiny_checkpoint, [name])
    verify_checkpoint(tiny_checkpoint)


def test_save_temperature_does_not_bless_altered_weights(tiny_checkpoint):
    weights = tiny_checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors does not match"):
        save_temperature(tiny_checkpoint, 2.0)
    assert not (tiny_checkpoint / CALIBRATION).exists()


@pytest.mark.parametrize("body", ['{"temperature": -1}', '{"temperature": "hot"}', "{}", "not json"])
def test_invalid_calibration_file_is_a_clear_error(tiny_checkpoint, body):
    (tiny_checkpoint / CALIBRATION).write_text(body)
    with pytest.raises(ValueError, match=re.escape(str(tiny_checkpoint)) + ".*" + re.escape(CALIBRATION)):
        load_temperature(tiny_checkpoint)


def test_reliability_diagram_writes_a_png(tmp_path):
    logits, labels = sampled(300)
    path = tmp_path / "reliability.png"
    reliability_diagram({"before": calibrated_probs(logits * 3, 1.0), "after": calibrated_probs(logits * 3, 3.0)}, labels, path)
    with Image.open(path) as im:
        assert im.width > im.height > 100  # two panels side by side
