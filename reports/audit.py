"""Audit an image folder for exact, near and mirrored twins, within and across splits.

    python -m reports.audit ../shared/data/brain-tumor-mri --out runs/audit

Exact duplicates are byte-identical files (sha256); near duplicates lie within a mean
absolute difference of 2 grey levels as 32 x 32 greyscale, as is or once one of the two is
mirrored left-right (brainmri.data.duplicates). It prints the counts and writes to ``--out``:

    summary.json       the counts printed
    exact_groups.csv   group, split, label, file: one row per file of each byte-identical group
    near_pairs.csv     kind (train-train, test-test, test-train), distance, mirrored, file_a, label_a, file_b, label_b
    test_unseen.txt    Testing files with no exact, near or mirrored twin in Training, one per line

On the Brain Tumor MRI copy in ../shared it finds what the data's README reports: 300
exact groups, 189 of them across Training and Testing, 216 Testing images with an exact
copy in Training, 472 with a near twin as is and 504 more with a mirrored one only, so 335
unseen Testing images (218 glioma, 17 meningioma, 19 no tumour, 81 pituitary). It counts 726 files in
exact groups where the README counts 727: the 727th is the stray copy in the hidden folder
Testing/meningioma/.ipynb_checkpoints/, which loaders skip (the audit names such files).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

from brainmri.cli import exit_code, setup_logging
from brainmri.data.duplicates import NEAR_THRESHOLD, THUMB, Audit, audit
from brainmri.data.imageio import IMAGE_SUFFIXES
from brainmri.data.records import SPLIT_FOLDERS, ImageRecords, load_records
from brainmri.settings import default_data

_logger = logging.getLogger(__name__)


def hidden_images(data: str | Path) -> list[Path]:
    """Image files under a hidden folder (or hidden themselves) of a local data folder: loaders skip them."""
    root = Path(data)
    found = []
    for split in SPLIT_FOLDERS.values():
        if (root / split).is_dir():
            for path in sorted((root / split).rglob("*")):
                rel = path.relative_to(root)
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and any(p.startswith(".") for p in rel.parts):
                    found.append(rel)
    return found


def label_mismatches(result: Audit, train: ImageRecords, test: ImageRecords) -> dict:
    """How many exact groups, and near Testing-Training pairs, join images of different classes."""
    records = {"train": train, "test": test}
    mixed_groups = sum(len({int(records[s].labels[i]) for s, i in g}) > 1 for g in result.exact_groups)
    mixed_pairs = sum(test.labels[i] != train.labels[j] for i, j, _, _ in result.near_test_train)
    return {"exact_groups_mixing_labels": int(mixed_groups), "near_test_train_pairs_mixing_labels": int(mixed_pairs)}


def write_audit(result: Audit, train: ImageRecords, test: ImageRecords, summary: dict, out: Path) -> None:
    """The four files named in the module docstring."""
    out.mkdir(parents=True, exist_ok=True)
    records = {"train": train, "test": test}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "exact_groups.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "split", "label", "file"])
        for g, members in enumerate(result.exact_groups):
            for split, i in members:
                r = records[split]
                writer.writerow([g, split, r.class_names[r.labels[i]], r.name(i)])
    with (out / "near_pairs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "distance", "mirrored", "file_a", "label_a", "file_b", "label_b"])
        for kind, (a, b), pairs in (
            ("train-train", (train, train), result.near_train_train),
            ("test-test", (test, test), result.near_test_test),
            ("test-train", (test, train), result.near_test_train),
        ):
            for i, j, d, mirrored in pairs:
                row = [kind, f"{d:.3f}", int(mirrored), a.name(i), a.class_names[a.labels[i]], b.name(j), b.class_names[b.labels[j]]]
                writer.writerow(row)
    (out / "test_unseen.txt").write_text("".join(test.name(int(i)) + "\n" for i in result.test_unseen))


def run_audit(data: str | Path, out: str | Path, threshold: float = NEAR_THRESHOLD) -> dict:
    """Audit ``data``, write the files to ``out`` and return the summary counts."""
    start = time.perf_counter()
    train, test = load_records(data, "train"), load_records(data, "test")
    if train.class_names != test.class_names:
        raise ValueError(f"Training classes {train.class_names} differ from Testing classes {test.class_names}")
    skipped = hidden_images(data)
    for path in skipped:
        _logger.warning("skipped, in a hidden folder: %s", path)
    result = audit(train, test, threshold)
    summary = {
        "train_images": len(train),
        "test_images": len(test),
        **result.summary(test.labels, test.class_names),
        **label_mismatches(result, train, test),
        "hidden_files_skipped": len(skipped),
    }
    write_audit(result, train, test, summary, Path(out))
    _logger.info("audit took %.0f s; wrote %s", time.perf_counter() - start, out)
    return summary


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=default_data(), help="image folder or Hub dataset id (default: %(default)s)")
    parser.add_argument("--out", default="runs/audit", help="folder for summary.json, exact_groups.csv, near_pairs.csv, test_unseen.txt")
    near = f"near duplicate: mean |difference| in grey levels at {THUMB}x{THUMB}"
    parser.add_argument("--threshold", type=float, default=NEAR_THRESHOLD, help=near)
    args = parser.parse_args(argv)

    def run() -> None:
        summary = run_audit(args.data, args.out, args.threshold)
        width = max(map(len, summary))
        print("\n".join(f"{key:<{width}}  {value}" for key, value in summary.items()))

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
