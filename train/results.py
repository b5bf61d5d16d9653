"""The experiments table: one row per trained model, from checkpoint folders' metrics.json.

    python -m train.results                                   # checkpoints/ and runs/device_sweep/ -> results/
    python -m train.results --from checkpoints runs/device_sweep --readme   # also README's results section

Writes ``results/experiments.csv`` (full precision) and ``results/experiments.md`` (rounded).
``--readme`` replaces README.md between ``<!-- SECTION:results -->`` and
``<!-- /SECTION:results -->`` with the Markdown table: generated, never typed. A folder
given to ``--from`` is a checkpoint folder or holds them; a sweep's models that failed
(its sweep.json) appear as rows with their error.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from brainmri.checkpoint import METRICS, has_metrics, metric_columns, read_metrics
from brainmri.cli import setup_logging
from brainmri.registry import REGISTRY
from brainmri.seed_report import seed_markdown
from train.roofline import COSTS_CSV, bound_img_per_s, datasheet_peak, load_costs

_logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SECTION = ("<!-- SECTION:results -->", "<!-- /SECTION:results -->")
SEED_SECTION = ("<!-- SECTION:seed -->", "<!-- /SECTION:seed -->")

# The CSV's columns from metrics.json (brainmri.checkpoint.METRIC_COLUMNS, the map the app's table reads too).
COLUMNS = [
    "model", "parameters", "input_size", "initialization", "epochs_run", "best_epoch", "val_accuracy", "test_accuracy",
    "test_dedup_accuracy", "test_loss", "train_seconds", "img_per_s", "peak_memory_gib", "device", "batch_size",
    "grad_checkpointing", "stopped",
]  # fmt: skip
EXTRA = ["bound_img_per_s", "pct_of_bound", "status", "run", "folder"]  # bound: train.roofline on the card's datasheet, GPU rows only

# Markdown column -> (header, format of the value).
_MD = {
    "model": ("model", str),
    "parameters": ("params", lambda v: f"{v / 1e6:.1f} M"),
    "input_size": ("input", lambda v: f"{v} px"),
    "initialization": ("init", lambda v: v.split(" (")[0]),
    "epochs_run": ("epochs", str),
    "best_epoch": ("best", str),
    "val_accuracy": ("val acc", lambda v: f"{100 * v:.1f}%"),
    "test_accuracy": ("test acc", lambda v: f"{100 * v:.1f}%"),
    "test_dedup_accuracy": ("near-dedup test acc", lambda v: f"{100 * v:.1f}%"),
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
    path = folder / "sweep.json"
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
        folders = [source] if has_metrics(source) else sorted(p.parent for p in source.glob(f"*/{METRICS}"))
        rows += [metrics_row(f) for f in folders]
        rows += failed_rows(source)
    order = {name: i for i, name in enumerate(REGISTRY)}
    return add_bounds(sorted(rows, key=lambda r: (order.get(r["model"], len(order)), str(r["device"]), r["folder"])))


def add_bounds(rows: list[dict], costs_csv: str | Path = COSTS_CSV) -> list[dict]:
    """For rows trained on an H100 or H200: the roofline bound of their training rate on that card's datasheet
    (train.roofline) and the share reached."""
    costs = load_costs(costs_csv) if Path(costs_csv).is_file() else {}
    for row in rows:
        cost, peak = costs.get(row["model"]), datasheet_peak(row.get("device", ""))
        if cost and peak and row.get("img_per_s") and cost.input_size == row["input_size"]:
            bound, _ = bound_img_per_s(cost, peak, row.get("batch_size") or 128)
            row["bound_img_per_s"], row["pct_of_bound"] = round(bound), round(100 * row["img_per_s"] / bound, 1)
    return rows


def render_markdown(rows: list[dict]) -> str:
    """The table in Markdown; empty cells for what a row lacks, the error for a failed model."""
    lines = ["| " + " | ".join(h for h, _ in _MD.values()) + " |", "|" + "---|" * len(_MD)]
    for row in rows:
        cells = [fmt(row[col]) if row.get(col) is not None else "" for col, (_, fmt) in _MD.items()]
        if row["status"].startswith("failed"):
            cells[1] = row["status"].replace("|", "/")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out: str | Path) -> tuple[Path, Path]:
    """``out/experiments.csv`` and ``out/experiments.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "experiments.csv", out / "experiments.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, *EXTRA])
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(render_markdown(rows))
    return csv_path, md_path


def update_readme(readme: str | Path, markdown: str, note: str, section: tuple[str, str] = SECTION) -> None:
    """Replace what lies between the ``section`` markers of ``readme``; ValueError if they are missing."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = section
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{readme} needs one {start} ... {end} pair")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    readme.write_text(f"{head}{start}\n{note}\n\n{markdown}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="sources", nargs="+", default=["checkpoints", "runs/device_sweep"], help="folders to tabulate")
    parser.add_argument("--out", default=str(ROOT / "results"), help="where experiments.csv and .md go")
    parser.add_argument("--readme", nargs="?", const=str(ROOT / "README.md"), help="also rewrite this README's results section")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources if Path(s).is_dir()]
    rows = collect_rows(sources)
    if not rows:
        _logger.error("no metrics.json under %s", ", ".join(args.sources))
        return 2
    csv_path, md_path = write_tables(rows, args.out)
    _logger.info("wrote %s and %s (%d rows)", csv_path, md_path, len(rows))
    if args.readme:
        note = (
            f"Generated by `python -m train.results --readme` from {', '.join(f'`{s}`' for s in sources)}; "
            "full precision in `results/experiments.csv`. Test accuracy is on the official Testing split, "
            "near-dedup on its images with no (near-)twin in Training."
        )
        seed_note = "Generated by `python -m train.results --readme` from the shipped `simple_cnn_*` checkpoints (brainmri.seed_report)."
        try:
            update_readme(args.readme, md_path.read_text(), note)
            update_readme(args.readme, seed_markdown(), seed_note, SEED_SECTION)
        except ValueError as e:
            _logger.error("%s", e)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
