"""The app's default answers as an ensemble (registry ``ENSEMBLES``): the mean of Lite0's calibrated probabilities and
the one encoder's class head, whose forward draws the outline anyway; Lite0's heatmap explains the mean's class, on
either path (passes side by side, or one after another), and for an explainer without a second input size too."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from shipped import require_shipped

from brainmri.data.imageio import load_image
from brainmri.explain import cam_to_image_size, gradcam_batch
from brainmri.models import registry
from brainmri.models.catalog import ENSEMBLE, ModelSource, labelled_choices, model_label
from brainmri.models.registry import APP_DEFAULT, DEFAULT_CLASSIFIER, ENSEMBLES, EnsembleSpec
from brainmri.serving import Predictor
from brainmri.serving import predictor as front_door
from brainmri.serving.segment import SecondOpinion, segment_and_classify

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))
SPEC = ENSEMBLES[APP_DEFAULT]


@pytest.fixture(scope="module")
def pair() -> tuple[Predictor, Predictor]:
    sources = require_shipped()
    return Predictor(sources, overlap=True), Predictor(sources, overlap=False)


def test_the_default_is_the_ensemble_of_the_classifier_and_the_segmenter(pair):
    served = pair[0]
    assert served.default_model == APP_DEFAULT and SPEC.explainer == DEFAULT_CLASSIFIER
    assert served.segmenter == SPEC.outliner and served.sources[APP_DEFAULT].where == ENSEMBLE
    assert served.ood_model == DEFAULT_CLASSIFIER  # the explainer's statistics judge every upload
    assert served.model(APP_DEFAULT) is served.model(DEFAULT_CLASSIFIER)  # its heatmap's model, loaded once


@pytest.mark.parametrize("side_by_side", [True, False])
def test_the_answer_is_the_mean_of_both_members(pair, monkeypatch, side_by_side: bool):
    monkeypatch.setattr(front_door, "spare_core", lambda *_: side_by_side)
    served = pair[0]
    for path in EXAMPLES[::2]:
        image = load_image(path)
        result, alone = served.predict(image), served.predict(image, DEFAULT_CLASSIFIER)
        outlines, second = segment_and_classify(served.segmentation_model(), [image])
        mean = (np.array(list(alone.probabilities.values())) + second[0].numpy()) / 2
        assert list(result.probabilities.values()) == pytest.approx(mean.tolist(), abs=1e-5)
        assert result.top_class == list(result.probabilities)[int(mean.argmax())]
        details = result.details()
        assert details["model"] == APP_DEFAULT and details["heatmap_by"] == DEFAULT_CLASSIFIER
        assert details["outlined_by"] == SPEC.outliner and np.array_equal(result.outline.mask, outlines[0].mask)


def _second_opinion_on(label_index: int):
    """A segment_and_classify whose class head is sure of one class: the mean then answers it whatever Lite0 says."""

    def sure(segmenter, images):
        outlines, probs = segment_and_classify(segmenter, images)
        return SecondOpinion(outlines, torch.nn.functional.one_hot(torch.full((len(images),), label_index), probs.shape[1]).float())

    return sure


@pytest.mark.parametrize("side_by_side", [True, False])
def test_the_heatmap_explains_the_answered_class_not_the_classifiers_own(pair, monkeypatch, side_by_side: bool):
    monkeypatch.setattr(front_door, "spare_core", lambda *_: side_by_side)
    served = pair[0] if side_by_side else pair[1]
    image = load_image(EXAMPLES[0])
    own = served.predict(image, DEFAULT_CLASSIFIER)
    labels = list(own.probabilities)
    other = next(i for i, c in enumerate(labels) if c != own.top_class)
    monkeypatch.setattr(front_door, "segment_and_classify", _second_opinion_on(other))
    result = served.predict(image)
    assert result.top_class == labels[other] != own.top_class  # the mean overruled the classifier ...
    loaded = served.model(DEFAULT_CLASSIFIER)
    x_cam = loaded.cam_transform(image)[None]
    with loaded.lock:
        expected = gradcam_batch(loaded.model, loaded.cam_layers(result.cam_method), x_cam, result.cam_method, [other])[0][0]
    np.testing.assert_allclose(result.cam, cam_to_image_size(expected, image.size, loaded.cfg), atol=1e-4)  # ... and is explained
    assert np.abs(result.cam - own.cam).mean() > 0.01


@pytest.mark.parametrize("side_by_side", [True, False])
def test_an_explainer_without_a_second_input_size_explains_the_answer_too(monkeypatch, side_by_side: bool):
    """A simple CNN's heatmap forward is its only forward: the answered class is read from its logits there."""
    monkeypatch.setattr(front_door, "spare_core", lambda *_: side_by_side)
    spec = EnsembleSpec("cnn_and_multitask", "simple_cnn_7", SPEC.outliner, "a test ensemble")
    monkeypatch.setitem(registry.ENSEMBLES, spec.name, spec)
    sources = {**require_shipped(), spec.name: ModelSource(spec.name, ENSEMBLE, "+".join(spec.members))}
    served = Predictor(sources, overlap=side_by_side)
    assert served.ensemble(spec.name) == spec
    image = load_image(EXAMPLES[1])
    own = served.predict(image, "simple_cnn_7")
    labels = list(own.probabilities)
    other = next(i for i, c in enumerate(labels) if c != own.top_class)
    monkeypatch.setattr(front_door, "segment_and_classify", _second_opinion_on(other))
    result = served.predict(image, spec.name)
    assert result.top_class == labels[other] and result.model == spec.name and result.heatmap_by == "simple_cnn_7"
    loaded = served.model("simple_cnn_7")
    x = loaded.transform(image)[None]
    with loaded.lock:
        expected = gradcam_batch(loaded.model, loaded.cam_layers(result.cam_method), x, result.cam_method, [other])[0][0]
    np.testing.assert_allclose(result.cam, cam_to_image_size(expected, image.size, loaded.cfg), atol=1e-4)


