"""Evaluation metrics against values worked out by hand on six predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainmri.eval.metrics import bootstrap_accuracy_ci, classification_report, expected_calibration_error

CLASSES = ["a", "b", "c"]
# Rows: predicted probabilities; comments: true label, prediction, confidence, bin of 15.
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],  # a, a, 0.70 (bin 10), right
        [0.62, 0.28, 0.10],  # b, a, 0.62 (bin 9), wrong
        [0.08, 0.82, 0.10],  # b, b, 0.82 (bin 12), right
        [0.17, 0.20, 0.63],  # c, c, 0.63 (bin 9), right
        [0.28, 0.42, 0.30],  # c, b, 0.42 (bin 6), wrong
        [0.05, 0.05, 0.90],  # c, c, 0.90 (bin 13), right
    ]
)
LABELS = np.array([0, 1, 1, 2, 2, 2])


def test_report_matches_hand_computed_values():
    r = classification_report(PROBS, LABELS, CLASSES)
    assert r["n"] == 6
    assert r["accuracy"] == pytest.approx(4 / 6)
    # Rows are the true class, columns the prediction.
    assert r["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]
    expected = {
        "a": (1 / 2, 1 / 1, 2 / 3, 1),  # precision, recall, F1 = 2PR/(P+R), support
        "b": (1 / 2, 1 / 2, 1 / 2, 2),
        "c": (2 / 2, 2 / 3, 0.8, 3),
    }
    for name, (p, rec, f1, support) in expected.items():
        got = r["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, rec, f1))
        assert got["support"] == support
    # Log loss: mean of -ln p(true class).
    assert r["loss"] == pytest.approx(-sum(map(math.log, [0.70, 0.28, 0.82, 0.63, 0.30, 0.90])) / 6)
    lo, hi = r["accuracy_ci95"]
    assert 0 <= lo < 4 / 6 < hi <= 1


def test_ece_matches_hand_computed_value():
    # Bins: 10 {0.70 right}, 9 {0.62 wrong, 0.63 right}, 12 {0.82 right}, 6 {0.42 wrong}, 13 {0.90 right};
    # ECE = sum of share x |accuracy - mean confidence|.
    gaps = [1 / 6 * 0.30, 2 / 6 * abs(0.5 - 0.625), 1 / 6 * 0.18, 1 / 6 * 0.42, 1 / 6 * 0.10]
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(sum(gaps))  # 1.25 / 6
    assert classification_report(PROBS, LABELS, CLASSES)["ece"] == pytest.approx(1.25 / 6)


def test_ece_is_zero_when_confidence_equals_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 0])) == pytest.approx(0.25)


def test_bootstrap_interval():
    assert bootstrap_accuracy_ci(np.ones(20)) == (1.0, 1.0)
    lo, hi = bootstrap_accuracy_ci(np.array([1.0, 0.0] * 50))
    # Binomial, n=100, p=0.5: the 95% interval is about 0.5 +- 0.1.
    assert 0.38 < lo < 0.45 and 0.55 < hi < 0.62


def test_empty_set_is_refused():
    with pytest.raises(ValueError, match="empty"):
        classification_report(np.zeros((0, 3)), np.zeros(0, dtype=int), CLASSES)


def test_ece_interval_brackets_the_estimate_and_narrows_with_more_images():
    """The bootstrap interval of ECE is an interval of ECEs, and a set repeated 20 times (the same ECE) gives a narrower
    one. (It need not hold the estimate: binned ECE is biased upward on resamples, so it may sit above it.)"""
    from brainmri.eval.metrics import bootstrap_ece_ci

    r = classification_report(PROBS, LABELS, CLASSES)
    lo, hi = r["ece_ci95"]
    assert 0 <= lo < hi <= 1
    lo20, hi20 = bootstrap_ece_ci(np.tile(PROBS, (20, 1)), np.tile(LABELS, 20))
    assert expected_calibration_error(np.tile(PROBS, (20, 1)), np.tile(LABELS, 20)) == pytest.approx(r["ece"])
    assert hi20 - lo20 < hi - lo


def test_paired_comparison_counts_the_discordant_images_and_tests_them_exactly():
    from brainmri.eval.metrics import paired_comparison

    a = np.array([True] * 10 + [False] * 2 + [True] * 5)
    b = np.array([False] * 10 + [False] * 2 + [True] * 5)
    out = paired_comparison(a, b)
    assert (out["only_a"], out["only_b"], out["n"]) == (10, 0, 17)
    assert out["p_value"] == pytest.approx(2 * 0.5**10)  # ten of ten discordant one way: unlikely by chance
    close = paired_comparison(np.array([True, False, False, False, True]), np.array([False, True, True, True, True]))
    assert (close["only_a"], close["only_b"]) == (1, 3) and close["p_value"] == pytest.approx(0.625)
    assert paired_comparison(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="different sets"):
        paired_comparison(a, a[:3])


def test_ece_if_calibrated_matches_the_binomial_in_one_bin():
    """Twenty answers all at confidence 0.9 share one bin, so a calibrated model's ECE there is |X/20 - 0.9| with
    X ~ Binomial(20, 0.9): its mean is worked out exactly and the draws must land on it."""
    from scipy.stats import binom

    from brainmri.eval.metrics import ece_if_calibrated

    probs = np.tile([0.9, 0.05, 0.05], (20, 1))
    exact = sum(binom.pmf(k, 20, 0.9) * abs(k / 20 - 0.9) for k in range(21))
    out = ece_if_calibrated(probs, np.zeros(20, dtype=int))
    assert out["mean"] == pytest.approx(exact, abs=0.002)  # 10,000 draws: the standard error is ~0.0005
    assert out["mean"] <= out["p95"]
    # all twenty right: ECE 0.1, which a calibrated model reaches with 20 of 20 right or with 16 or fewer
    assert out["p_value"] == pytest.approx(binom.pmf(20, 20, 0.9) + binom.cdf(16, 20, 0.9), abs=0.01)


def test_ece_if_calibrated_tells_calibrated_labels_from_overconfident_ones():
    from brainmri.eval.metrics import ece_if_calibrated

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(600, 4)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    calibrated = np.array([rng.choice(4, p=p) for p in probs])  # labels drawn from the model's own probabilities
    assert ece_if_calibrated(probs, calibrated)["p_value"] > 0.01
    # the same confidences, but only 60% of answers right: overconfident, far beyond chance
    wrong = np.where(rng.random(600) < 0.6, probs.argmax(axis=1), (probs.argmax(axis=1) + 1) % 4)
    assert ece_if_calibrated(probs, wrong)["p_value"] < 0.001
    # the floor falls with the set's size: the same confidences on 4x the images
    small = ece_if_calibrated(probs, calibrated)["mean"]
    assert ece_if_calibrated(np.tile(probs, (4, 1)), np.tile(calibrated, 4))["mean"] < 0.75 * small
