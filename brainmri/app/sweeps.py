"""The Experiments tab's sweep tables: the runs of ``results/experiments.csv`` that are not shipped checkpoints (those
have the tab's main table), the finished ones apart from those cut short by their time budget."""

from __future__ import annotations

import csv
from pathlib import Path

from brainmri.eval.tables import FINISHED_EPOCHS, is_sweep_row, row_cut_short
from brainmri.models.checkpoint import EXPERIMENTS_CSV, results_dir
from brainmri.vocabulary import initialisation_words, minutes, percent

RESULTS_CSV = results_dir() / EXPERIMENTS_CSV
ABOUT = (
    "*init*: ImageNet weights or random; *stopped by*: its epochs, early stopping or its time budget; *train time*: "
    "the run's wall time; *img/s*: training images a second; *% of bound*: that rate as a share of the most the GPU's "
    "memory bandwidth allows for the model, counted by `python -m reports.roofline`; *run*: the sweep that trained it. "
    "A blank cell was not measured by that run: unseen Testing by the first GPU sweep, the bound on the CPU and in some "
    "GPU runs."
)
# What a reader compares across runs and devices (results/experiments.csv has every column): its key -> the heading.
COLUMNS = {
    "model": "model", "device": "device", "run": "run", "initialization": "init", "epochs_run": "epochs",
    "stopped": "stopped by", "val_accuracy": "val acc", "test_unseen_accuracy": "unseen test acc", "test_accuracy": "test acc",
    "train_seconds": "train time", "img_per_s": "img/s", "pct_of_bound": "% of bound",
}  # fmt: skip
CAPTION = "Sweep runs, by device (results/experiments.csv)"
CUT_CAPTION = f"Cut short by their time budget, or stopped under {FINISHED_EPOCHS} epochs: how far each model got, not what it can do"


def results_tables(path: str | Path = RESULTS_CSV) -> tuple[list[dict] | None, list[dict] | None]:
    """The sweep runs of results/experiments.csv (not the shipped checkpoints, already in the table above), labelled
    by device: the finished ones, and apart those cut short by their time budget (brainmri.eval.tables.cut_short);
    None for either when there are none."""
    path = Path(path)
    if not path.is_file():
        return None, None
    with path.open(newline="") as f:
        runs = [r for r in csv.DictReader(f) if is_sweep_row(r)]
    short = [row_cut_short(r) for r in runs]
    columns = dict(COLUMNS)
    if any(r.get("status", "ok") != "ok" for r in runs):  # a failed run's blanks are not "not measured": say why
        columns["status"] = "status"
    rows = [{label: cell(key, r.get(key)) for key, label in columns.items()} for r in runs]
    finished, cut = [r for r, s in zip(rows, short) if not s], [r for r, s in zip(rows, short) if s]
    return finished or None, cut or None


def cell(key: str, value: str | None) -> str:
    """One CSV value as the table says it: accuracies in percent, time as every table gives it, counts rounded."""
    if value in (None, ""):
        return ""
    if key in ("test_accuracy", "test_unseen_accuracy", "val_accuracy"):
        return percent(float(value))
    if key == "initialization":
        return initialisation_words(value)
    if key == "train_seconds":
        return minutes(value)
    if key in ("img_per_s", "pct_of_bound"):
        return f"{float(value):,.0f}"
    return value
