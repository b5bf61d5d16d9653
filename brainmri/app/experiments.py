"""The experiment table and figures, read from checkpoint folders and the results folder, never typed.

Each checkpoint folder holds ``metrics.json``, ``history.csv``, ``curves.png``,
``confusion.png`` and ``reliability.png`` (written by train/train.py, train/evaluate.py and
train/calibrate.py). The sweeps write ``results/experiments.csv``, shown as it is when
present, its runs cut short by their time budget apart from the finished ones; reports/cam_sanity.py writes
``results/cam_sanity.json``, the heatmaps' in-brain share; ``python -m reports.plots`` draws
``results/accuracy_cost.png``, ``accuracy_params.png`` and ``per_class.png``, the pictures that compare the shipped
models.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import gradio as gr
import pandas as pd

from brainmri.app import sweeps
from brainmri.app.display import html_table
from brainmri.eval.localisation import localisation_table
from brainmri.eval.one_encoder import one_encoder_markdown
from brainmri.eval.report import segmentation_markdown
from brainmri.eval.seeds import seed_markdown
from brainmri.eval.tables import metric_columns, read_metrics
from brainmri.models.catalog import checkpoint_folders, read_ensemble_figures
from brainmri.models.checkpoint import (
    CAM_LOCALISATION,
    CAM_SANITY,
    COST_PNG,
    FIGURES,
    HISTORY,
    METRICS,
    PARAMS_PNG,
    PER_CLASS_PNG,
    UNSEEN,
    results_dir,
)
from brainmri.models.registry import DEFAULT_CLASSIFIER, ENSEMBLES, REGISTRY
from brainmri.models.segmenters import SEGMENTERS
from brainmri.settings import checkpoint_dir
from brainmri.vocabulary import class_words, initialisation_words, minutes, percent

_logger = logging.getLogger(__name__)

RESULTS_DIR = results_dir()
CAM_SANITY_JSON = RESULTS_DIR / CAM_SANITY
CAM_LOCALISATION_JSON = RESULTS_DIR / CAM_LOCALISATION
PICTURES = tuple(RESULTS_DIR / f for f in (COST_PNG, PARAMS_PNG, PER_CLASS_PNG))  # python -m reports.plots
# The compact table a visitor reads first (the name pinned on the left); ALL_COLUMNS behind "all columns".
COLUMNS = [
    "model", "unseen test acc (95% CI)", "test acc (95% CI)", "val acc", "family", "input px", "initialisation", "train time", "device",
]  # fmt: skip
ALL_COLUMNS = [
    *COLUMNS, "parameters", "epochs (best)", "train acc", "test loss", "temperature", "test ECE raw", "test ECE calibrated",
    "heatmap in brain",
]  # fmt: skip
LEAD = (
    "How the app's default ensemble and every shipped model score. Read the *unseen* figures: Testing without the "
    "images that have an exact, near or mirrored twin in Training, so no model has seen them{mix}. They are mostly "
    "glioma, so a model weak on another class can score higher there than on all of Testing: compare models by the same "
    "figure, not one model's unseen figure with its official one."
)
ABOUT = [  # what each column means, in the accordion under the table
    "*unseen test acc*: accuracy on those unseen Testing images, with a 95% bootstrap interval (the honest figure).",
    "*test acc*: the official Testing split, twins included.",
    "*val acc*: the validation split cut from Training (twins kept on one side), on which epochs and settings were chosen.",
    "*family*: simple (the seed report's hand-built CNNs), baseline (common timm CNNs), efficientnet, multitask (one "
    "encoder for class and outline) or ensemble.",
    "*input px*: the side of the square the model reads; an ensemble gives its members', in their order.",
    "*initialisation*: ImageNet weights (offline, for the Lites and the one encoder's encoder) or random. A model "
    "trained on from an earlier run of itself names that run; its *train time* and *epochs* are then the last run's "
    "(the one encoder's card gives every run).",
    "*train time*: the run's wall time on whichever machine ran it (the *device* column), shared with other work on "
    "some: a rough cost, not a benchmark.",
    "Under All columns: *parameters* in millions; *epochs (best)*, those run and the one kept, chosen on validation; "
    "*train acc*, the kept epoch's running average over its augmented batches; *test loss*, cross-entropy on Testing "
    "before the temperature; *temperature*, the softmax temperature fitted on validation; *test ECE*, expected "
    "calibration error on Testing in percent, raw and with that temperature (an ensemble: its members' calibrated "
    "probabilities averaged).",
    "A blank cell was not measured for that model. The default's scores come from `results/lite0_and_multitask.json` "
    "(`scripts/ensemble_default.py --served`), the heatmap-in-brain shares from `results/cam_sanity.json` "
    "(`python -m reports.cam_sanity`), every other figure from the model's checkpoint folder's `metrics.json`.",
]

PICTURES_ABOUT = (
    "**Which model is best for what it costs?** Each dot a model (the default ensemble with its members' passes and "
    "sizes together): its unseen-Testing accuracy with the 95% interval, against the compute of one forward pass and "
    "against its size; a hollow dot has no unseen figure yet (official Testing instead). Below, each model's recall "
    "per class. Drawn by `python -m reports.plots`; the full-screen button enlarges a picture."
)


def _rounded(value, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def cam_report(path: str | Path = CAM_SANITY_JSON) -> dict:
    """The heatmap check's report (reports.cam_sanity); empty when it has not been run or cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        _logger.warning("%s unreadable, so no heatmap-in-brain figures (%s: %s)", path, type(e).__name__, e)
        return {}


