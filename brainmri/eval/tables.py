"""A checkpoint's metrics.json, and the rules of the tables that read it.

``metrics.json`` (its name: ``brainmri.models.checkpoint.METRICS``) holds the training, test and calibration figures
that train.train, train.evaluate and train.calibrate write into a checkpoint folder. Here it is read and merged, and
here are the rules every results table follows: :data:`METRIC_COLUMNS`, the one map of a column to its path in
metrics.json (reports/results.py's CSV, the app's Experiments tab), and :func:`cut_short`, which runs sit apart.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from brainmri.models.checkpoint import METRICS, UNSEEN

_logger = logging.getLogger(__name__)


def read_metrics(folder: str | Path) -> dict:
    """The folder's metrics.json; ValueError naming the file when it is missing or not JSON."""
    path = Path(folder) / METRICS
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def has_metrics(folder: str | Path) -> bool:
    return (Path(folder) / METRICS).is_file()


def metrics_if_any(folder: str | Path) -> dict | None:
    """The folder's metrics.json for a page that shows figures where they exist: None when there is none, and None
    with a warning naming the file when it cannot be read, so that a damaged file is not taken for a missing one."""
    if not has_metrics(folder):
        return None
    try:
        return read_metrics(folder)
    except ValueError as e:
        _logger.warning("%s: its figures are shown as not measured", e)
        return None


def update_metrics(folder: str | Path, sections: dict, drop: list[str] | None = None) -> dict:
    """Merge ``sections`` into the folder's metrics.json (made if absent), less the ``drop`` keys; returns the whole of it."""
    metrics = read_metrics(folder) if has_metrics(folder) else {}
    metrics.update(sections)
    for key in drop or []:
        metrics.pop(key, None)
    (Path(folder) / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# The one column map of results tables (reports/results.py's CSV, the app's Experiments tab): column -> its path in
# metrics.json. A table picks and formats columns; it never spells a path into metrics.json itself.
METRIC_COLUMNS = {
    "model": ("model",),
    "parameters": ("parameters",),
    "input_size": ("input_size",),
    "initialization": ("initialization",),
    "epochs_run": ("epochs_run",),
    "best_epoch": ("best_epoch",),
    "train_accuracy": ("train", "accuracy"),
    "val_accuracy": ("validation", "accuracy"),
    "test_accuracy": ("test", "accuracy"),
    "test_accuracy_ci95": ("test", "accuracy_ci95"),
    "test_unseen_accuracy": (UNSEEN, "accuracy"),
    "test_unseen_accuracy_ci95": (UNSEEN, "accuracy_ci95"),
    "test_unseen_n": (UNSEEN, "n"),
    "val_n": ("validation", "n"),
    "test_loss": ("test", "loss"),
    "temperature": ("calibration", "temperature"),
    "val_ece_raw": ("calibration", "val_ece_before"),
    "val_ece_calibrated": ("calibration", "val_ece_after"),
    "test_ece_raw": ("calibration", "test_ece_before"),
    "test_ece_calibrated": ("calibration", "test_ece_after"),
    "test_unseen_ece_raw": ("calibration", f"{UNSEEN}_ece_before"),
    "test_unseen_ece_calibrated": ("calibration", f"{UNSEEN}_ece_after"),
    "train_seconds": ("train_seconds",),
    "img_per_s": ("train_img_per_s",),
    "peak_memory_gib": ("peak_gpu_memory_gib",),
    "device": ("device",),
    "batch_size": ("batch_size",),
    "grad_checkpointing": ("grad_checkpointing",),
    "stopped": ("stopped",),
}


# A run with fewer epochs than this, or ended by its time budget, says how far the model got, not what it can do.
FINISHED_EPOCHS = 5


def is_sweep_row(row: dict) -> bool:
    """An experiments.csv row of a sweep run (its ``run`` names it), not one of the shipped checkpoints."""
    return row.get("run") not in (None, "", "shipped")


def row_cut_short(row: dict) -> bool:
    """A run that finished without error (``status`` ok) but was cut short (:func:`cut_short`): tables show it apart."""
    return row.get("status", "ok") == "ok" and cut_short(row.get("epochs_run"), row.get("stopped"))


def cut_short(epochs_run: int | str | None, stopped: str | None) -> bool:
    """Whether a run was cut short: ended by its time budget (``stopped``), or after fewer than FINISHED_EPOCHS
    epochs. Results tables show such rows apart from finished ones."""
    if stopped == "time budget":
        return True
    try:
        return int(epochs_run) < FINISHED_EPOCHS
    except (TypeError, ValueError):  # not recorded: a failed or untested run, not a short one
        return False


def metric_columns(metrics: dict, columns: list[str] | None = None) -> dict:
    """``columns`` (default: all of :data:`METRIC_COLUMNS`) read from a metrics.json dict; None where absent."""
    out = {}
    for column in columns or METRIC_COLUMNS:
        value = metrics
        for key in METRIC_COLUMNS[column]:
            value = value.get(key) if isinstance(value, dict) else None
        out[column] = value
    return out
