"""The Compare tab's rows, ensemble and verdict, on hand-made predictions (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from brainmri.app.comparison import ENSEMBLE, agreement, comparison_rows, ensemble_row
from brainmri.ood import OODResult
from brainmri.serving import Prediction
from brainmri.vocabulary import NOT_MRI, class_words

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def prediction(model: str, probs: list[float], in_distribution: bool = True) -> Prediction:
    p = dict(zip(CLASSES, probs))
    ood = OODResult(in_distribution, [] if in_distribution else ["in colour"], None, None, 0.0, 1.0)
    return Prediction(
        model, Image.new("RGB", (8, 8)), p, max(p, key=p.get), 1 - p["notumor"], ood, np.zeros((8, 8), np.float32), "Grad-CAM", 1.0, 5.0
    )


def test_ensemble_is_the_mean_of_the_in_distribution_models():
    a = prediction("a", [0.7, 0.1, 0.1, 0.1])
    b = prediction("b", [0.1, 0.5, 0.3, 0.1])
    flagged = prediction("c", [0.0, 0.0, 0.0, 1.0], in_distribution=False)  # left out of the mean
    row = ensemble_row([a, b, flagged], CLASSES)
    assert row["model"] == ENSEMBLE and row["prediction"] == "glioma"
    assert [row[f"P({class_words(c)})"] for c in CLASSES] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert "P(no tumour)" in row and "P(notumor)" not in row  # the columns in words, as Classify's bars
    assert row["tumour prob"] == pytest.approx(0.8)
    assert ensemble_row([flagged], CLASSES) == {"model": ENSEMBLE, "prediction": NOT_MRI}


def test_rows_and_agreement():
    a, b = prediction("a", [0.7, 0.1, 0.1, 0.1]), prediction("b", [0.1, 0.5, 0.3, 0.1])
    assert [r["model"] for r in comparison_rows([a])] == ["a"]  # no ensemble of one
    rows = comparison_rows([a, b])
    assert [r["model"] for r in rows] == [ENSEMBLE, "a", "b"] and rows[1]["looks like MRI"] is True
    assert agreement([a]) == "Only one model is available: nothing to compare."
    assert agreement([a, prediction("c", [0.6, 0.2, 0.1, 0.1])]) == "**All 2 models agree: glioma.**"
    assert agreement([a, b]) == "**The models disagree**: glioma (1): a; meningioma (1): b."
    flagged = prediction("c", [0.9, 0.0, 0.1, 0.0], in_distribution=False)
    assert "not a brain MRI (1): c" in agreement([a, flagged])
    row = comparison_rows([a, flagged])[2]  # no probabilities over what is not a brain MRI: blank, as the ensemble's
    assert row["prediction"] == NOT_MRI and row["tumour prob"] is None and not [k for k in row if k.startswith("P(")]
    assert row["looks like MRI"] is False and list(comparison_rows([a, flagged])[1])[:3] == list(row)[:3]
    d, e = prediction("d", [0.1, 0.1, 0.7, 0.1]), prediction("e", [0.8, 0.1, 0.05, 0.05])  # grouped, most common first
    assert agreement([a, d, e]) == "**2 of 3 models say glioma**; the other differs (no tumour: d)."  # a majority, counted
    assert agreement([a, d, e, b]) == "**The models disagree**: glioma (2): a, e; no tumour (1): d; meningioma (1): b."
    assert agreement([d, prediction("f", [0.2, 0.1, 0.6, 0.1])]) == "**All 2 models agree: no tumour.**"  # words, not "notumor"


def test_the_ensemble_row_says_what_it_is_and_what_was_measured(tmp_path):
    import json

    from brainmri.app.comparison import ENSEMBLE_METRICS_JSON, scored_ensemble_note

    scored = json.loads(ENSEMBLE_METRICS_JSON.read_text())
    note = scored_ensemble_note()
    assert f"{scored['test']['accuracy']:.2%} (n=1311)" in note and scored["members"][0]["name"] in note
    assert "averages the ticked models" in note
    assert scored_ensemble_note(tmp_path / "none.json").endswith("No ensemble has been scored on Testing yet.")


def test_the_scored_ensemble_scores_the_weights_shipped_today():
    """Its members' temperatures are the shipped folders' own: a retrained member makes the scores stale (they were,
    from the mirror-aware retrains until 2026-12-07), and the tab would show another ensemble's figures."""
    import json

    from brainmri.app.comparison import ENSEMBLE_METRICS_JSON

    for member in json.loads(ENSEMBLE_METRICS_JSON.read_text())["members"]:
        shipped = json.loads((ROOT / member["folder"] / "calibration.json").read_text())["temperature"]
        assert member["temperature"] == pytest.approx(shipped, abs=1e-6), f"{member['name']}: rerun the command in docs/trust.md"


