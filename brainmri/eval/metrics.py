"""Classification metrics: accuracy with a bootstrap interval, per-class scores, calibration."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support


def bootstrap_accuracy_ci(correct: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of a 0/1 vector."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(n_boot, len(correct)))
    means = correct[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


ECE_BINS = 15  # equal-width confidence bins of every ECE this project reports


def confidence_bins(conf: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """(N,) the equal-width bin of each top-label confidence in [0, 1]; a confidence of 1 falls in the last."""
    return np.minimum((conf * n_bins).astype(int), n_bins - 1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of top-label confidence: (mean confidence, accuracy, count), each (n_bins,).

    Empty bins have count 0 and NaN confidence and accuracy.
    """
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = confidence_bins(conf, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return mean_conf, accuracy, count


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with equal-width confidence bins: sum over bins of share x |accuracy - confidence|.

    A few lines by hand: scikit-learn has no ECE, and torchmetrics would be a dependency
    for this alone.
    """
    mean_conf, accuracy, count = reliability_bins(probs, labels, n_bins)
    full = count > 0
    return float(np.sum(count[full] / count.sum() * np.abs(accuracy[full] - mean_conf[full])))


def bootstrap_ece_ci(probs: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of :func:`expected_calibration_error` over the images: how far a few
    hundred images let ECE move (with 4 errors in 335, one error more or less moves it by ~0.3 points). The
    binned estimate is biased upward on small sets, and so is its interval: read it as spread, not as a bound."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(labels), size=(n_boot, len(labels)))
    values = [expected_calibration_error(probs[i], labels[i]) for i in idx]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def ece_if_calibrated(probs: np.ndarray, labels: np.ndarray, n_draws: int = 10_000, seed: int = 0) -> dict:
    """Consistency resampling (Broecker and Smith, 2007): what :func:`expected_calibration_error` a perfectly
    calibrated model with these top-label confidences would show on a set this size. Each draw keeps the confidences
    and calls each answer right with probability equal to its confidence.

    Returns ``mean`` and ``p95`` of the drawn ECEs (the estimator's floor on this set: binned ECE is biased upward on
    small sets), and ``p_value``: the share of draws at least as high as the ECE measured with ``labels``. A small p
    says the miscalibration is more than a set this size shows by chance. A dozen lines by hand: the calibration
    libraries (netcal, torchmetrics) give the estimate, not this null distribution.
    """
    n_bins = ECE_BINS
    conf = probs.max(axis=1)
    bins = confidence_bins(conf, n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)  # (n_bins,) per bin, the same in every draw
    rng = np.random.default_rng(seed)
    drawn = np.empty(n_draws)
    for start in range(0, n_draws, 1000):  # (draws, N) at most 1000 rows at a time: bounded memory on Testing
        right = rng.random((min(1000, n_draws - start), len(conf))) < conf  # (draws, N)
        cell = bins + n_bins * np.arange(len(right))[:, None]  # each draw's bins in its own row of the table
        right_sum = np.bincount(cell.ravel(), weights=right.ravel(), minlength=n_bins * len(right)).reshape(-1, n_bins)
        drawn[start : start + len(right)] = np.abs(right_sum - conf_sum).sum(axis=1) / len(conf)
    measured = expected_calibration_error(probs, labels)
    return {
        "n_draws": n_draws,
        "mean": float(drawn.mean()),
        "p95": float(np.percentile(drawn, 95)),
        "p_value": float((drawn >= measured - 1e-12).mean()),
    }


def paired_comparison(right_a: np.ndarray, right_b: np.ndarray) -> dict:
    """Two models scored on the same images (bool (N,) each: right or not): the images only A got right, only B,
    and the exact McNemar p-value, the two-sided binomial test on those discordant images (scipy's ``binomtest``):
    the chance of a split at least this uneven if the two were equally good. A lead of one or two images is never
    under p = 0.5, and with a handful of discordant images the test has little power: not telling two models apart
    is not showing them equal."""
    right_a, right_b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    if right_a.shape != right_b.shape:
        raise ValueError(f"the two models were scored on different sets: {right_a.shape} and {right_b.shape}")
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n": int(right_a.size), "only_a": only_a, "only_b": only_b, "p_value": float(p)}


def classification_report(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Everything we report for one set: accuracy (+ 95% CI), loss, ECE, per-class P/R/F1, confusion matrix.

    Args:
        probs: (N, C) predicted probabilities.
        labels: (N,) true class indices.
    """
    if len(labels) == 0:
        raise ValueError("cannot score an empty set")
    preds = probs.argmax(axis=1)
    classes = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    lo, hi = bootstrap_accuracy_ci((preds == labels).astype(float))
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, preds)),
        "accuracy_ci95": [lo, hi],
        "loss": float(log_loss(labels, np.clip(probs, 1e-7, 1.0), labels=classes)),
        "ece": expected_calibration_error(probs, labels),
        "ece_ci95": list(bootstrap_ece_ci(probs, labels)),
        "ece_if_calibrated": ece_if_calibrated(probs, labels),
        # Per class, "accuracy" is the recall (the share of that class's images called right), with its interval:
        # wide where a class has few images.
        "per_class": {
            name: {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
                "n": int(s),
                "accuracy": float(r),
                "accuracy_ci95": list(bootstrap_accuracy_ci((preds == labels)[labels == c].astype(float))) if s else None,
            }
            for c, (name, p, r, f, s) in enumerate(zip(class_names, precision, recall, f1, support))
        },
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
    }
