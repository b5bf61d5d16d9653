"""The experiments table: one row per trained model, from checkpoint folders' metrics.json.

    python -m reports.results --docs        # checkpoints/ + results/experiments.csv's sweep rows -> results/, docs/, README
    python -m reports.results --from checkpoints runs/device_sweep --docs   # after a device sweep: its folders instead

Writes ``results/experiments.csv`` (full precision) and ``results/experiments.md`` (rounded): finished runs
first, then, apart, the runs cut short by their time budget (brainmri.eval.tables.cut_short), whose accuracy
says how far a model got, not what it can do. ``--docs`` replaces what lies between
``<!-- SECTION:results -->`` and ``<!-- /SECTION:results -->`` (and the seed section) of docs/experiments.md,
and the headline table of README.md: generated, never typed. A folder given to ``--from`` is a checkpoint
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
from brainmri.eval.one_encoder import one_encoder_markdown
from brainmri.eval.outline_rules import outline_rules_markdown
from brainmri.eval.report import segmentation_markdown
from brainmri.eval.seeds import seed_markdown
from brainmri.eval.tables import FINISHED_EPOCHS, has_metrics, is_sweep_row, metric_columns, read_metrics, row_cut_short
from brainmri.models.catalog import checkpoint_folders, read_ensemble_figures
from brainmri.models.checkpoint import EXPERIMENTS_CSV, EXPERIMENTS_MD, METRICS, SWEEP_SUMMARY, UNSEEN, results_dir
from brainmri.models.registry import APP_DEFAULT, ENSEMBLES, REGISTRY
from brainmri.models.segmenters import SEGMENTERS
from brainmri.settings import ROOT
from brainmri.vocabulary import CLASS_WORDS, percent
from reports.cam_sanity import cam_sanity_markdown
from reports.retrained import retrained_markdown
from reports.roofline import COSTS_CSV, bound_img_per_s, datasheet_peak, load_costs

_logger = logging.getLogger(__name__)

DOCS = ROOT / "docs" / "experiments.md"  # holds the results and seed sections
README = ROOT / "README.md"  # holds the headline section and the one-encoder summary
HEATMAPS_DOC = ROOT / "docs" / "heatmaps.md"  # holds the heatmap check's table
SEGMENTATION_DOC = ROOT / "docs" / "segmentation.md"  # holds the U-Net's table and the one-encoder section in full
SECTION = ("<!-- SECTION:results -->", "<!-- /SECTION:results -->")
SEED_SECTION = ("<!-- SECTION:seed -->", "<!-- /SECTION:seed -->")
HEADLINE_SECTION = ("<!-- SECTION:headline -->", "<!-- /SECTION:headline -->")
SEGMENTATION_SECTION = ("<!-- SECTION:segmentation -->", "<!-- /SECTION:segmentation -->")  # README
ONE_ENCODER_SECTION = ("<!-- SECTION:one-encoder -->", "<!-- /SECTION:one-encoder -->")  # README
LEAK_SECTION = ("<!-- SECTION:leak -->", "<!-- /SECTION:leak -->")  # docs/experiments.md
CAM_SANITY_SECTION = ("<!-- SECTION:cam-sanity -->", "<!-- /SECTION:cam-sanity -->")  # docs/heatmaps.md
RETRAINED_SECTION = ("<!-- SECTION:retrained -->", "<!-- /SECTION:retrained -->")  # docs/experiments.md
OUTLINE_RULES_SECTION = ("<!-- SECTION:outline-rules -->", "<!-- /SECTION:outline-rules -->")  # docs/segmentation.md
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


def headline_markdown(root: str | Path = ROOT / "checkpoints") -> str:
    """The README's table: each shipped model's unseen-Testing accuracy (the honest figure) with its 95% interval,
    the official Testing beside it, best unseen first (Testing where unseen is not measured yet)."""
    rows = []
    for folder in checkpoint_folders(root, holding=METRICS, classifiers=True):
        m = metric_columns(read_metrics(folder))
        rows.append(m)
    for name in ENSEMBLES:  # served answers without a folder of their own: their figures file beside checkpoints/
        figures = read_ensemble_figures(name, Path(root).parent / "results")
        if figures is not None:
            rows.append(metric_columns(figures))
    rows.sort(key=lambda m: -(m["test_unseen_accuracy"] or m["test_accuracy"] or 0))
    lines = [
        *_headline_sentence(root, rows),
        "| model | unseen Testing (95% CI) | n | official Testing (95% CI) | params | input |",
        "|---|---|---:|---|---:|---:|",
    ]
    for m in rows:
        name = f"`{m['model']}`" + (" (app default)" if m["model"] == APP_DEFAULT else "")
        params = "" if m["parameters"] is None else f"{m['parameters'] / 1e6:.1f} M"
        lines.append(
            f"| {name} | {_pct_ci(m['test_unseen_accuracy'], m['test_unseen_accuracy_ci95'])} | {m['test_unseen_n'] or ''} "
            f"| {_pct_ci(m['test_accuracy'], m['test_accuracy_ci95'])} | {params} | {m['input_size'] or ''} |"
        )
    return "\n".join(lines) + "\n"


def _headline_sentence(root: str | Path, rows: list[dict]) -> list[str]:
    """The README's first figures, in words: the default's and the best model's unseen accuracy, and the thin classes."""
    default = next((m for m in rows if m["model"] == APP_DEFAULT and m["test_unseen_accuracy"] is not None), None)
    singles = [m for m in rows if m["model"] != APP_DEFAULT]
    best = singles[0] if singles and singles[0]["test_unseen_accuracy"] is not None else None
    if default is None or best is None:
        return []
    # every single model level with the first on both Testing figures is named: the sort's order among them is the folders'
    tied = [
        m["model"]
        for m in singles
        if (m["test_unseen_accuracy"], m["test_accuracy"]) == (best["test_unseen_accuracy"], best["test_accuracy"])
    ]
    best_words = (
        f"the best single model, `{best['model']}`,"
        if len(tied) == 1
        else ("the best single models, " + " and ".join(f"`{t}`" for t in tied) + " (tied),")
    )
    if APP_DEFAULT in ENSEMBLES:  # no card of its own: its figures file
        scored, where = read_ensemble_figures(APP_DEFAULT, Path(root).parent / "results"), f", in `results/{APP_DEFAULT}.json`"
    else:
        scored, where = read_metrics(Path(root) / APP_DEFAULT), ""
    per_class = scored[UNSEEN]["per_class"]
    thin = " and ".join(f"{n['n']} {CLASS_WORDS.get(c, c)}" for c, n in per_class.items() if n["n"] < 50)

    what = f" ({ENSEMBLES[APP_DEFAULT].about})" if APP_DEFAULT in ENSEMBLES else ""

    def said(m: dict) -> str:
        lo, hi = m["test_unseen_accuracy_ci95"]
        official = f"{100 * m['test_accuracy']:.2f}% on official Testing"
        return f"**{100 * m['test_unseen_accuracy']:.1f}%** (95% CI {100 * lo:.1f}-{100 * hi:.1f}; {official})"

    return [
        f"On the {default['test_unseen_n']} unseen Testing images, the app's default `{APP_DEFAULT}`{what} scores {said(default)},"
        f" and {best_words} {said(best)}. Only {thin} images are unseen, so those classes' figures"
        f" are wide (per class in each model card{where} and in the Experiments tab).",
        "",
    ]


