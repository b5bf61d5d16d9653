"""The Compare tab's logic: every model's answer on one image as table rows, the ensemble row, and a verdict."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainmri.eval.ensemble import mean_probs
from brainmri.models.checkpoint import ENSEMBLE_METRICS, results_dir
from brainmri.serving import Prediction
from brainmri.vocabulary import NOT_MRI, any_tumour_probability

ENSEMBLE = "ensemble (mean of calibrated)"
ENSEMBLE_METRICS_JSON = results_dir() / ENSEMBLE_METRICS


def verdict(result: Prediction) -> str:
    """The class a model gives, or its OOD verdict (not a brain MRI, or unlike the training slices)."""
    return result.prediction or result.ood_verdict_short


def model_row(result: Prediction) -> dict:
    row = {"model": result.model, "prediction": verdict(result), "tumour prob": result.tumour_probability}
    row.update({f"P({k})": v for k, v in result.probabilities.items()})
    row.update({"latency ms": round(result.latency_ms, 1), "looks like MRI": result.in_distribution})
    return row


def ensemble_row(results: Sequence[Prediction], class_names: list[str]) -> dict:
    """The ensemble choice: mean of the in-distribution models' calibrated probabilities (scored in
    results/ensemble_metrics.json); no class when every model found the image not to be a brain MRI."""
    members = [r for r in results if r.in_distribution]
    if not members:
        return {"model": ENSEMBLE, "prediction": NOT_MRI}
    probs = mean_probs([np.array([r.probabilities[c] for c in class_names]) for r in members])
    row = {"model": ENSEMBLE, "prediction": class_names[int(probs.argmax())]}
    row["tumour prob"] = any_tumour_probability({c: float(p) for c, p in zip(class_names, probs)})
    row.update({f"P({c})": float(p) for c, p in zip(class_names, probs)})
    return row


def comparison_rows(results: Sequence[Prediction]) -> list[dict]:
    """One row per model, and the ensemble's when there are several."""
    rows = [model_row(r) for r in results]
    if len(results) > 1:
        rows.append(ensemble_row(results, list(results[0].probabilities)))
    return rows


def agreement(results: Sequence[Prediction]) -> str:
    """A Markdown line: whether the models agree, and on what."""
    if not results:
        return "No model is available."
    if len(results) == 1:
        return "Only one model is available: nothing to compare."
    verdicts = {verdict(r) for r in results}
    if len(verdicts) == 1:
        return f"**All {len(results)} models agree: {verdicts.pop()}.**"
    return "**The models disagree**: " + "; ".join(f"{r.model} says {verdict(r)}" for r in results) + "."


def scored_ensemble_note(path: str | Path = ENSEMBLE_METRICS_JSON) -> str:
    """What the ensemble row is, and the one ensemble measured on Testing (train.evaluate --ensemble), in a line."""
    line = "The ensemble row averages the ticked models' calibrated probabilities."
    try:
        scored = json.loads(Path(path).read_text())
        members = ", ".join(m["name"] for m in scored["members"])
        test, unseen = scored["test"], scored["test_unseen"]
    except (OSError, ValueError, KeyError, TypeError):
        return line + " No ensemble has been scored on Testing yet."
    return (
        f"{line} Measured on Testing, the ensemble of {members} scores {test['accuracy']:.2%} (n={test['n']}) on official Testing"
        f" and {unseen['accuracy']:.2%} on its unseen images (n={unseen['n']}; `results/ensemble_metrics.json`)."
    )
