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


def test_a_damaged_metrics_file_is_shown_as_not_measured_and_named_in_the_log(tmp_path, caplog):
    from brainmri.models.catalog import validation_accuracy

    (tmp_path / "metrics.json").write_text('{"validation": {"accuracy": 0.9')  # cut short
    source = ModelSource("tf_efficientnet_lite0", "local", str(tmp_path))
    with caplog.at_level("WARNING", logger="brainmri.eval.tables"):
        assert model_label(source).endswith("(not measured)") and validation_accuracy(tmp_path) == -1.0
    assert f"cannot read {tmp_path / 'metrics.json'}" in caplog.text
    caplog.clear()
    empty = tmp_path / "none"
    empty.mkdir()
    assert validation_accuracy(empty) == -1.0 and not caplog.text  # a missing file is no news


def test_a_label_resolves_to_its_model_and_anything_else_passes_through():
    from brainmri.serving import Predictor

    predictor = Predictor(discover(hub=False), segmenter=None)
    for label, name in labelled_choices(predictor.sources):
        assert predictor.resolve(label) == predictor.resolve(label.rsplit(" (", 1)[0]) == predictor.resolve(name) == name
    assert predictor.resolve("") is None and predictor.resolve(None) is None
    assert predictor.resolve("no such model") == "no such model"  # fails later, with the list of names


def test_the_lists_note_says_how_many_slices_the_figures_are_over_and_how_many_are_glioma():
    from brainmri.models.catalog import LABEL_SCORE, label_score
    from brainmri.models.registry import DEFAULT_CLASSIFIER

    unseen = json.loads((checkpoint_dir() / DEFAULT_CLASSIFIER / "metrics.json").read_text())["test_unseen"]
    n, glioma = unseen["n"], unseen["per_class"]["glioma"]["n"]
    assert label_score(discover(hub=False)).endswith(
        f"on {n} unseen Testing slices (no exact, near or mirrored twin in Training), {glioma / n:.0%} of them glioma"
    )
    assert label_score({}) == LABEL_SCORE  # no figures to read: the plain note
