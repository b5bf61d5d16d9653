"""The comparison pictures of the shipped models, from their metrics.json: accuracy against cost, and per class.

    python -m reports.plots      # checkpoints/ -> results/accuracy_cost.png, accuracy_params.png, per_class.png, plots.json

*Accuracy against cost*, in the style of the EfficientNet paper's figure: one labelled dot a model, its
unseen-Testing accuracy (Testing without the images that have an exact, near or mirrored twin in Training)
with the 95% bootstrap interval, against the multiply-accumulates of one forward pass at its input size
(counted by ``torch.utils.flop_counter.FlopCounterMode``, the same on any machine), and against its parameters
in a second picture.
A model whose metrics.json has no ``test_unseen`` yet is drawn hollow at its official Testing accuracy.
*Per class*: each model's recall per class on the same images, models as rows: where they disagree.
``plots.json`` holds every number drawn. Takes ~10 s on 2 cores (building each model once to count).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from brainmri.cli import exit_code, setup_logging  # noqa: E402
from brainmri.eval.tables import read_metrics  # noqa: E402
from brainmri.models.catalog import checkpoint_folders, read_ensemble_figures  # noqa: E402
from brainmri.models.checkpoint import (  # noqa: E402
    CONFIG,
    COST_PNG,
    METRICS,
    PARAMS_PNG,
    PER_CLASS_PNG,
    POINTS_JSON,
    UNSEEN,
    label_names,
    results_dir,
)
from brainmri.models.registry import APP_DEFAULT, DEFAULT_CLASSIFIER, ENSEMBLES, REGISTRY, create_model  # noqa: E402
from brainmri.vocabulary import class_words  # noqa: E402

_logger = logging.getLogger(__name__)

TEST = "test"  # metrics.json sections: the honest figure (UNSEEN), and the official one beside it
CLIP = (0.01, 0.9995)  # the logit axis has no 0% or 100%: intervals reaching 100% end at its top
Y_TICKS = [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999]
COLOURS = {
    "simple": "tab:blue",
    "efficientnet": "tab:orange",
    "efficientnet, random init": "tab:red",
    "multitask": "tab:purple",
    "ensemble": "black",
    "baseline": "tab:green",
}  # a family of the registry each, and the ensembles; one missing here would be drawn grey, and left out of the legend


def gmacs(name: str, size: int | None = None) -> float:
    """Multiply-accumulates (10^9) of one forward pass of registry model ``name`` on one ``size`` px image."""
    model = create_model(name).eval()
    size = size or REGISTRY[name].input_size
    with FlopCounterMode(display=False) as count, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return count.get_total_flops() / 2e9


def model_point(folder: str | Path, count_macs: bool = True) -> dict:
    """What the pictures draw of one checkpoint folder: its accuracy (unseen, else Testing), interval, cost, per class
    (``count_macs=False``: no model is built, and ``gmacs`` is None)."""
    m = read_metrics(folder)
    name = m.get("model") or Path(folder).name
    split = UNSEEN if (m.get(UNSEEN) or {}).get("accuracy") is not None else TEST
    r = m.get(split) or {}
    spec = REGISTRY.get(name)
    group = spec.family if spec else "other"
    if group == "efficientnet" and "random" in (m.get("initialization") or "random"):
        group = "efficientnet, random init"
    per_class, per_class_n = _recalls(r)
    return {
        "model": name,
        "group": group,
        "split": split,
        "accuracy": r.get("accuracy"),
        "ci95": r.get("accuracy_ci95"),
        "n": r.get("n"),
        "test_accuracy": (m.get(TEST) or {}).get("accuracy"),
        "parameters": m.get("parameters"),
        "input_size": m.get("input_size"),
        "gmacs": round(gmacs(name, m.get("input_size")), 4) if spec and count_macs else None,
        "per_class": per_class or None,
        "per_class_n": per_class_n or None,  # images of each class the recall is over: few for some classes
        "class_names": label_names(folder) if (Path(folder) / CONFIG).is_file() else list(per_class),
    }


def _recalls(section: dict) -> tuple[dict, dict]:
    """A scored set's recall per class, and how many images each is over (metrics.json's ``per_class``)."""
    per_class = section.get("per_class") or {}
    return {c: v.get("recall") for c, v in per_class.items()}, {c: v.get("n", v.get("support")) for c, v in per_class.items()}


def model_points(root: str | Path, count_macs: bool = True) -> list[dict]:
    """One point per checkpoint folder under ``root`` with a tested metrics.json, best first."""
    points = [model_point(p, count_macs) for p in checkpoint_folders(root, holding=METRICS, classifiers=True)]
    return sorted((p for p in points if p["accuracy"] is not None), key=lambda p: -p["accuracy"])


def ensemble_points(points: list[dict], results: str | Path | None = None) -> list[dict]:
    """One point per scored registry ensemble (results/<name>.json): its accuracy, interval and recall per class as
    scored, its size the members' together, its compute their classifier passes together (``points``: the members'; an
    ensemble whose members are not all there is left out). The one encoder's decoder, which serving runs for the
    outline anyway, is not counted, as for its own dot."""
    found = []
    by_name = {p["model"]: p for p in points}
    for name, spec in ENSEMBLES.items():
        scores = read_ensemble_figures(name, results)
        if scores is None or not (scores.get(UNSEEN) or {}).get("accuracy"):
            continue
        r = scores[UNSEEN]
        members = [by_name.get(m) for m in spec.members]
        if None in members:  # drawn beside its members only
            continue
        per_class, per_class_n = _recalls(r)
        found.append({
            "model": name, "group": "ensemble", "split": UNSEEN, "accuracy": r["accuracy"], "ci95": r.get("accuracy_ci95"),
            "n": r.get("n"), "test_accuracy": (scores.get(TEST) or {}).get("accuracy"), "parameters": scores.get("parameters"),
            "input_size": scores.get("input_size"),
            "gmacs": round(sum(m["gmacs"] for m in members), 4) if all(m["gmacs"] for m in members) else None,
            "per_class": per_class or None, "per_class_n": per_class_n or None, "class_names": list(per_class),
        })  # fmt: skip
    return found


def _label(point: dict) -> str:
    if point["model"] == APP_DEFAULT:
        return f"{point['model']} (the app default)"
    return point["model"] + (" (in the app default)" if point["model"] == DEFAULT_CLASSIFIER else "")


def _place_labels(ax, texts: list) -> None:
    """Lift each label, lowest dot first, just clear of the labels already placed and of the dots it would cover."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_points = 72 / fig.dpi
    radius = 5 / to_points  # a dot's half width, in pixels (markers of 7 points, and a little room)
    dots = [ax.transData.transform(t.xy) for t in texts]
    placed = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius) for x, y in dots]
    for text in sorted(texts, key=lambda t: ax.transData.transform(t.xy)[1]):
        box = text.get_window_extent(renderer)
        lift = 0.0
        while clash := [b for b in placed if b.x0 < box.x1 and box.x0 < b.x1 and b.y0 < box.y1 + lift and box.y0 + lift < b.y1]:
            lift = max(b.y1 for b in clash) - box.y0 + 1
        x, y = text.get_position()  # offset points from the dot
        text.set_position((x, y + lift * to_points))
        placed.append(box.translated(0, lift))


