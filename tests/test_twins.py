"""Twins in either orientation (brainmri.data.duplicates), and the split and the unseen Testing subset built on them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_image
from PIL import Image

from brainmri.data.duplicates import mirrored, thumbnails, twin_pairs, unseen_indices
from brainmri.data.masks import figshare_ids, mask_table
from brainmri.data.records import ImageRecords, load_records, relative_path
from brainmri.data.split import training_split


def records_of(images: list[Image.Image], tmp_path: Path) -> ImageRecords:
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    return ImageRecords(paths, np.zeros(len(images), dtype=np.int64), ["glioma"])


def test_a_mirrored_copy_is_a_twin_and_no_image_is_its_own(tmp_path: Path):
    blob, other = synthetic_image(1), synthetic_image(2)
    flipped = blob.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    symmetric = Image.fromarray(np.concatenate([np.asarray(other)[:, :32], np.asarray(other)[:, :32][:, ::-1]], axis=1))
    thumbs = thumbnails(records_of([blob, other, flipped, symmetric], tmp_path))
    pairs = twin_pairs(thumbs)
    assert [(i, j, m) for i, j, _, m in pairs] == [(0, 2, True)]  # the symmetric slice lies on its own mirror image only
    assert twin_pairs(thumbs[:2], thumbs[2:3]) == [(0, 0, pytest.approx(0, abs=0.5), True)]
    assert np.array_equal(mirrored(mirrored(thumbs)), thumbs)
    assert list(unseen_indices(thumbs[:2], thumbs[2:3])) == [1]


def masks_rows(data_dir: Path) -> list[dict]:
    table = mask_table(data_dir)
    if not table:
        pytest.fail(f"the tumour masks are missing beside {data_dir} ({data_dir}-masks/masks.csv)")
    return list(table.values())


def test_a_real_mirrored_pair_from_the_figshare_matching_is_found(data_dir: Path, tmp_path: Path):
    """The masks' figshare matching (an independent source) names slices stored as is and mirrored: a twin pair."""
    rows = masks_rows(data_dir)
    by_scan: dict[str, dict[str, str]] = {}
    for r in rows:
        by_scan.setdefault(r["figshare_id"], {})[r["transform"]] = r["path"]
    plain, flipped = next((s["0"], s["4"]) for s in by_scan.values() if {"0", "4"} <= set(s))
    records = ImageRecords([str(data_dir / plain), str(data_dir / flipped)], np.zeros(2, dtype=np.int64), ["x"])
    (i, j, distance, is_mirrored), *rest = twin_pairs(thumbnails(records))
    assert (i, j, is_mirrored) == (0, 1, True) and distance <= 2.0 and not rest


def independent_twins(query: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """(N,) bool: a thumbnail of ``seen``, as is or mirrored, within 2 grey levels; written here with cdist."""
    flipped = seen.view(-1, 32, 32).flip(-1).reshape(len(seen), -1)
    return torch.stack([(torch.cdist(query, s, p=1) / query.shape[1] <= 2.0).any(dim=1) for s in (seen, flipped)]).any(dim=0)


@pytest.mark.slow
def test_the_split_keeps_mirrored_twins_and_figshare_scans_on_one_side(data_dir: Path):
    train, val = training_split(str(data_dir), 0.15, 0)
    assert not independent_twins(torch.from_numpy(thumbnails(val)), torch.from_numpy(thumbnails(train))).any()
    side = {relative_path(s, data_dir): "val" for s in val.sources} | {relative_path(s, data_dir): "train" for s in train.sources}
    scans: dict[str, set[str]] = {}
    for r in masks_rows(data_dir):
        scans.setdefault(r["figshare_id"], set()).add(side[r["path"]])
    assert sum(len(s) > 1 for s in scans.values()) == 0 and len(scans) == 2800
    assert len(figshare_ids(val, data_dir)) > 300  # the masked scans are on both sides, whole


@pytest.mark.slow
def test_unseen_testing_has_no_twin_in_training_in_either_orientation(data_dir: Path):
    train, test = load_records(data_dir, "train"), load_records(data_dir, "test")
    t_train, t_test = thumbnails(train), thumbnails(test)
    unseen = unseen_indices(t_test, t_train)
    twins = independent_twins(torch.from_numpy(t_test), torch.from_numpy(t_train))
    assert set(unseen.tolist()) == set(np.flatnonzero(~twins.numpy()).tolist()) and 300 <= len(unseen) <= 380


def test_the_masks_table_is_read_as_its_readme_says(data_dir: Path):
    with open(f"{data_dir}-masks/masks.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(masks_rows(data_dir)) == 3962


def test_a_data_folder_without_the_masks_table_is_said_to_group_by_pixels_only(tmp_path, caplog):
    """Without masks.csv beside the data the split cannot group a figshare slice's images by id: it says so."""
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "data", per_class=2, splits=("Training",))
    records = load_records(root, "train")
    with caplog.at_level("WARNING", logger="brainmri.data.masks"):
        assert figshare_ids(records, root) == {}
    assert "masks.csv" in caplog.text and "twins" in caplog.text