def cam_in_brain(path: str | Path = CAM_SANITY_JSON) -> dict[str, str]:
    """Per model, the mean share of heatmap mass inside the brain mask over the Testing images it was measured on,
    named as such when the attention sits mostly outside; empty when the check has not been run."""
    out = {}
    for name, r in cam_report(path).get("models", {}).items():
        if r.get("mean") is not None:
            outside = "outside" in r.get("verdict", "")
            out[name] = f"{r['mean']:.2f} (n={r['n']})" + (": attention mostly OUTSIDE the brain" if outside else "")
    return out


def unseen_mix(folder: str | Path | None = None) -> str:
    """How many unseen Testing images each class has, from the default classifier's metrics.json, as " (335 images:
    218 glioma, ...)"; "" where it cannot be read."""
    try:
        unseen = read_metrics(folder or checkpoint_dir() / DEFAULT_CLASSIFIER)[UNSEEN]
        counts = ", ".join(f"{int(v['n'])} {class_words(c)}" for c, v in unseen["per_class"].items())
        return f" ({int(unseen['n'])} images: {counts})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def lead() -> str:
    """:data:`LEAD`, with the unseen set's classes counted."""
    return LEAD.format(mix=unseen_mix())


def about(path: str | Path = CAM_SANITY_JSON) -> str:
    """What each column means (:data:`ABOUT`) as a list, then what the heatmap-in-brain column measures, in the check's
    own words (its method, and what a uniform map would score: the brain mask's mean share of the image)."""
    lines, report = list(ABOUT), cam_report(path)
    if report:  # without it the column is empty anyway
        areas = [r["mask_area_mean"] for r in report.get("models", {}).values() if r.get("mask_area_mean") is not None]
        method = str(report.get("cam", "the served heatmap")).split(",")[0]
        uniform = f" (a uniform map scores {sum(areas) / len(areas):.2f})" if areas else ""
        lines.insert(
            -1, f"*heatmap in brain* (under All columns): mean share of heatmap ({method}) mass inside an intensity brain mask{uniform}."
        )
    return "\n".join(f"- {line}" for line in lines)


def experiment_row(folder: str | Path, cam_shares: dict[str, str] | None = None) -> dict:
    """One table row (all of :data:`ALL_COLUMNS`) from a checkpoint folder's metrics.json, formatted for reading."""
    m = metric_columns(read_metrics(folder))
    name = m["model"] or Path(folder).name
    spec = REGISTRY.get(name)
    seconds = m["train_seconds"]
    return {
        "model": name,
        "unseen test acc (95% CI)": percent(m["test_unseen_accuracy"], m["test_unseen_accuracy_ci95"]),
        "test acc (95% CI)": percent(m["test_accuracy"], m["test_accuracy_ci95"]),
        "val acc": percent(m["val_accuracy"]),
        "family": spec.family if spec else "",
        "input px": m["input_size"],
        "initialisation": initialisation_words(m["initialization"]),
        "train time": minutes(seconds),
        "device": m["device"] or "",
        "parameters": "" if m["parameters"] is None else f"{m['parameters'] / 1e6:.2f} M",
        "epochs (best)": f"{m['epochs_run'] or '?'} ({m['best_epoch'] or '?'})",
        "train acc": percent(m["train_accuracy"]),
        "test loss": _rounded(m["test_loss"]),
        "temperature": _rounded(m["temperature"], 3),
        "test ECE raw": percent(m["test_ece_raw"], digits=2),  # in percent, as the docs and the one-encoder section say it
        "test ECE calibrated": percent(m["test_ece_calibrated"], digits=2),
        "heatmap in brain": (cam_shares or {}).get(name, ""),
    }


