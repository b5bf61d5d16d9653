"""The experiment table and figures, read from checkpoint folders and the results folder, never typed.

Each checkpoint folder holds ``metrics.json``, ``history.csv``, ``curves.png`` and
``confusion.png`` (written by train/train.py and train/evaluate.py). The GPU sweep writes
``results/experiments.csv``; it is shown as it is when present.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from brainmri.registry import CHECKPOINT_DIR, REGISTRY

_logger = logging.getLogger(__name__)

RESULTS_CSV = Path(__file__).resolve().parent.parent / "results" / "experiments.csv"
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
    "train time (min)",
    "device",
]


def checkpoint_folders(root: str | Path = CHECKPOINT_DIR) -> list[Path]:
    """Folders under ``root`` with a metrics.json, registry models first in registry order."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if (p / "metrics.json").is_file()]
    order = {name: i for i, name in enumerate(REGISTRY)}
    return sorted(folders, key=lambda p: (order.get(p.name, len(order)), p.name))


def read_metrics(folder: str | Path) -> dict:
    path = Path(folder) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _acc(metrics: dict, key: str) -> float | None:
    value = (metrics.get(key) or {}).get("accuracy")
    return None if value is None else round(float(value), 4)


def experiment_row(folder: str | Path) -> dict:
    """One table row from a checkpoint folder's metrics.json."""
    m = read_metrics(folder)
    name = m.get("model", Path(folder).name)
    spec = REGISTRY.get(name)
    test = m.get("test") or {}
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
        "test loss": None if test.get("loss") is None else round(float(test["loss"]), 4),
        "train time (min)": None if seconds is None else round(float(seconds) / 60, 1),
        "device": m.get("device", ""),
    }


def experiment_table(root: str | Path = CHECKPOINT_DIR) -> list[dict]:
    """Rows for every checkpoint folder; a folder whose metrics cannot be read is logged and skipped."""
    rows = []
    for folder in checkpoint_folders(root):
        try:
            rows.append(experiment_row(folder))
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
    path = Path(folder) / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def figure(folder: str | Path, name: str) -> str | None:
    """Path of ``curves.png`` or ``confusion.png`` in a checkpoint folder, if it is there."""
    path = Path(folder) / name
    return str(path) if path.is_file() else None
