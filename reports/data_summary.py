"""What a Space without the data folder shows: the Data tab's numbers and pictures, and the Classify tab's examples.

    python -m reports.data_summary                       # from BRAIN_MRI_DATA (default ../shared/data/brain-tumor-mri)
    python -m reports.data_summary --data DATA --per-class 2

Writes, from the real data (about 30 s on 2 cores, most of it the duplicate audit):

    results/data_counts.json   images per class and split (brainmri.app.dataview.class_counts)
    results/data_samples.png   a small grid of Training slices, two per class, captioned
    results/data_audit.json    the duplicate audit's counts (brainmri.data.duplicates.audit(...).summary), mirrored twins included
    examples/                  two unseen Testing slices per class (no exact, near or mirrored twin in Training), copied
                               byte for byte, and examples/README.md with each one's source file and the licence

brainmri.app.dataview reads these when no data folder is there.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from brainmri.app.dataview import (
    AUDIT_JSON,
    COUNTS_JSON,
    EXAMPLES_DIR,
    SAMPLE_CAPTION,
    SAMPLE_COLUMNS,
    SAMPLE_TILE,
    SAMPLES_PNG,
    class_counts,
    example_name,
    local_root,
)
from brainmri.cli import add_data_argument, exit_code, setup_logging
from brainmri.data.duplicates import audit, thumbnails, unseen_indices
from brainmri.data.records import ImageRecords, load_records
from brainmri.models.checkpoint import results_dir
from brainmri.vocabulary import class_words

_logger = logging.getLogger(__name__)

LICENCE = """\
Source: the Brain Tumor MRI Dataset by Masoud Nickparvar on Kaggle
(https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset), released under CC0 1.0.
It merges several public sets; its figshare part is licensed CC BY 4.0: Jun Cheng et al., "Enhanced Performance of
Brain Tumor Classification via Tumor Region Augmentation and Partition", PLOS ONE 10(10), 2015, and the figshare
dataset "brain tumor dataset" (https://doi.org/10.6084/m9.figshare.1512427). Files are copied byte for byte.
"""


def first_per_class(records: ImageRecords, index: np.ndarray, per_class: int) -> list[int]:
    """The first ``per_class`` of ``index`` in each class, class by class."""
    return [int(i) for c in range(len(records.class_names)) for i in index[records.labels[index] == c][:per_class]]


def sample_grid(records: ImageRecords, indices: list[int]) -> Image.Image:
    """Tiles of ``indices``, each captioned with its class, in the layout brainmri.app.dataview.sample_tiles cuts back."""
    rows = -(-len(indices) // SAMPLE_COLUMNS)
    grid = Image.new("RGB", (SAMPLE_COLUMNS * SAMPLE_TILE, rows * (SAMPLE_TILE + SAMPLE_CAPTION)), "white")
    draw = ImageDraw.Draw(grid)
    for k, i in enumerate(indices):
        x, y = (k % SAMPLE_COLUMNS) * SAMPLE_TILE, (k // SAMPLE_COLUMNS) * (SAMPLE_TILE + SAMPLE_CAPTION)
        tile = records.open(i).convert("RGB").resize((SAMPLE_TILE, SAMPLE_TILE), Image.Resampling.BILINEAR)
        grid.paste(tile, (x, y))
        draw.text((x + 4, y + SAMPLE_TILE + 2), class_words(records.class_names[records.labels[i]]), fill="black")
    return grid


def write_examples(test: ImageRecords, indices: list[int], out: Path) -> list[str]:
    """Copy the chosen Testing files into ``out`` (emptied first) with a README of their sources; the names written."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    counts: dict[str, int] = {}
    lines = ["# Example slices", "", "Unseen Testing images (no exact, near or mirrored twin in Training), two per class:", ""]
    lines += ["| file | class | source file (Testing/) |", "| --- | --- | --- |"]
    names = []
    for i in indices:
        label = test.class_names[test.labels[i]]
        source = Path(test.sources[i])
        counts[label] = counts.get(label, 0) + 1
        name = example_name(label, counts[label], source.suffix)
        shutil.copyfile(source, out / name)
        lines.append(f"| `{name}` | {class_words(label)} | `{label}/{source.name}` |")
        names.append(name)
    lines += ["", "Chosen by `python -m reports.data_summary`, which rewrites this folder.", "", *LICENCE.splitlines()]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return names


def summarise(data: str, per_class: int, results: Path, examples: Path) -> dict:
    """Write everything the module docstring lists; the audit's summary."""
    train, test = load_records(data, "train"), load_records(data, "test")
    results.mkdir(parents=True, exist_ok=True)
    (results / COUNTS_JSON).write_text(json.dumps(class_counts(Path(data)), indent=2) + "\n")
    sample_grid(train, first_per_class(train, np.arange(len(train)), 2)).save(results / SAMPLES_PNG, optimize=True)
    summary = audit(train, test).summary(test.labels, test.class_names)
    (results / AUDIT_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    unseen = unseen_indices(thumbnails(test), thumbnails(train))
    names = write_examples(test, first_per_class(test, unseen, per_class), examples)
    _logger.info("%d unseen Testing images; examples: %s", len(unseen), ", ".join(names))
    return summary


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--per-class", type=int, default=2, help="example slices per class, at most 2 (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=results_dir(), help="where the Data tab's files go (default: results/)")
    parser.add_argument("--examples", type=Path, default=EXAMPLES_DIR, help="where the examples go (default: examples/)")
    args = parser.parse_args(argv)
    if not 1 <= args.per_class <= 2:
        parser.error("--per-class must be 1 or 2: a Space ships at most 8 examples")

    def run() -> None:
        if local_root(args.data) is None:
            raise ValueError(f"no data folder with Training/ and Testing/ at {args.data} (--data or BRAIN_MRI_DATA)")
        summary = summarise(args.data, args.per_class, args.results, args.examples)
        print(json.dumps(summary, indent=2))

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