def ensemble_row(name: str, results: str | Path | None = None) -> dict | None:
    """A registry ensemble's row (the app's default is one) from its scores (results/<name>.json, the command that
    wrote them in its ``command``); None when it has not been scored."""
    scores = read_ensemble_figures(name, results)
    if scores is None:
        return None
    figure = {split: scores.get(split) or {} for split in ("validation", "test", UNSEEN)}
    row = dict.fromkeys(ALL_COLUMNS, "")
    row.update({
        "model": name,
        "unseen test acc (95% CI)": percent(figure[UNSEEN].get("accuracy"), figure[UNSEEN].get("accuracy_ci95")),
        "test acc (95% CI)": percent(figure["test"].get("accuracy"), figure["test"].get("accuracy_ci95")),
        "val acc": percent(figure["validation"].get("accuracy")),
        "family": "ensemble",
        "input px": scores.get("input_size", ""),
        "initialisation": "its members'",  # each member's row gives its own
        "parameters": f"{scores['parameters'] / 1e6:.2f} M" if scores.get("parameters") else "",
        "test ECE calibrated": percent(figure["test"].get("ece"), digits=2),
    })  # fmt: skip
    return row


def experiment_table(root: str | Path | None = None, results: str | Path | None = None) -> list[dict]:
    """Rows for every scored registry ensemble (the app's default is one; its scores under ``results``), then every
    checkpoint folder under ``root``; a folder whose metrics cannot be read is logged and skipped."""
    rows, shares = [row for name in ENSEMBLES if (row := ensemble_row(name, results)) is not None], cam_in_brain()
    for folder in checkpoint_folders(root, holding=METRICS, classifiers=True, registry_order=True):
        try:
            rows.append(experiment_row(folder, shares))
        except ValueError as e:
            _logger.warning("%s", e)
    return rows


def pictures() -> tuple[str | None, ...]:
    """Accuracy against compute and against size, and per class (``python -m reports.plots``); None where not drawn yet."""
    return tuple(str(p) if p.is_file() else None for p in PICTURES)


def localisation_markdown(path: str | Path = CAM_LOCALISATION_JSON) -> str:
    """The pointing game (reports.cam_localisation) with a line on what it measures, for the Experiments tab."""
    try:
        runs = json.loads(Path(path).read_text())["runs"]
    except FileNotFoundError:
        return "No localisation results yet (`python -m reports.cam_localisation`)."
    except (OSError, ValueError, KeyError) as e:
        _logger.warning("%s unreadable, so no localisation results (%s: %s)", path, type(e).__name__, e)
        return "No localisation results yet (`python -m reports.cam_localisation`)."
    return (
        "**The pointing game.** Each model's boxed validation slices (Training slices it never trained on, with Cheng et "
        "al.'s tumour boxes) are halved at random: the layers and method were chosen on one half, and this table reports "
        "the other. *Peak in box*: the share of slices whose heatmap peaks inside the tumour's box; *mass in box*: the "
        "mean share of the heatmap inside it. The two chances are for the peak: *centre*, always pointing at the image's "
        "centre; *head*, a random point in the head. *Layer*: the stages whose maps are fused, `bn2` the last and "
        "coarsest, `blocks.N` earlier and finer ones.\n\n" + localisation_table(runs)
    )


def history(folder: str | Path) -> list[dict]:
    """Per-epoch rows of history.csv (empty when absent)."""
    path = Path(folder) / HISTORY
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: _as_percent(v) if k.endswith(("_acc", "_accuracy")) else _short(v) for k, v in row.items()} for row in rows]


def _as_percent(value: str) -> str:
    """An accuracy column (0.5822) as the rest of the app says it (58.2%)."""
    try:
        return percent(float(value))
    except ValueError:
        return value


def _short(value: str) -> str:
    """A CSV number to 4 significant digits (history.csv keeps 16), other text as it is."""
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def figure(folder: str | Path, name: str) -> str | None:
    """Path of ``curves.png``, ``confusion.png`` or ``reliability.png`` in a checkpoint folder, if it is there."""
    path = Path(folder) / name
    return str(path) if path.is_file() else None


def figures_of(name: str | None, root: str | Path | None = None) -> tuple:
    """A checkpoint's figures (paths, None where missing) and its history table, for the Experiments tab."""
    if not name:
        return None, None, None, None
    folder = Path(checkpoint_dir() if root is None else root) / name
    return *(figure(folder, f) for f in FIGURES), pd.DataFrame(history(folder))


