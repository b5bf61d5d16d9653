"""The experiments table: one row per trained model, from checkpoint folders' metrics.json.

    python -m reports.results --docs        # checkpoints/ + results/experiments.csv's sweep rows -> results/, docs/, README
    python -m reports.results --from checkpoints runs/device_sweep --docs   # after a device sweep: its folders instead

Writes ``results/experiments.csv`` (full precision) and ``results/experiments.md`` (rounded): finished runs
first, then, apart, the runs cut short by their time budget (brainmri.eval.tables.cut_short), whose accuracy
says how far a model got, not what it can do. ``--docs`` rewrites the generated sections of README.md and docs/
(reports.docs_sections): generated, never typed. A folder given to ``--from`` is a checkpoint
folder or holds them; a sweep's models that failed (its sweep.json) appear as rows with their error. A CSV
given to ``--from`` (an earlier results/experiments.csv) brings back its sweep rows, for sweeps whose folders
are gone (they came back from a device lease once).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from brainmri.cli import exit_code, setup_logging
from brainmri.eval.tables import FINISHED_EPOCHS, has_metrics, is_sweep_row, metric_columns, read_metrics, row_cut_short
from brainmri.models.catalog import checkpoint_folders
from brainmri.models.checkpoint import EXPERIMENTS_CSV, EXPERIMENTS_MD, METRICS, SWEEP_SUMMARY, results_dir
from brainmri.models.registry import REGISTRY
from brainmri.vocabulary import percent
from reports.docs_sections import update_docs
from reports.roofline import COSTS_CSV, bound_img_per_s, datasheet_peak, load_costs

_logger = logging.getLogger(__name__)

SOURCES = ["checkpoints", "results/experiments.csv"]  # the shipped models, and the sweep rows kept from earlier device runs

# The CSV's columns from metrics.json (brainmri.eval.tables.METRIC_COLUMNS, the map the app's table reads too).
COLUMNS = [
    "model", "parameters", "input_size", "initialization", "epochs_run", "best_epoch", "val_accuracy", "test_unseen_accuracy",
    "test_accuracy", "test_loss", "train_seconds", "img_per_s", "peak_memory_gib", "device", "batch_size",
    "grad_checkpointing", "stopped", "test_unseen_n",
]  # fmt: skip
EXTRA = ["bound_img_per_s", "pct_of_bound", "status", "run", "folder"]  # bound: reports.roofline on the card's datasheet, GPU rows only

# Markdown column -> (header, format of the value).
_MD = {
    "model": ("model", str),
    "parameters": ("params", lambda v: f"{v / 1e6:.1f} M"),
    "input_size": ("input", lambda v: f"{v} px"),
    "initialization": ("init", lambda v: v.split(" (")[0]),
    "epochs_run": ("epochs", str),
    "best_epoch": ("best", str),
    "val_accuracy": ("val acc", percent),
    "test_unseen_accuracy": ("unseen test acc", percent),
    "test_accuracy": ("test acc", percent),
    "test_loss": ("test loss", lambda v: f"{v:.3f}"),
    "train_seconds": ("train time", lambda v: f"{v:.0f} s"),
    "img_per_s": ("img/s", lambda v: f"{v:,.0f}"),
    "pct_of_bound": ("% of bound", lambda v: f"{v:.0f}%"),
    "peak_memory_gib": ("peak mem", lambda v: f"{v:.1f} GiB"),
    "device": ("device", str),
    "run": ("run", str),
}


def metrics_row(folder: Path) -> dict:
    """One table row from ``folder/metrics.json``."""
    row = metric_columns(read_metrics(folder), COLUMNS)
    status = "ok" if row["test_accuracy"] is not None else "not tested"
    return {**row, "bound_img_per_s": None, "pct_of_bound": None, "status": status, "run": run_label(folder), "folder": str(folder)}


def run_label(folder: Path) -> str:
    """Which run a row comes from: "shipped" for checkpoints/, else the sweep folder's name (device_sweep, ...)."""
    return "shipped" if folder.parent.name == "checkpoints" else folder.parent.name


def failed_rows(folder: Path) -> list[dict]:
    """Rows for the models a sweep (``folder/sweep.json``) recorded as failed."""
    path = folder / SWEEP_SUMMARY
    if not path.is_file():
        return []
    summary = json.loads(path.read_text())
    device = summary.get("device", {}).get("device")
    return [
        {
            **dict.fromkeys([*COLUMNS, *EXTRA]),
            "model": r["model"],
            "device": device,
            "status": r["status"],
            "run": folder.name,
            "folder": str(folder / r["model"]),
        }
        for r in summary.get("models", [])
        if r["status"] != "ok"
    ]


