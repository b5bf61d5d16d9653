"""The Compare tab's logic: every model's answer on one image as table rows, the ensemble row, and a verdict."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from brainmri.data.imageio import pixel_key
from brainmri.eval.ensemble import mean_probs
from brainmri.models.checkpoint import ENSEMBLE_METRICS, UNSEEN, results_dir
from brainmri.serving import Prediction
from brainmri.vocabulary import NOT_MRI, any_tumour_probability, class_words

_logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble (mean of calibrated)"
ENSEMBLE_METRICS_JSON = results_dir() / ENSEMBLE_METRICS


def verdict(result: Prediction) -> str:
    """The class a model gives, or its OOD verdict (not a brain MRI, or unlike the training slices)."""
    return result.prediction or result.ood_verdict_short


LEADING_COLUMNS = ("model", "prediction", "tumour prob")  # each row's first columns, the model's name first
NOTHING_TO_COMPARE = "**Nothing to compare yet.** Upload an image in the Classify tab first: Compare runs the ticked models on it."
STALE = "**These results were for an earlier image.** Press Compare to run the ticked models on the one in Classify now."


def stale_message(image: Image.Image | None, compared: str | None) -> str | None:
    """What Compare says when its results are not of ``image`` (Classify's now; None once the session expired), or
    None when they are, or when it has none to clear."""
    if compared is None or (image is not None and pixel_key(image) == compared):
        return None
    return NOTHING_TO_COMPARE if image is None else STALE


def model_row(result: Prediction) -> dict:
    """One model's row; over an image it finds not to be a brain MRI, no probabilities (blank cells), as Classify
    shows no bars: a tumour probability of a photograph means nothing."""
    row = dict(zip(LEADING_COLUMNS, (result.model, class_words(verdict(result)), None)))
    if result.in_distribution:
        row["tumour prob"] = result.tumour_probability
        row.update({f"P({class_words(k)})": v for k, v in result.probabilities.items()})  # "P(no tumour)", as Classify says it
    row.update({"latency ms": round(result.latency_ms, 1), "looks like MRI": result.in_distribution})
    return row


def ensemble_row(results: Sequence[Prediction], class_names: list[str]) -> dict:
    """The ensemble choice: mean of the in-distribution models' calibrated probabilities (this mix of models is not
    scored on Testing: :func:`scored_ensemble_note`); no class when every model found the image not to be a brain MRI."""
    members = [r for r in results if r.in_distribution]
    if not members:
        return {"model": ENSEMBLE, "prediction": NOT_MRI}
    probs = mean_probs([np.array([r.probabilities[c] for c in class_names]) for r in members])
    row = {"model": ENSEMBLE, "prediction": class_words(class_names[int(probs.argmax())])}
    row["tumour prob"] = any_tumour_probability({c: float(p) for c, p in zip(class_names, probs)})
    row.update({f"P({class_words(c)})": float(p) for c, p in zip(class_names, probs)})
    return row


def comparison_rows(results: Sequence[Prediction]) -> list[dict]:
    """The ensemble's row first when there are several models (the row the tab's note speaks of, in sight above a long
    table), then one row per model."""
    rows = [model_row(r) for r in results]
    if len(results) > 1:
        rows.insert(0, ensemble_row(results, list(results[0].probabilities)))
    return rows


def agreement(results: Sequence[Prediction]) -> str:
    """A Markdown line: whether the models agree, and on what."""
    if not results:
        return "No model is available."
    if len(results) == 1:
        return "Only one model is available: nothing to compare."
    verdicts = {verdict(r) for r in results}
    if len(verdicts) == 1:
        return f"**All {len(results)} models agree: {class_words(verdicts.pop())}.**"
    # Grouped by answer, the most common first: one clause a class, not one a model (14 models read as a run-on).
    by_answer: dict[str, list[str]] = {}
    for r in results:
        by_answer.setdefault(verdict(r), []).append(r.model)
    groups = sorted(by_answer.items(), key=lambda kv: -len(kv[1]))
    (first, most), rest = groups[0], groups[1:]
    if 2 * len(most) > len(results):  # a majority: named by its count, the few that differ by name
        others = "; ".join(f"{class_words(v)}: {', '.join(m)}" for v, m in rest)
        differ = "the other differs" if len(results) - len(most) == 1 else "the others differ"
        return f"**{len(most)} of {len(results)} models say {class_words(first)}**; {differ} ({others})."
    return "**The models disagree**: " + "; ".join(f"{class_words(v)} ({len(m)}): {', '.join(m)}" for v, m in groups) + "."


def scored_ensemble_note(path: str | Path = ENSEMBLE_METRICS_JSON) -> str:
    """What the ensemble row is, and the one ensemble measured on Testing (train.evaluate --ensemble), in a line."""
    line = "The ensemble row (first) averages the ticked models' calibrated probabilities, a mix not measured on Testing."
    try:
        scored = json.loads(Path(path).read_text())
        members = ", ".join(m["name"] for m in scored["members"])
        test, unseen = scored["test"], scored[UNSEEN]
    except FileNotFoundError:
        return line + " No ensemble has been scored on Testing yet."
    except (OSError, ValueError, KeyError, TypeError) as e:
        _logger.warning("%s unreadable, so no scored ensemble is named (%s: %s)", path, type(e).__name__, e)
        return line + " No ensemble has been scored on Testing yet."
    return (
        f"{line} Two fixed ensembles were scored: the app's default (its row is in the Experiments tab), and {members},"
        f" the {len(scored['members'])} best on validation, at {test['accuracy']:.2%} (n={test['n']}) on official Testing"
        f" and {unseen['accuracy']:.2%} on its unseen images (n={unseen['n']}), in `results/ensemble_metrics.json`."
    )