def leak_markdown(root: str | Path = ROOT / "checkpoints") -> str:
    """Per shipped model: validation as first measured (mirrored twins of training images in it) against its
    leak-free part (``val_split.txt``, train.leak_free), and official against unseen Testing."""
    lines = [
        "| model | validation as shipped (n) | leak-free validation (n) | inflation | official Testing | unseen Testing (n) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for folder in checkpoint_folders(root, holding=METRICS, classifiers=True):
        m = metric_columns(read_metrics(folder))
        old, new = m["val_leaky_accuracy"], m["val_accuracy"]
        if old is None or new is None:
            continue
        metrics = read_metrics(folder)
        n_old, n_new = metrics["validation_leaky"]["n"], metrics["validation"]["n"]
        lines.append(
            f"| `{m['model']}` | {100 * old:.2f}% ({n_old}) | {100 * new:.2f}% ({n_new}) | {100 * (old - new):+.2f} pts"
            f" | {_pct_ci(m['test_accuracy'], None)} | {_pct_ci(m['test_unseen_accuracy'], None)} ({m['test_unseen_n'] or ''}) |"
        )
    return "\n".join(lines) + "\n"


def _pct_ci(value: float | None, ci: list | None) -> str:
    return "not measured" if value is None else percent(value, ci, digits=2)


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


def update_section(path: str | Path, markdown: str, note: str, section: tuple[str, str] = SECTION) -> None:
    """Replace what lies between the ``section`` markers of the Markdown file ``path``; ValueError if they are missing."""
    path = Path(path)
    text = path.read_text()
    start, end = section
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{path} needs one {start} ... {end} pair")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    path.write_text(f"{head}{start}\n{note}\n\n{markdown}{end}{tail}")


def update_docs(
    sources: list[str],
    tables_md: str,
    docs: str | Path = DOCS,
    readme: str | Path = README,
    segmentation: str | Path = SEGMENTATION_DOC,
    heatmaps: str | Path = HEATMAPS_DOC,
) -> None:
    """Write the generated tables where the docs read them: results and seed sections of ``docs``, headline of
    ``readme`` (from the checkpoints among ``sources``)."""
    note = (
        f"Generated by `python -m reports.results --docs` from {', '.join(f'`{s}`' for s in sources)}; "
        "full precision in `results/experiments.csv`. *Unseen* is Testing without the images that have an exact, near or "
        "mirrored twin in Training (empty where not measured yet); *test* is the official Testing split."
    )
    seed_note = "Generated by `python -m reports.results --docs` from the shipped `simple_cnn_*` checkpoints (brainmri.eval.seeds)."
    update_section(docs, tables_md, note)
    update_section(docs, seed_markdown(), seed_note, SEED_SECTION)
    checkpoints = next((s for s in sources if Path(s).is_dir() and Path(s).name == "checkpoints"), ROOT / "checkpoints")
    headline_note = (
        f"Generated by `python -m reports.results --docs` from `{Path(checkpoints).name}/*/metrics.json`"
        f" and, for the default ensemble, `results/{APP_DEFAULT}.json` (`python scripts/ensemble_default.py --served`)."
    )
    update_section(readme, headline_markdown(checkpoints), headline_note, HEADLINE_SECTION)
    leak_note = (
        "Generated by `python -m reports.results --docs` from each shipped checkpoint's metrics.json (after `python -m train.leak_free`)."
    )
    update_section(docs, leak_markdown(checkpoints), leak_note, LEAK_SECTION)
    retrained_note = (
        "Generated by `python -m reports.results --docs` from each shipped checkpoint's metrics.json and `results/as_is_split.json`."
    )
    update_section(docs, retrained_markdown(checkpoints), retrained_note, RETRAINED_SECTION)
    cam_note = "Generated by `python -m reports.results --docs` from `results/cam_sanity.json` (`python -m reports.cam_sanity`)."
    update_section(heatmaps, cam_sanity_markdown(), cam_note, CAM_SANITY_SECTION)
    unet = next(name for name, spec in SEGMENTERS.items() if not spec.num_classes)  # the outline-only U-Net
    seg_note = f"Generated by `python -m reports.results --docs` from `{Path(checkpoints).name}/{unet}/metrics.json`."
    update_section(segmentation, segmentation_markdown(Path(checkpoints) / unet) + "\n", seg_note, SEGMENTATION_SECTION)
    one = next(name for name, spec in SEGMENTERS.items() if spec.num_classes)  # one encoder for class and outline
    one_note = (
        f"Generated by `python -m reports.results --docs` from `{Path(checkpoints).name}/{one}/metrics.json` and"
        " `results/multitask_default.json` (`python -m train.multitask_default`)."
    )
    for path, compact in ((readme, True), (segmentation, False)):
        text = one_encoder_markdown(Path(checkpoints) / one, compact=compact) or f"`{one}` is not shipped yet."
        update_section(path, text + "\n", one_note, ONE_ENCODER_SECTION)
    rules_note = "Generated by `python -m reports.results --docs` from `results/outline_rules.json` (`python -m train.outline_rules`)."
    rules = outline_rules_markdown() or "The rules' study has not run yet."
    update_section(segmentation, rules + "\n", rules_note, OUTLINE_RULES_SECTION)


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