def test_results_of_another_image_are_stale_and_of_the_same_pixels_are_not():
    from brainmri.app.comparison import NOTHING_TO_COMPARE, STALE, stale_message
    from brainmri.data.imageio import pixel_key

    grey = Image.new("L", (32, 32), 90)
    key = pixel_key(grey)
    assert pixel_key(Image.new("L", (32, 32), 90)) == key  # the same file uploaded again: its results still hold
    assert stale_message(grey, None) is None  # nothing compared: nothing to clear
    assert stale_message(grey, key) is None
    assert stale_message(Image.new("L", (32, 32), 91), key) == STALE  # one pixel value apart
    assert stale_message(Image.new("L", (32, 33), 90), key) == STALE
    assert stale_message(grey.convert("RGB"), key) == STALE
    assert stale_message(None, key) == NOTHING_TO_COMPARE  # the session expired


def test_the_table_keeps_every_row_blank_probabilities_and_the_models_name_on_the_left():
    from brainmri.app.display import html_table, percent_cells

    a = prediction("tf_efficientnet_lite0", [0.7, 0.1, 0.1, 0.1])
    flagged = prediction("simple_cnn_<7>", [0.0, 0.0, 0.0, 1.0], in_distribution=False)
    table = html_table(percent_cells(comparison_rows([a, flagged])))
    rows = table.split("<tr>")[2:]  # after the header's row
    assert len(rows) == 3 and ENSEMBLE in rows[0] and "tf_<wbr>efficientnet_<wbr>lite0" in rows[1]  # breaks at "_"
    assert "simple_<wbr>cnn_<wbr>&lt;7&gt;" in rows[2] and "<7>" not in table  # escaped
    assert rows[1].count("<td>") == rows[2].count("<td>") == table.split("<tr>")[1].count("<th") - 1  # one cell a column
    assert "70.0%" in rows[1] and "%" not in rows[2].split("</th>")[1]  # a flagged image: blank probabilities
    assert rows[1].endswith("<td>yes</td></tr>") and "<td>no</td>" in rows[2]  # looks like MRI, in words
    assert '<th scope="row">' in rows[1] and html_table([]) == ""
    assert '<th scope="row"></th>' in html_table([{"a": float("nan")}])  # not measured: blank, not "nan"


def test_compare_times_a_models_pass_after_its_first():
    """A model's first pass with a method pays its warm-up: the latency shown is a later pass's, once per pair."""
    from types import SimpleNamespace

    from brainmri.app.compare_tab import steady_prediction

    calls = []
    fake = SimpleNamespace(predict=lambda image, name, method, outline: calls.append((name, method)) or len(calls))
    warmed: set = set()
    assert steady_prediction(fake, warmed, None, "m", "Grad-CAM") == 2  # the second pass is the one kept
    assert steady_prediction(fake, warmed, None, "m", "Grad-CAM") == 3  # warmed: one pass
    assert steady_prediction(fake, warmed, None, "m", "LayerCAM") == 5  # another method warms again
    assert warmed == {("m", "Grad-CAM"), ("m", "LayerCAM")}


def test_the_table_takes_odd_cells_and_columns():
    from brainmri.app.display import html_table

    assert html_table([{}]) == "" and html_table([{"a": 1}], columns=[]) == ""  # nothing to show: no table
    table = html_table([{"m": "x", 3: np.bool_(True), "big": 15_000_000.0, "small": 0.00541}])
    assert '<th scope="col">3</th>' in table and "<td>yes</td>" in table  # a column named by a number; numpy's bool
    assert "<td>15000000</td>" in table and "<td>0.0054</td>" in table  # no exponent, 4 decimals at most
