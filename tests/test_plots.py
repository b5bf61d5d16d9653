"""The comparison pictures (reports.plots): drawn from metrics.json, unseen Testing first, Testing where it is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.text import Text
from PIL import Image

from brainmri.models.registry import APP_DEFAULT, ENSEMBLES
from reports import plots

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def _checkpoint(root: Path, name: str, test: float, unseen: float | None) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    per_class = {c: {"recall": test - 0.01 * i, "n": 10 + i} for i, c in enumerate(CLASSES)}
    metrics = {
        "model": name,
        "parameters": 400_000,
        "input_size": 128,
        "test": {"accuracy": test, "accuracy_ci95": [test - 0.02, test + 0.01], "n": 1311, "per_class": per_class},
    }
    if unseen is not None:
        metrics["test_unseen"] = {"accuracy": unseen, "accuracy_ci95": [unseen - 0.05, 1.0], "n": 335, "per_class": per_class}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_the_pictures_show_unseen_first_and_fall_back_to_testing(tmp_path: Path):
    _checkpoint(tmp_path / "ck", "simple_cnn_7", 0.90, 0.85)
    _checkpoint(tmp_path / "ck", "simple_cnn_10", 0.93, None)  # before test_unseen was measured
    written = plots.write_plots(tmp_path / "ck", tmp_path / "out", results=tmp_path)  # no ensemble scored there
    assert [p.name for p in written] == [plots.COST_PNG, plots.PARAMS_PNG, plots.PER_CLASS_PNG, plots.POINTS_JSON]
    for png in written[:3]:
        with Image.open(png) as image:
            assert image.width > 500 and image.height > 200
    points = {p["model"]: p for p in json.loads(written[3].read_text())["models"]}
    assert (points["simple_cnn_7"]["split"], points["simple_cnn_7"]["accuracy"]) == ("test_unseen", 0.85)
    assert (points["simple_cnn_10"]["split"], points["simple_cnn_10"]["accuracy"]) == ("test", 0.93)
    assert 0 < points["simple_cnn_7"]["gmacs"] < points["simple_cnn_10"]["gmacs"] < 1  # three more convolutions
    assert points["simple_cnn_7"]["per_class"]["meningioma"] == 0.89
    assert points["simple_cnn_7"]["per_class_n"]["meningioma"] == 11  # a recall says over how many images
    assert plots._count(list(points.values()), "meningioma") == "n=11"


def test_the_committed_pictures_are_drawn_from_the_shipped_metrics():
    """results/plots.json (every number the committed pictures draw) is what the checkpoints say today: rerun
    ``python -m reports.plots`` after metrics.json changes."""
    committed = {p["model"]: p for p in json.loads((ROOT / "results" / plots.POINTS_JSON).read_text())["models"]}
    shipped = plots.model_points(ROOT / "checkpoints", count_macs=False)
    now = {p["model"]: p for p in shipped + plots.ensemble_points(shipped)}
    assert set(committed) == set(now)
    for name, point in now.items():
        for key in ("split", "accuracy", "ci95", "n", "per_class", "per_class_n", "parameters"):
            assert committed[name][key] == point[key], f"{name} {key}: rerun python -m reports.plots"
        assert committed[name]["gmacs"] > 0
    default = committed[APP_DEFAULT]  # the app's default is drawn, its compute its members' passes together
    assert default["group"] == "ensemble" and default["gmacs"] == pytest.approx(
        sum(committed[m]["gmacs"] for m in ENSEMBLES[APP_DEFAULT].members), abs=1e-3
    )


def _drawn_labels(monkeypatch) -> dict:
    """Filled when a picture is drawn: each label's text box (not its leader line), its dot and its error bar, in
    pixels, and the axes' frame, as ``_place_labels`` left them."""
    drawn = {}
    real = plots._place_labels

    def keep(ax, texts, bars):
        real(ax, texts, bars)
        renderer = ax.figure.canvas.get_renderer()
        drawn["boxes"] = [Text.get_window_extent(t, renderer) for t in texts]
        drawn["dots"] = [ax.transData.transform(t.xy) for t in texts]
        drawn["bars"] = [ax.transData.transform([(x, low), (x, high)]) for x, low, high in bars]
        drawn["frame"] = ax.get_window_extent(renderer)

    monkeypatch.setattr(plots, "_place_labels", keep)
    return drawn


def test_labels_keep_clear_of_each_other_and_stay_in_the_picture(tmp_path: Path, monkeypatch):
    """Five dots crowded at one cost and nearly one accuracy (as the Lites and the ensemble are): every label lands
    inside the axes, and no two labels overlap, where beside their dots all five would."""
    drawn = _drawn_labels(monkeypatch)
    points = [
        {"model": f"tf_efficientnet_lite{i}_long_name", "group": "efficientnet", "split": "test_unseen", "n": 335,
         "accuracy": 0.985 + 0.001 * i, "ci95": [0.97, 0.995], "gmacs": 0.5 + 0.02 * i}
        for i in range(5)
    ]  # fmt: skip
    plots.plot_accuracy_cost(points, tmp_path / "crowded.png")
    boxes, frame = drawn["boxes"], drawn["frame"]
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    overlaps = [(i, j) for i in range(5) for j in range(i + 1, 5) if boxes[i].overlaps(boxes[j])]
    assert not overlaps, f"labels {overlaps} overlap"


@pytest.mark.parametrize("cost", list(plots.COSTS))
def test_on_the_shipped_points_labels_cover_no_dot_or_label_and_few_bars(tmp_path: Path, monkeypatch, cost: str):
    """The committed pictures' own points (results/plots.json), drawn again: each label's text lies clear of every dot
    and of the other labels, and at most two labels lie across another model's error bar (a cost, not a rule: the
    crowded Lites leave some; before the fixed price for a cut bar there were 3 and 4)."""
    drawn = _drawn_labels(monkeypatch)
    points = json.loads((ROOT / "results" / plots.POINTS_JSON).read_text())["models"]
    plots.plot_accuracy_cost(points, tmp_path / "shipped.png", cost=cost)
    boxes, dots, bars = drawn["boxes"], drawn["dots"], drawn["bars"]
    names = [p["model"] for p in points if p[cost]]
    r = 5  # a dot's radius in pixels: ms=7 points across at 100 dpi
    covered = [
        (names[i], names[j], "dot") for i, box in enumerate(boxes) for j, (x, y) in enumerate(dots)
        if box.x0 - r <= x <= box.x1 + r and box.y0 - r <= y <= box.y1 + r
    ]  # fmt: skip
    covered += [(names[i], names[j], "label") for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert not covered, f"(label, model, what it covers): {covered}"
    cut = [
        (names[i], names[j]) for i, box in enumerate(boxes) for j, ((bx, y0), (_, y1)) in enumerate(bars)
        if j != i and box.x0 <= bx <= box.x1 and box.y0 < max(y0, y1) and min(y0, y1) < box.y1
    ]  # fmt: skip
    assert len(cut) <= 2, f"labels across another model's bar, (label, bar): {cut}; rerun python -m reports.plots and look"