COSTS = {  # the x axes: key in a point -> (its unit, the axis label, the file)
    "gmacs": (1, "GMACs of one forward pass at the model's input size (log)", COST_PNG),
    "parameters": (1e6, "parameters, millions (log)", PARAMS_PNG),
}


def plot_accuracy_cost(points: list[dict], path: str | Path, cost: str = "gmacs") -> Path:
    """Accuracy against ``cost`` (a key of :data:`COSTS`; log scale), one labelled dot a model."""
    unit, xlabel, _ = COSTS[cost]
    fig, ax = plt.subplots(figsize=(7.4, 6.2))
    drawn = [p for p in points if p[cost]]
    texts = []
    for p in drawn:
        x, y = p[cost] / unit, p["accuracy"]
        low, high = np.clip(p["ci95"], *CLIP) if p["ci95"] else (y, y)
        colour = COLOURS.get(p["group"], "tab:gray")
        face = colour if p["split"] == UNSEEN else "white"
        ax.errorbar(x, y, yerr=[[y - low], [high - y]], fmt="o", color=colour, mfc=face, ms=7, capsize=3, lw=1, zorder=3)
        texts.append(
            ax.annotate(
                _label(p), (x, y), xytext=(7, 0), textcoords="offset points", fontsize=8, va="center",
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5", "shrinkA": 0, "shrinkB": 4},
            )
        )  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.")[0] in "25" else ""))
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, which="both")
    if drawn:
        xs = [p[cost] / unit for p in drawn]
        ax.set_xlim(min(xs) / 1.5, max(xs) * 5)  # room for the labels on the right
    ax.set_yscale("logit")  # spreads the crowded top: 90%, 99% and 99.9% sit equally apart
    low = min([p["accuracy"] for p in points] + [p["ci95"][0] for p in points if p["ci95"]])
    ax.set_ylim(max(CLIP[0], low - 0.02), CLIP[1])
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(Y_TICKS))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:g}%"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    _place_labels(ax, texts)
    unseen = all(p["split"] == UNSEEN for p in points)
    ax.set_ylabel("accuracy with 95% interval (logit scale)")
    for group, colour in COLOURS.items():
        if any(p["group"] == group for p in points):
            ax.plot([], [], "o", color=colour, label=group)
    if not unseen:
        ax.plot([], [], "o", color="0.4", mfc="white", label="no test_unseen yet: official Testing")
    ax.legend(loc="upper left", fontsize=8)
    n = sorted({p["n"] for p in points if p["split"] == UNSEEN and p["n"]})
    on = f"unseen Testing (n={'/'.join(map(str, n))})" if n else "Testing"
    ax.set_title(f"Accuracy on {on} against {'compute' if cost == 'gmacs' else 'size'}, every shipped model", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_per_class(points: list[dict], path: str | Path) -> Path:
    """Models (rows, best first) x classes: each model's recall per class, the cells annotated; the spread across
    models under each class name."""
    rows = [p for p in points if p["per_class"]]
    classes = rows[0]["class_names"] if rows else []
    recall = [[p["per_class"].get(c) for c in classes] for p in rows]
    values = np.array([[np.nan if v is None else 100 * v for v in r] for r in recall]).reshape(len(rows), len(classes))
    fig, ax = plt.subplots(figsize=(7.6, 0.42 * len(rows) + 1.9))
    image = ax.imshow(values, cmap="RdYlGn", vmin=max(50.0, np.nanmin(values) if values.size else 50.0), vmax=100, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            dark = not 60 <= values[i, j] <= 96  # the deep red and deep green ends of the map: white figures on them
            ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    spread = np.nanmax(values, axis=0) - np.nanmin(values, axis=0) if values.size else []
    ticks = [f"{class_words(c)}\n{_count(rows, c)}\nspread {s:.1f} pts" for c, s in zip(classes, spread)]
    ax.set_xticks(range(len(classes)), ticks, fontsize=8)
    ax.set_yticks(range(len(rows)), [_label(p) + ("" if p["split"] == UNSEEN else " *") for p in rows], fontsize=8)
    ax.xaxis.tick_top()
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="recall, %")
    unseen = all(p["split"] == UNSEEN for p in rows)
    ax.set_title(
        "Recall per class on unseen Testing" + ("" if unseen else " (*: official Testing, no test_unseen yet)"), fontsize=10, pad=44
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _count(rows: list[dict], c: str) -> str:
    """How many images of class ``c`` the recalls are over, "n=17" (a range where the models' sets differ)."""
    found = sorted({(p.get("per_class_n") or {}).get(c) for p in rows} - {None})
    return "n=?" if not found else f"n={found[0]}" if len(found) == 1 else f"n={found[0]}-{found[-1]}"


def write_plots(root: str | Path, out: str | Path, results: str | Path | None = None) -> list[Path]:
    """The pictures and plots.json (every number drawn) from the checkpoint folders under ``root``, and the registry
    ensembles scored in ``results`` (default: the results folder), the app's default among them."""
    points = model_points(root)
    if not points:
        raise ValueError(f"no tested metrics.json under {root}")
    points = sorted(points + ensemble_points(points, results), key=lambda p: -p["accuracy"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / POINTS_JSON).write_text(json.dumps({"source": str(root), "models": points}, indent=2) + "\n")
    costs = [plot_accuracy_cost(points, out / png, cost) for cost, (_, _, png) in COSTS.items()]
    return [*costs, plot_per_class(points, out / PER_CLASS_PNG), out / POINTS_JSON]


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default="checkpoints", help="folder of checkpoint folders (default: %(default)s)")
    parser.add_argument("--out", default=str(results_dir()), help="where the pictures and plots.json go (default: %(default)s)")
    args = parser.parse_args(argv)

    def run() -> None:
        written = write_plots(args.checkpoints, args.out)
        _logger.info("wrote %s", ", ".join(map(str, written)))

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