def collect_rows(sources: list[str | Path]) -> list[dict]:
    """Rows of every checkpoint folder in ``sources`` (folders, or folders of folders), in registry order."""
    rows = []
    for source in map(Path, sources):
        folders = [source] if has_metrics(source) else checkpoint_folders(source, holding=METRICS, classifiers=True)
        rows += [metrics_row(f) for f in folders]
        rows += failed_rows(source)
    return add_bounds(sort_rows(rows))


def gather(sources: list[str | Path]) -> list[dict]:
    """Rows of the checkpoint folders among ``sources`` and the sweep rows of the experiments.csv files among them."""
    rows = collect_rows([s for s in sources if Path(s).is_dir()])
    return sort_rows(rows + [r for s in sources if Path(s).suffix == ".csv" for r in csv_rows(s)])


def sort_rows(rows: list[dict]) -> list[dict]:
    """Registry order, then device, then folder."""
    order = {name: i for i, name in enumerate(REGISTRY)}
    return sorted(rows, key=lambda r: (order.get(r["model"], len(order)), str(r["device"]), str(r["folder"])))


def add_bounds(rows: list[dict], costs_csv: str | Path = COSTS_CSV) -> list[dict]:
    """For rows trained on an H100 or H200: the roofline bound of their training rate on that card's datasheet
    (reports.roofline) and the share reached."""
    costs = load_costs(costs_csv) if Path(costs_csv).is_file() else {}
    for row in rows:
        cost, peak = costs.get(row["model"]), datasheet_peak(row.get("device", ""))
        if cost and peak and row.get("img_per_s") and cost.input_size == row["input_size"]:
            bound, _ = bound_img_per_s(cost, peak, row.get("batch_size") or 128)
            row["bound_img_per_s"], row["pct_of_bound"] = round(bound), round(100 * row["img_per_s"] / bound, 1)
    return rows


def csv_rows(path: str | Path) -> list[dict]:
    """The sweep rows (run other than "shipped") of an earlier experiments.csv, with numbers as numbers."""
    with Path(path).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if is_sweep_row(r)]
    return [{**dict.fromkeys([*COLUMNS, *EXTRA]), **{k: _typed(v) for k, v in r.items() if k in (*COLUMNS, *EXTRA)}} for r in rows]


def _typed(text: str):
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def render_markdown(rows: list[dict]) -> str:
    """The finished runs' table in Markdown, then the runs cut short by their time budget in a table of their own;
    empty cells for what a row lacks (unseen: before ``test_unseen`` was measured), the error for a failed model."""
    finished, short = [r for r in rows if not row_cut_short(r)], [r for r in rows if row_cut_short(r)]
    text = _markdown_table(finished)
    if short:
        epochs = sorted(r["epochs_run"] for r in short if r.get("epochs_run"))
        span = f" ({epochs[0]}-{epochs[-1]} epochs)" if epochs else ""
        text += (
            f"\n**Cut short** by their time budget or under {FINISHED_EPOCHS} epochs{span}: how far each model got, not what "
            "it can do.\n\n" + _markdown_table(short)
        )
    return text


def _markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _ in _MD.values()) + " |", "|" + "---|" * len(_MD)]
    for row in rows:
        cells = [fmt(row[col]) if row.get(col) is not None else "" for col, (_, fmt) in _MD.items()]
        if row["status"] != "ok":
            cells[1] = row["status"].replace("|", "/")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out: str | Path) -> tuple[Path, Path]:
    """``out/experiments.csv`` and ``out/experiments.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / EXPERIMENTS_CSV, out / EXPERIMENTS_MD
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, *EXTRA])
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(render_markdown(rows))
    return csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sources_help = "checkpoint folders, folders of them, or an earlier experiments.csv for its sweep rows (default: %(default)s)"
    parser.add_argument("--from", dest="sources", nargs="+", default=SOURCES, help=sources_help)
    parser.add_argument("--out", default=str(results_dir()), help="where experiments.csv and .md go (default: %(default)s)")
    parser.add_argument("--docs", action="store_true", help="also rewrite the generated tables of docs/experiments.md and README.md")
    args = parser.parse_args(argv)

    def run() -> None:
        sources = [s for s in args.sources if Path(s).is_dir() or Path(s).suffix == ".csv" and Path(s).is_file()]
        rows = gather(sources)  # an experiments.csv among them is read before it is rewritten
        if not rows:
            raise ValueError(f"no metrics.json under {', '.join(args.sources)}")
        csv_path, md_path = write_tables(rows, args.out)
        _logger.info("wrote %s and %s (%d rows)", csv_path, md_path, len(rows))
        if args.docs:
            update_docs(sources, md_path.read_text())

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