def tables(root: str | Path | None = None) -> tuple[str, str, str | None, str | None, list[str]]:
    """The Experiments tab's tables as HTML (:func:`brainmri.app.display.html_table`): the compact one, all columns,
    the finished sweep runs and those cut short (None without any), and the names of the checkpoints."""
    rows, (sweep, short) = experiment_table(root), sweeps.results_tables()
    captions = ((sweep, sweeps.CAPTION), (short, sweeps.CUT_CAPTION))
    sweep, short = (None if r is None else html_table(r, caption=c) for r, c in captions)
    names = [r["model"] for r in rows if r["model"] not in ENSEMBLES]  # an ensemble has no folder of figures
    return html_table(rows, COLUMNS), html_table(rows, ALL_COLUMNS), sweep, short, names


# ---------------------------------------------------------------- the tab


def tab_view():
    table, full, sweep, short, names = tables()
    sweep, short = (gr.HTML(html, visible=html is not None) for html in (sweep, short))
    name = gr.Dropdown(choices=names, value=DEFAULT_CLASSIFIER if DEFAULT_CLASSIFIER in names else names[0] if names else None)
    cost, size, per_class = (gr.Image(p, visible=p is not None) for p in pictures())
    unets = [segmentation_markdown(checkpoint_dir() / n) for n, spec in SEGMENTERS.items() if not spec.num_classes]
    one = [one_encoder_markdown(checkpoint_dir() / n) for n, spec in SEGMENTERS.items() if spec.num_classes]
    outline = "\n\n".join(text for text in unets if text) or "No segmentation model is shipped here."
    outline += "".join(f"\n\n#### One encoder for class, heatmap and outline\n\n{text}" for text in one if text)
    return cost, size, per_class, table, full, sweep, short, name, seed_markdown(), localisation_markdown(), outline


def build_tab(tab: gr.Tab) -> None:
    """The Experiments tab's components, filled when the tab is opened (UI wiring, moved out of app.py)."""
    gr.Markdown(lead(), elem_id="experiments-lead")
    gr.Markdown(PICTURES_ABOUT)
    picture = dict(type="filepath", interactive=False, buttons=["fullscreen"], visible=False, show_label=False)
    with gr.Row():
        cost = gr.Image(elem_id="accuracy-cost", **picture)
        size = gr.Image(elem_id="accuracy-params", **picture)
    per_class = gr.Image(elem_id="per-class", **picture)
    # Tables as html_table: Gradio's Dataframe pinned no column, so a row's name scrolled away from its figures.
    with gr.Column(elem_id="experiments-box"):
        gr.Markdown("**The app's default and the shipped checkpoints**")
        table = gr.HTML(elem_id="experiments-table")
        with gr.Accordion("What each column means", open=False, elem_id="columns-box"):
            gr.Markdown(about())
        with gr.Accordion("All columns", open=False):
            full = gr.HTML()
    # The rest folded, each a click away: the tab opens on the pictures and the table, not 7,000 px of page.
    with gr.Accordion("Sweep runs: on the GPU, the seed's protocol on CPU, the runs cut short", open=False, elem_id="gpu-runs"):
        gr.Markdown(sweeps.ABOUT)
        sweep = gr.HTML(visible=False, elem_id="sweep-runs")
        short = gr.HTML(visible=False, elem_id="cut-short")
    with gr.Accordion("Do the heatmaps point at the tumour?", open=False, elem_id="localisation-box"):
        localisation = gr.Markdown(elem_id="localisation")
    with gr.Accordion("One checkpoint's training curves, confusion matrix and reliability", open=False, elem_id="figures-box"):
        name = gr.Dropdown(label="Figures of checkpoint")
        figure = dict(type="filepath", interactive=False, height=380, buttons=["fullscreen"])
        with gr.Row():
            curves = gr.Image(label="Training curves", **figure)
            confusion = gr.Image(label="Confusion matrix (Testing)", **figure)
        with gr.Row():
            reliability = gr.Image(label="Reliability diagram (its titles name the split)", elem_id="reliability", **figure)
            hist = gr.Dataframe(label="history.csv (accuracies in %, the rest to 4 significant digits)", max_height=380)
    with gr.Accordion("The seed report's simple CNNs, reproduced", open=False, elem_id="seed-box"):
        seed = gr.Markdown(elem_id="seed-table")
    with gr.Accordion("Where the tumour is: the outline's Dice against each expert, per class", open=False, elem_id="outline-box"):
        outline = gr.Markdown(elem_id="segmentation-table")
    outputs = [cost, size, per_class, table, full, sweep, short, name, seed, localisation, outline]
    tab.select(tab_view, None, outputs, api_visibility="private")
    name.change(figures_of, name, [curves, confusion, reliability, hist], api_visibility="private")
