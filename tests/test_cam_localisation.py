"""The pointing game's parts: boxes in the image frame, the held-out halves, and a score that can fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainmri.settings import default_data
from reports.cam_localisation import Box, boxes_beside, halves, load_boxes

DEFAULT_BOXES = boxes_beside(default_data())  # where the CLI looks without --boxes


def test_a_box_holds_points_and_pixel_centres_in_the_image_frame():
    box = Box(0.25, 0.5, 0.5, 1.0)  # x from a quarter to a half, the lower half
    assert box.holds(0.3, 0.75) and not box.holds(0.75, 0.75) and not box.holds(0.3, 0.25)
    rows, cols = box.pixels(8, 4)  # pixel centres at (i + 0.5) / size
    mask = np.zeros((4, 8), dtype=bool)
    mask[rows, cols] = True
    assert mask.sum() == 2 * 2 and mask[2:, 2:4].all()  # columns 2-3 (centres 0.3125, 0.4375), rows 2-3


def test_halves_are_seeded_disjoint_and_cover_everything():
    items = list(range(101))
    a, b = halves(items, seed=0), halves(items, seed=0)
    assert a == b and sorted(a["choose"] + a["report"]) == items and not set(a["choose"]) & set(a["report"])
    assert halves(items, seed=1) != a


def test_the_shared_boxes_cover_training_tumours_only():
    if not Path(DEFAULT_BOXES).is_file():
        pytest.fail(f"the boxes are missing at {DEFAULT_BOXES}")
    boxes = load_boxes(DEFAULT_BOXES)
    assert len(boxes) == 3962 and all(p.startswith("Training/") and "/notumor/" not in p for p in boxes)
    assert all(0 <= b.x0 < b.x1 <= 1 and 0 <= b.y0 < b.y1 <= 1 for b in boxes.values())


def test_heatmaps_are_scored_against_the_tumours_own_mask_where_it_has_one(data_dir):
    import csv

    from reports.cam_localisation import tumour_mask

    with open(f"{data_dir}-masks/masks.csv", newline="") as f:
        row = next(csv.DictReader(f))
    mask = tumour_mask((data_dir / row["path"]).resolve(), (224, 224))
    assert mask.dtype == bool and mask.sum() == int(row["mask_pixels"])
    assert tumour_mask((data_dir / "Testing" / "glioma").resolve() / "no_such.jpg", (224, 224)) is None


def test_a_layer_path_with_plus_signs_fuses_the_stages_after_the_first(tiny_checkpoint):
    from brainmri.models.catalog import ModelSource
    from brainmri.serving import Predictor
    from reports.cam_localisation import with_layer

    predictor = Predictor({"simple_cnn_7": ModelSource("simple_cnn_7", "local", str(tiny_checkpoint))}, ood_model=None)
    with_layer(predictor, "simple_cnn_7", "features.6+features.3+features.1")
    loaded = predictor.model("simple_cnn_7")
    assert loaded.cam_layer_name("LayerCAM") == "features.6+features.3+features.1"
    assert loaded.cam_layer_name("Grad-CAM") == "features.6"  # a single-layer method weighs the first alone
    with pytest.raises(ValueError, match="'features.99'"):
        with_layer(predictor, "simple_cnn_7", "features.6+features.99")


def test_a_sweep_of_stages_shows_the_report_half_of_the_served_setting_only():
    from reports.cam_localisation import stages_markdown

    def run(layer: str, choose: float, served: bool) -> dict:
        half = {"n": 200, "hit": choose, "mass": 0.07}
        return {"model": "m", "layer": layer, "method": "LayerCAM", "served": served, "choose": half, "report": {**half, "hit": 0.123}}

    table = stages_markdown({"runs": [run("net.bn2+net.blocks.4", 0.40, False), run("net.bn2+net.blocks.1", 0.45, True)]})
    rows = table.splitlines()[2:]
    assert rows[0].startswith("| `m` | bn2 + blocks.1 | LayerCAM | 45.0% (90 / 200) |") and "**12.3%** (200), served" in rows[0]
    assert "bn2 + blocks.4" in rows[1] and "12.3%" not in rows[1]  # best choose half first; no report half for the rest


def test_a_heatmap_size_of_its_own_takes_a_second_transform_and_the_input_size_none(tiny_checkpoint):
    from brainmri.models.catalog import ModelSource
    from brainmri.serving import Predictor
    from reports.cam_localisation import with_cam_size, with_layer

    predictor = Predictor({"simple_cnn_7": ModelSource("simple_cnn_7", "local", str(tiny_checkpoint))}, ood_model=None)
    loaded = predictor.model("simple_cnn_7")
    side = loaded.cfg["input_size"][-1]
    with_cam_size(predictor, "simple_cnn_7", side * 3 // 2)
    assert loaded.cam_transform is not None and loaded.twin is not None  # a pass of its own, at 1.5x
    with_cam_size(predictor, "simple_cnn_7", side)
    assert loaded.cam_transform is None and loaded.twin is None  # at the input size the heatmap's forward also classifies
    with_layer(predictor, "simple_cnn_7", "features.6+features.3")
    with_cam_size(predictor, "simple_cnn_7", side * 2)
    assert loaded.cam_layer_name("LayerCAM") == "features.6+features.3"  # a new size keeps the sweep's layers


def test_a_layer_list_names_the_module_its_layers_share_unless_only_a_numbered_container():
    from brainmri.explain import shared_parent

    assert shared_parent("net.classifier.bn2+net.classifier.blocks.3") == ("net.classifier", ["bn2", "blocks.3"])
    assert shared_parent("net.blocks.5+net.blocks.3") == ("net", ["blocks.5", "blocks.3"])
    assert shared_parent("features.10+features.11") == ("", ["features.10", "features.11"])
    assert shared_parent("net.classifier.bn2") == ("", ["net.classifier.bn2"])


def test_a_sweep_ranks_each_model_and_method_apart_and_a_tie_goes_to_fewer_stages():
    from reports.cam_localisation import stages_markdown

    def run(model: str, layer: str, hit: float) -> dict:
        half = {"n": 100, "hit": hit, "mass": 0.07}
        return {"model": model, "layer": layer, "method": "LayerCAM", "served": False, "choose": half, "report": half}

    runs = [run("b", "bn2+blocks.1", 0.9), run("a", "bn2+blocks.5+blocks.1", 0.5), run("a", "bn2+blocks.1", 0.5), run("a", "bn2", 0.4)]
    rows = [row.split(" | ")[:2] for row in stages_markdown({"runs": runs}).splitlines()[2:]]
    assert rows == [["| `a`", "bn2 + blocks.1"], ["| `a`", "bn2 + blocks.5 + blocks.1"], ["| `a`", "bn2"], ["| `b`", "bn2 + blocks.1"]]


def test_each_model_is_scored_at_its_own_heatmap_size_and_only_the_registry_setting_counts_as_served(monkeypatch):
    from shipped import require_shipped

    import reports.cam_localisation as cl

    sources = require_shipped()
    if not sources["multitask_lite0"].available:
        pytest.fail("checkpoints/multitask_lite0 is missing")
    box = Box(0.4, 0.4, 0.6, 0.6)
    monkeypatch.setattr(cl, "load_boxes", lambda _path: {})
    monkeypatch.setattr(cl, "boxed_validation", lambda *_args: [(Path(f"{i}.jpg"), "glioma", box) for i in range(4)])
    sizes = []

    def score(predictor, name: str, method: str, items: list) -> dict:
        sizes.append(predictor.model(name).cam_size or predictor.model(name).cfg["input_size"][-1])  # as the pass runs
        return dict.fromkeys(cl.KEYS, 0.5)

    monkeypatch.setattr(cl, "score", score)
    runs = cl.run("data", Path("boxes.csv"), ["tf_efficientnet_lite0", "multitask_lite0"], [None], ["LayerCAM"])["runs"]
    assert [(r["model"], r["cam_size"], r["served"]) for r in runs] == [
        ("tf_efficientnet_lite0", 288, True),
        ("multitask_lite0", 224, True),
    ]
    assert sizes == [288, 288, 224, 224]  # each model's heatmap at its own size, not the one before's
    runs = cl.run("data", Path("boxes.csv"), ["tf_efficientnet_lite0"], [None, "bn2"], ["LayerCAM", "Grad-CAM"])["runs"]
    assert [(r["layer"], r["method"], r["served"]) for r in runs] == [
        ("bn2+blocks.4+blocks.2", "LayerCAM", True),
        ("bn2", "Grad-CAM", True),  # the registry's setting, weighed by a single-layer method
        ("bn2", "LayerCAM", False),  # a layer of the sweep's own choosing
        ("bn2", "Grad-CAM", False),
    ]
    runs = cl.run("data", Path("boxes.csv"), ["tf_efficientnet_lite0"], [None], ["LayerCAM"], cam_size=192)["runs"]
    assert (runs[0]["cam_size"], runs[0]["served"]) == (192, False)  # a size of the sweep's own choosing


def test_the_heatmap_docs_tables_are_what_the_committed_results_give():
    import json

    from reports.cam_localisation import HEATMAPS_DOC, ROOT, doc_sections

    text = HEATMAPS_DOC.read_text()
    for out, boxes, stages in (("results/cam_localisation.json", True, False), ("results/cam_localisation_stages.json", False, True)):
        report = json.loads((ROOT / out).read_text())
        for (start, end), note, markdown in doc_sections(report, Path(out), boxes, stages):
            shown = text.split(start)[1].split(end)[0]
            assert shown == f"\n{note}\n\n{markdown}", f"{start} in docs/heatmaps.md is stale: rerun its command"


def test_a_sweep_written_into_the_docs_may_not_replace_the_figures_the_app_shows(capsys):
    import os

    from brainmri.models.checkpoint import CAM_LOCALISATION, results_dir
    from reports.cam_localisation import main

    with pytest.raises(SystemExit):  # the path as typed, relative to where the command runs
        main(["--docs-stages", "--out", os.path.relpath(results_dir() / CAM_LOCALISATION), "--layers", "bn2"])
    assert "--docs-stages needs an --out of its own" in capsys.readouterr().err
