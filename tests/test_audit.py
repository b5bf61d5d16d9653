"""The duplicate audit finds exactly the duplicates planted in a small synthetic folder, mirrored ones included."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from reports import audit as audit_cli


def plant_duplicates(root: Path) -> dict[str, Path]:
    """Exact copies (same bytes), near copies (JPEG re-encode, +-2 noise) and a mirrored copy, within and across splits."""
    tr, te = root / "Training", root / "Testing"
    planted = {
        "exact_train_train": tr / "glioma" / "copy_of_img_0.png",
        "exact_test_train": tr / "meningioma" / "from_testing.png",
        "exact_test_test": te / "notumor" / "copy_of_img_0.png",
        "near_test_train": te / "pituitary" / "reencoded.jpg",
        "near_test_test": te / "glioma" / "noisy.png",
        "mirrored_test_train": te / "notumor" / "mirrored.png",
        "hidden": te / "glioma" / ".ipynb_checkpoints" / "img_0-checkpoint.png",
    }
    shutil.copyfile(tr / "glioma" / "img_0.png", planted["exact_train_train"])
    shutil.copyfile(te / "meningioma" / "img_1.png", planted["exact_test_train"])
    shutil.copyfile(te / "notumor" / "img_0.png", planted["exact_test_test"])
    Image.open(tr / "pituitary" / "img_2.png").save(planted["near_test_train"], quality=90)
    pixels = np.asarray(Image.open(te / "glioma" / "img_2.png"), dtype=int)
    noise = np.random.default_rng(0).integers(-2, 3, pixels.shape)
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(planted["near_test_test"])
    Image.open(tr / "notumor" / "img_1.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(planted["mirrored_test_train"])
    planted["hidden"].parent.mkdir()
    shutil.copyfile(te / "glioma" / "img_0.png", planted["hidden"])
    return planted


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_audit_finds_exactly_the_planted_duplicates(tmp_path: Path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=3)
    planted = plant_duplicates(root)
    out = tmp_path / "audit"
    assert audit_cli.main([str(root), "--out", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary == {
        "train_images": 12 + 2,
        "test_images": 12 + 4,
        "exact_groups": 3,
        "exact_files": 6,
        "exact_groups_across_splits": 1,
        "test_with_exact_twin_in_train": 1,
        "near_pairs_train_train": 1,  # the exact copy (distance 0)
        "near_pairs_test_test": 2,  # the exact copy and the noisy one
        "test_with_near_twin_in_train": 2,  # the exact copy and the JPEG re-encode
        "test_with_mirrored_twin_in_train_only": 1,  # the mirror image
        "train_with_near_twin_in_train": 2,
        "train_with_mirrored_twin_in_train_only": 0,
        "test_unseen": 16 - 3,
        "test_unseen_per_class": {"glioma": 4, "meningioma": 2, "notumor": 4, "pituitary": 3},
        "near_threshold": 2.0,
        "exact_groups_mixing_labels": 0,
        "near_test_train_pairs_mixing_labels": 0,
        "hidden_files_skipped": 1,
    }
    printed = capsys.readouterr().out
    assert "exact_groups_across_splits" in printed and "test_unseen" in printed

    groups: dict[str, set[str]] = {}
    for row in read_csv(out / "exact_groups.csv"):
        groups.setdefault(row["group"], set()).add(Path(row["file"]).relative_to(root).as_posix())
    assert sorted(map(sorted, groups.values())) == sorted(
        [
            ["Training/glioma/copy_of_img_0.png", "Training/glioma/img_0.png"],
            ["Testing/meningioma/img_1.png", "Training/meningioma/from_testing.png"],
            ["Testing/notumor/copy_of_img_0.png", "Testing/notumor/img_0.png"],
        ]
    )

    pairs = {
        (r["kind"], *sorted(Path(r[k]).relative_to(root).as_posix() for k in ("file_a", "file_b")))
        for r in read_csv(out / "near_pairs.csv")
    }
    assert pairs == {
        ("train-train", "Training/glioma/copy_of_img_0.png", "Training/glioma/img_0.png"),
        ("test-test", "Testing/notumor/copy_of_img_0.png", "Testing/notumor/img_0.png"),
        ("test-test", "Testing/glioma/img_2.png", "Testing/glioma/noisy.png"),
        ("test-train", "Testing/meningioma/img_1.png", "Training/meningioma/from_testing.png"),
        ("test-train", "Testing/pituitary/reencoded.jpg", "Training/pituitary/img_2.png"),
        ("test-train", "Testing/notumor/mirrored.png", "Training/notumor/img_1.png"),
    }
    assert {r["file_a"].endswith("mirrored.png") for r in read_csv(out / "near_pairs.csv") if r["mirrored"] == "1"} == {True}

    clean = {Path(p).relative_to(root).as_posix() for p in (out / "test_unseen.txt").read_text().splitlines()}
    all_test = {p.relative_to(root).as_posix() for p in (root / "Testing").glob("*/*") if p.is_file()}
    assert clean == all_test - {"Testing/meningioma/img_1.png", "Testing/pituitary/reencoded.jpg", "Testing/notumor/mirrored.png"}
    assert planted["hidden"].relative_to(root).as_posix() not in clean


def test_distinct_images_are_not_duplicates(synthetic_data: Path, tmp_path: Path):
    summary = audit_cli.run_audit(synthetic_data, tmp_path / "audit")
    found = {k: v for k, v in summary.items() if k.startswith(("exact", "near_pairs", "test_with", "train_with", "hidden"))}
    assert set(found.values()) == {0}, found
    assert summary["test_unseen"] == summary["test_images"] == 12


def test_near_threshold_is_respected(tmp_path: Path):
    """A re-encode at JPEG quality 20 is about 3 grey levels away: near at threshold 5, not at the default 2."""
    root = make_image_folder(tmp_path / "data", per_class=2)
    buffer = io.BytesIO()
    Image.open(root / "Training" / "glioma" / "img_0.png").save(buffer, "JPEG", quality=20)
    (root / "Testing" / "glioma" / "rough.jpg").write_bytes(buffer.getvalue())
    assert audit_cli.run_audit(root, tmp_path / "a")["test_with_near_twin_in_train"] == 0
    assert audit_cli.run_audit(root, tmp_path / "b", threshold=5.0)["test_with_near_twin_in_train"] == 1


@pytest.mark.slow
def test_audit_reproduces_the_data_readme(data_dir: Path, tmp_path: Path):
    s = audit_cli.run_audit(data_dir, tmp_path)
    assert (s["train_images"], s["test_images"]) == (5708, 1311)
    assert s["exact_groups"] == 300 and s["exact_groups_across_splits"] == 189
    assert s["test_with_exact_twin_in_train"] == 216 and s["test_with_near_twin_in_train"] == 472
    # Mirrored twins: 504 more Testing images have one in Training, so 335 are unseen (the data README counts 336).
    assert s["test_with_mirrored_twin_in_train_only"] == 504 and s["test_unseen"] == 335
    assert s["test_unseen_per_class"] == {"glioma": 218, "meningioma": 17, "notumor": 19, "pituitary": 81}
    # The README counts 727 files in exact groups: one is the stray copy in a hidden folder, which loaders skip.
    assert s["exact_files"] == 726 and s["hidden_files_skipped"] == 1
    assert s["exact_groups_mixing_labels"] == 0
