"""The model dropdown: every shipped checkpoint, labelled with what it is and its unseen-Testing accuracy, grouped by family."""

from __future__ import annotations

import json

from brainmri.models.catalog import FAMILY_ORDER, ModelSource, discover, labelled_choices, model_label
from brainmri.models.registry import get_spec
from brainmri.models.segmenters import SEGMENTERS
from brainmri.settings import checkpoint_dir


def test_every_shipped_checkpoint_is_offered_grouped_by_family():
    root = checkpoint_dir()
    shipped = {
        p.name for p in root.iterdir() if (p / "config.json").is_file() and (p.name not in SEGMENTERS or SEGMENTERS[p.name].num_classes)
    }
    choices = labelled_choices(discover(hub=False), ensembles=False)  # the ensembles: tests/test_default_ensemble.py
    assert {name for _, name in choices} == shipped
    families = [get_spec(name).family for _, name in choices]
    assert families == sorted(families, key=FAMILY_ORDER.index)  # one block per family
    for label, name in choices:
        acc = json.loads((root / name / "metrics.json").read_text())["test_unseen"]["accuracy"]
        assert label.endswith(f"({100 * acc:.1f}%)") and get_spec(name).about in label


def test_a_model_without_local_metrics_says_so():
    label = model_label(ModelSource("efficientnet_b0", "hub", "brain-mri/efficientnet_b0"))
    assert label == "EfficientNet · B0 (not measured)"


def test_a_label_resolves_to_its_model_and_anything_else_passes_through():
    from brainmri.serving import Predictor

    predictor = Predictor(discover(hub=False), segmenter=None)
    for label, name in labelled_choices(predictor.sources):
        assert predictor.resolve(label) == predictor.resolve(label.rsplit(" (", 1)[0]) == predictor.resolve(name) == name
    assert predictor.resolve("") is None and predictor.resolve(None) is None
    assert predictor.resolve("no such model") == "no such model"  # fails later, with the list of names
