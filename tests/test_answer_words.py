"""What the page, the API and the MCP tool say about a flagged image and about a heatmap beside its outline, on
hand-made predictions (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from brainmri.app import display
from brainmri.app.comparison import verdict
from brainmri.app.summary import summary
from brainmri.app.tool import answer
from brainmri.ood import OODResult
from brainmri.segmentation import Outline
from brainmri.serving import Prediction
from brainmri.vocabulary import LOOKS_NOT_MRI, NOT_MRI, UNLIKE_TRAINING, UNLIKE_TRAINING_SHORT

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
SIDE = 20


def prediction(ood: OODResult | None = None, peak: tuple[int, int] = (5, 5), outline: Outline | None = None) -> Prediction:
    """A glioma answer on a grey SIDE x SIDE image, its heatmap peaking at ``peak`` (x, y)."""
    cam = np.zeros((SIDE, SIDE), np.float32)
    cam[peak[1], peak[0]] = 1.0
    p = dict(zip(CLASSES, [0.9, 0.05, 0.03, 0.02]))
    image = Image.new("RGB", (SIDE, SIDE), (90, 90, 90))
    return Prediction("m", image, p, "glioma", 0.97, ood, cam, "LayerCAM", 1.0, 5.0, outline=outline)


def flagged(*, colour: bool = False, far: bool = True, percentile: float | None = 99.0) -> OODResult:
    reasons = (["it is in colour"] if colour else []) + (["its features are far from every training class"] if far else [])
    return OODResult(False, reasons, 92.6 if far else 10.0, 84.2, 20.0 if colour else 0.0, 30.0, percentile=percentile)


def box_outline(x0: int, y0: int, x1: int, y1: int) -> Outline:
    mask = np.zeros((SIDE, SIDE), bool)
    mask[y0:y1, x0:x1] = True
    return Outline(mask, float(mask.mean()), (x0 / SIDE, y0 / SIDE, x1 / SIDE, y1 / SIDE))


def test_an_image_flagged_by_its_features_alone_is_called_unlike_the_training_slices_not_a_non_mri():
    result = prediction(flagged())
    assert result.ood.unfamiliar_only and result.prediction is None
    assert result.label_value() == UNLIKE_TRAINING and verdict(result) == UNLIKE_TRAINING_SHORT
    text = summary(result)
    assert f"This image is {UNLIKE_TRAINING}" in text and LOOKS_NOT_MRI not in text
    assert "99 in 100 validation slices" in text and "another slice of the scan may pass" in text


@pytest.mark.parametrize(("percentile", "said"), [(97.5, "97.5 in 100 validation slices"), (None, "another slice")])
def test_the_pass_rate_named_is_the_judges_own(percentile: float | None, said: str):
    text = summary(prediction(flagged(percentile=percentile)))
    assert said in text and ("in 100 validation slices" in text) == (percentile is not None)


@pytest.mark.parametrize("far", [True, False])
def test_a_picture_that_fails_its_own_measures_does_not_look_like_a_brain_mri(far: bool):
    result = prediction(flagged(colour=True, far=far))
    assert not result.ood.unfamiliar_only
    assert result.label_value() == LOOKS_NOT_MRI and verdict(result) == NOT_MRI
    assert f"This image {LOOKS_NOT_MRI}" in summary(result) and UNLIKE_TRAINING not in summary(result)


def test_no_heatmap_picture_for_a_flagged_image_through_the_tool():
    assert answer(prediction(flagged()), "", images=True)["heatmap_png"] is None
    shown = answer(prediction(), "", images=True)["heatmap_png"]
    assert shown.startswith("data:image/png;base64,")


def test_the_outline_note_says_when_the_heatmap_peaks_outside_the_outline():
    inside = prediction(peak=(5, 5), outline=box_outline(2, 2, 9, 9))
    outside = prediction(peak=(15, 15), outline=box_outline(2, 2, 9, 9))
    assert inside.cam_in_tumour is True and outside.cam_in_tumour is False
    assert "outside it" not in display.outline_note(inside)
    assert "brightest spot lies outside it" in display.outline_note(outside)
    assert "outside it" not in display.outline_note(prediction(flagged(), peak=(15, 15), outline=box_outline(2, 2, 9, 9)))


def test_an_empty_outline_has_no_heatmap_peak_inside_or_outside():
    empty = Outline(np.zeros((SIDE, SIDE), bool), 0.0, None)
    result = prediction(outline=empty)
    assert result.cam_in_tumour is None and result.details()["cam_in_tumour"] is None
    assert "No tumour outlined" in display.outline_note(result)


def test_gradio_reads_every_argument_of_the_tool_description_whole():
    from gradio.utils import get_function_description

    from brainmri.app.tool import tool_description

    def analyse_slice(image: str, model: str | None = None, images: bool = False) -> str:
        return ""

    disclaimer = "For research and education only. Not a medical device; not for diagnosis. Not a radiologist."
    analyse_slice.__doc__ = tool_description("ensemble_x", ["ensemble_x", "model_a", "model_b"], disclaimer)
    description, arguments, returns = get_function_description(analyse_slice)
    assert description.startswith("Classify one brain MRI slice") and disclaimer in description
    assert arguments["model"] == "leave empty for the app's default (ensemble_x); or one of: model_a, model_b."
    assert arguments["image"].endswith("an http(s) URL that this server can fetch.") and "data: URL" in arguments["image"]
    assert arguments["images"].startswith("true to also return") and len(returns) == 1
    assert "prediction_words" in returns[0] and returns[0].endswith("heatmap_png and tumour_mask_png too.")  # read whole
    assert "(JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM)" in arguments["image"]
