"""The experiment table and figures, read from checkpoint folders and the results folder, never typed.

Each checkpoint folder holds ``metrics.json``, ``history.csv``, ``curves.png``,
``confusion.png`` and ``reliability.png`` (written by train/train.py, train/evaluate.py and
train/calibrate.py). The GPU sweep writes ``results/experiments.csv``, shown as it is when
present; train/cam_sanity.py writes ``results/cam_sanity.json``, the heatmaps' in-brain share.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from brainmri.checkpoint import HISTORY, has_metrics, read_metrics
from brainmri.registry import CHECKPOINT_DIR, REGISTRY

_logger = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"
RESULTS_CSV = RESULTS_DIR / "experiments.csv"
CAM_SANITY_JSON = RESULTS_DIR / "cam_sanity.json"
COLUMNS = [
    "model",
    "family",
    "parameters",
    "input px",
    "initialisation",
    "epochs (best)",
    "train acc",
    "val acc",
    "test acc",
    "near-dedup test acc",
    "test loss",
    "temperature",
    "test ECE raw",
    "test ECE calibrated",
    "heatmap in brain",
    "train time (min)",
    "device",
]
ABOUT = (
    "Read from each checkpoint folder's `metrics.json`, `history.csv` and figures, `results/experiments.csv` and "
    "`results/cam_sanity.json`. *ECE*: expected calibration error on Testing, raw and temperature-scaled. *Heatmap in "
    "brain*: mean share of Grad-CAM mass inside an intensity brain mask, over n Testing images (a uniform map scores about 0.50)."
)


def checkpoint_folders(root: str | Path = CHECKPOINT_DIR) -> list[Path]:
    """Folders under ``root`` with a metrics.json, registry models first in registry order."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if has_metrics(p)]
    order = {name: i for i, name in enumerate(REGISTRY)}
    return sorted(folders, key=lambda p: (order.get(p.name, len(order)), p.name))


def _rounded(value, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _acc(metrics: dict, key: str) -> float | None:
    return _rounded((metrics.get(key) or {}).get("accuracy"))


def cam_in_brain(path: str | Path = CAM_SANITY_JSON) -> dict[str, str]:
    """Per model, the mean share of Grad-CAM mass inside the brain mask over the Testing images it was measured on,
    named as such when the attention sits mostly outside; empty when the check has not been run."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for name, r in report.get("models", {}).items():
        if r.get("mean") is not None:
            outside = "outside" in r.get("verdict", "")
            out[name] = f"{r['mean']:.2f} (n={r['n']})" + (": attention mostly OUTSIDE the brain" if outside else "")
    return out


def experiment_row(folder: str | Path, cam_shares: dict[str, str] | None = None) -> dict:
    """One table row from a checkpoint folder's metrics.json (and the heatmap check, when given)."""
    m = read_metrics(folder)
    name = m.get("model", Path(folder).name)
    spec = REGISTRY.get(name)
    test = m.get("test") or {}
    cal = m.get("calibration") or {}
    seconds = m.get("train_seconds")
    return {
        "model": name,
        "family": spec.family if spec else "",
        "parameters": m.get("parameters"),
        "input px": m.get("input_size"),
        "initialisation": m.get("initialization", ""),
        "epochs (best)": f"{m.get('epochs_run', '?')} ({m.get('best_epoch', '?')})",
        "train acc": _acc(m, "train"),
        "val acc": _acc(m, "validation"),
        "test acc": _acc(m, "test"),
        "near-dedup test acc": _acc(m, "test_dedup"),
        "test loss": _rounded(test.get("loss")),
        "temperature": _rounded(cal.get("temperature"), 3),
        "test ECE raw": _rounded(cal.get("test_ece_before")),
        "test ECE calibrated": _rounded(cal.get("test_ece_after")),
        "heatmap in brain": (cam_shares or {}).get(name, ""),
        "train time (min)": None if seconds is None else round(float(seconds) / 60, 1),
        "device": m.get("device", ""),
    }


def experiment_table(root: str | Path = CHECKPOINT_DIR) -> list[dict]:
    """Rows for every checkpoint folder; a folder whose metrics cannot be read is logged and skipped."""
    rows, shares = [], cam_in_brain()
    for folder in checkpoint_folders(root):
        try:
            rows.append(experiment_row(folder, shares))
        except ValueError as e:
            _logger.warning("%s", e)
    return rows


def results_table(path: str | Path = RESULTS_CSV) -> list[dict] | None:
    """The sweep's results/experiments.csv as rows, or None when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def history(folder: str | Path) -> list[dict]:
    """Per-epoch rows of history.csv (empty when absent)."""
    path = Path(folder) / HISTORY
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def figure(folder: str | Path, name: str) -> str | None:
    """Path of ``curves.png``, ``confusion.png`` or ``reliability.png`` in a checkpoint folder, if it is there."""
    path = Path(folder) / name
    return str(path) if path.is_file() else None