def test_compare_without_the_outline_still_answers_as_the_ensemble(pair):
    image = load_image(EXAMPLES[2])
    with_outline, without = pair[0].predict(image), pair[0].predict(image, outline=False)
    assert without.outline is None and without.details()["tumour_mask"] is None
    assert without.probabilities == pytest.approx(with_outline.probabilities, abs=1e-6)


def test_the_ensemble_needs_its_outliner_as_the_segmenter():
    sources = require_shipped()
    served = Predictor(sources, segmenter="unet_lite0")
    assert not served.sources[APP_DEFAULT].available and "outlines with unet_lite0" in served.unavailable[APP_DEFAULT]
    assert served.default_model == DEFAULT_CLASSIFIER
    with pytest.raises(ValueError, match="not available"):
        served.predict(load_image(EXAMPLES[0]), APP_DEFAULT)


def test_an_override_naming_the_ensemble_falls_back_to_its_classifier_without_the_segmenter(monkeypatch):
    monkeypatch.setenv("BRAIN_MRI_DEFAULT_MODEL", APP_DEFAULT)
    served = Predictor(require_shipped())
    assert served.default_model == APP_DEFAULT
    served.use_segmenter(None)  # as warm() does when the segmenter's weights cannot load
    assert served.default_model == DEFAULT_CLASSIFIER and "has no segmenter" in served.unavailable[APP_DEFAULT]
    assert served.predict(load_image(EXAMPLES[0])).model == DEFAULT_CLASSIFIER


def test_the_dropdown_lists_it_first_and_compare_lists_its_members_alone():
    sources = require_shipped()
    choices, singles = labelled_choices(sources), labelled_choices(sources, ensembles=False)
    assert choices[0][1] == APP_DEFAULT and choices[0][0].startswith("Ensemble · ")
    assert [n for _, n in singles] == [n for _, n in choices if n not in ENSEMBLES]
    assert set(SPEC.members) <= {n for _, n in singles}
    assert re.search(r"\(\d+\.\d%\)$", model_label(sources[APP_DEFAULT]))  # its figures file: results/<name>.json
