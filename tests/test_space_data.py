"""A Space without the data folder: the shipped examples are few unseen Testing slices with their source, and the Data
tab shows what ``python -m reports.data_summary`` precomputed into results/, which that command reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES

from brainmri.app import dataview
from brainmri.data.duplicates import thumbnails, unseen_indices
from brainmri.data.records import ImageRecords, load_records
from brainmri.models.checkpoint import results_dir
from brainmri.models.registry import create_model
from brainmri.vocabulary import class_words
from reports import data_summary


@pytest.mark.slow  # thumbnails of all 5,708 Training images
def test_the_examples_are_at_most_two_unseen_testing_slices_per_class(data_dir: Path):
    shipped = dataview.shipped_examples()
    assert len(shipped) <= 8 and sorted({c for _, c in shipped}) == CLASSES
    assert all(sum(c == name for _, c in shipped) <= 2 for name in CLASSES)
    readme = (dataview.EXAMPLES_DIR / "README.md").read_text()
    assert "CC0" in readme and "CC BY 4.0" in readme and "Cheng" in readme
    for path, label in shipped:  # each is a Testing file of its class, byte for byte, named in the README
        (source,) = [line.split("`")[3] for line in readme.splitlines() if line.startswith(f"| `{path.name}`")]
        assert source.startswith(f"{label}/") and (data_dir / "Testing" / source).read_bytes() == path.read_bytes()
    examples = ImageRecords([str(p) for p, _ in shipped], np.array([CLASSES.index(c) for _, c in shipped]), CLASSES)
    train = load_records(data_dir, "train")
    assert list(unseen_indices(thumbnails(examples), thumbnails(train))) == list(range(len(shipped)))  # no twin in Training


def test_the_precomputed_counts_are_the_data_folders(data_dir: Path):
    counts, grid, audit = dataview.precomputed()
    assert counts == dataview.class_counts(data_dir)
    assert grid.stat().st_size < 200_000  # a small picture, not a copy of the data
    assert audit["test_unseen"] == sum(audit["test_unseen_per_class"].values()) and audit["test_with_mirrored_twin_in_train_only"] > 0


def test_without_a_data_folder_the_tabs_show_the_precomputed_files(tmp_path: Path):
    missing = str(tmp_path / "no-data")
    assert dataview.local_root(missing) is None and dataview.examples_are_local(missing)
    examples = dataview.example_images(missing)
    assert [c for _, c in examples] == [c for _, c in dataview.shipped_examples()] and all(Path(p).is_file() for p, _ in examples)
    note, counts, samples, steps, words = view = dataview.overview(
        missing, create_model("simple_cnn_7", num_classes=4).eval(), "simple_cnn_7"
    )
    assert "precomputed" in note and "/" not in note.replace("python -m reports.data_summary", "")  # no server path
    assert [row["class"] for row in counts] == [*map(class_words, CLASSES), "all"]  # as a reader says them: "no tumour"
    assert [c for _, c in samples] == [class_words(c) for c in CLASSES for _ in range(2)] and samples[0][0].size == (112, 112)
    assert steps[0][1].startswith("decoded") and steps[-1][1].startswith("normalised") and "1. resize to" in words
    assert view.steps is steps and view.words is words  # named, not a bare tuple
    text = dataview.audit_text(missing)
    assert "Testing images** have a near-identical copy in Training" in text and "more only once mirrored left-right" in text
    assert "218 glioma" in text and "Precomputed" in text


def test_without_data_or_precomputed_files_the_audit_says_what_is_missing(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(dataview, "precomputed", lambda results=None: None)
    with pytest.raises(ValueError, match="no data folder and no precomputed audit"):
        dataview.audit_text(str(tmp_path / "no-data"))


@pytest.mark.slow
def test_the_command_reproduces_the_committed_files(data_dir: Path, tmp_path: Path):
    """python -m reports.data_summary, into a temporary folder: the same counts, audit and examples as committed (~30 s)."""
    results, examples = tmp_path / "results", tmp_path / "examples"
    assert data_summary.main(["--data", str(data_dir), "--results", str(results), "--examples", str(examples)]) == 0
    for name in (dataview.COUNTS_JSON, dataview.AUDIT_JSON):
        assert json.loads((results / name).read_text()) == json.loads((results_dir() / name).read_text())
    assert {p.name: p.read_bytes() for p in examples.iterdir()} == {p.name: p.read_bytes() for p in dataview.EXAMPLES_DIR.iterdir()}
