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
from matplotlib.text import Text  # noqa: E402
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


# Where a label may sit, in points from its dot: beside it (right first), then further up or down, then above or below.
SPOTS = [(side * dx, dy) for dy in (0, 7, -7, 14, -14, 21, -21, 30, -30, 40, -40) for dx in (7, 16) for side in (1, -1)]
SPOTS += [(0, dy) for dy in (12, -12, 22, -22, 32, -32)]


def _place_labels(ax, texts: list, bars: list[tuple[float, float, float]]) -> None:
    """Put each label where it covers the least of the other labels, the dots, the error bars and the legend.

    ``bars``: each dot's (x, low, high) in data coordinates, in the order of ``texts``. Greedy, the most crowded dot
    first, then two more passes that move each label given all the others. A spot's cost is the area it covers
    (labels weigh most, then dots, then bars), a fixed price for each dot or bar it cuts at all (a thin bar under a
    label reads as part of another model's figure; its own, centred under it, is hidden), a large one outside the
    axes, each dot, bar, label or leader line its own leader line crosses, and a little for distance, so that a label
    with room stays beside its dot. (adjustText would add a dependency for one picture, and pushes labels apart
    without knowing the error bars.)"""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72  # pixels a point
    frame = ax.get_window_extent(renderer)
    dots = [ax.transData.transform(t.xy) for t in texts]
    obstacles = [(Bbox.from_extents(x - 5 * px, y - 5 * px, x + 5 * px, y + 5 * px), 2.0) for x, y in dots]
    for x, low, high in bars:
        (bx, by0), (_, by1) = ax.transData.transform([(x, low), (x, high)])
        obstacles.append((Bbox.from_extents(bx - 3 * px, by0, bx + 3 * px, by1), 1.0))  # the bar and its caps
    legend = ax.get_legend()
    if legend is not None:
        obstacles.append((legend.get_window_extent(renderer), 2.0))
    sizes = [Text.get_window_extent(t, renderer).size for t in texts]  # the text alone: an Annotation's own adds its line

    def box_at(i: int, spot: tuple[float, float]) -> Bbox:
        (w, h), (x, y), (dx, dy) = sizes[i], dots[i], spot
        x0 = x + dx * px - (w if dx < 0 else w / 2 if dx == 0 else 0)
        return Bbox.from_bounds(x0, y + dy * px - h / 2, w, h)

    def overlap(a: Bbox, b: Bbox) -> float:
        return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))

    def leader(i: int, box: Bbox) -> np.ndarray:
        """The leader line's two ends, roughly: the dot, and the nearest point of the label's box."""
        x, y = dots[i]
        return np.array([dots[i], (np.clip(x, box.x0, box.x1), np.clip(y, box.y0, box.y1))])

    def turn(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
        """+1 where r lies left of the line p -> q, -1 right of it, 0 on it."""
        return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    def cross(a: np.ndarray, b: np.ndarray) -> bool:
        """Whether segments a and b (two ends each) cross: each one's ends lie on either side of the other."""
        return turn(*a, b[0]) * turn(*a, b[1]) < 0 and turn(*b, a[0]) * turn(*b, a[1]) < 0

    def crossings(i: int, box: Bbox, placed: dict[int, Bbox]) -> int:
        """Other dots, bars, labels and leader lines that this label's leader line passes through."""
        ends = leader(i, box)
        line = np.linspace(*ends, 24)[2:]  # leaving its own dot
        own = {i, len(dots) + i}  # its dot, and its bar
        others = [b for k, (b, _) in enumerate(obstacles) if k not in own] + [b for j, b in placed.items() if j != i]
        hits = sum(any(b.x0 <= u <= b.x1 and b.y0 <= v <= b.y1 for u, v in line) for b in others)
        return hits + sum(cross(ends, leader(j, b)) for j, b in placed.items() if j != i)

    def cost(i: int, spot: tuple[float, float], placed: dict[int, Bbox]) -> float:
        box = box_at(i, spot)
        area = sum(weight * overlap(box, b) for b, weight in obstacles)
        area += 150.0 * sum(overlap(box, b) > 0 for b, _ in obstacles[: 2 * len(dots)])  # a dot or bar cut: misread
        area += sum(4.0 * overlap(box, b) for j, b in placed.items() if j != i)
        outside = box.width * box.height - overlap(box, frame)
        side = 4 if spot[0] < 0 else 8 if spot[0] == 0 else 0  # right of the dot reads first
        return area + 50.0 * outside + 100.0 * crossings(i, box, placed) + 3 * abs(spot[1]) + abs(spot[0]) + side

    crowd = [sum(np.hypot(*(d - e)) < 60 * px for e in dots) for d in dots]
    order = sorted(range(len(texts)), key=lambda i: -crowd[i])
    chosen: dict[int, tuple[float, float]] = {}
    placed: dict[int, Bbox] = {}
    for _ in range(3):
        for i in order:
            chosen[i] = min(SPOTS, key=lambda spot: cost(i, spot, placed))
            placed[i] = box_at(i, chosen[i])
    for i, text in enumerate(texts):
        dx, dy = chosen[i]
        text.set_position((dx, dy))
        text.set_horizontalalignment("left" if dx > 0 else "right" if dx < 0 else "center")


COSTS = {  # the x axes: key in a point -> (its unit, the axis label, the file)
    "gmacs": (1, "GMACs of one forward pass at the model's input size (log)", COST_PNG),
    "parameters": (1e6, "parameters, millions (log)", PARAMS_PNG),
}


def plot_accuracy_cost(points: list[dict], path: str | Path, cost: str = "gmacs") -> Path:
    """Accuracy against ``cost`` (a key of :data:`COSTS`; log scale), one labelled dot a model."""
    unit, xlabel, _ = COSTS[cost]
    fig, ax = plt.subplots(figsize=(7.4, 6.2))
    drawn = [p for p in points if p[cost]]
    texts, bars = [], []
    for p in drawn:
        x, y = p[cost] / unit, p["accuracy"]
        low, high = np.clip(p["ci95"], *CLIP) if p["ci95"] else (y, y)
        bars.append((x, low, high))
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
        ax.set_xlim(min(xs) / 2, max(xs) * 8)  # room for the labels on either side
    ax.set_yscale("logit")  # spreads the crowded top: 90%, 99% and 99.9% sit equally apart
    low = min([p["accuracy"] for p in points] + [p["ci95"][0] for p in points if p["ci95"]])
    ax.set_ylim(max(CLIP[0], low - 0.02), CLIP[1])
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(Y_TICKS))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:g}%"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
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
    _place_labels(ax, texts, bars)  # last: in the final frame, clear of the legend
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
