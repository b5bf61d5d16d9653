"""What the Data tab shows: class counts, sample images, each preprocessing step, the duplicate audit; and examples.

The data is found through ``BRAIN_MRI_DATA`` (an image folder or a Hub dataset id), by default
``../shared/data/brain-tumor-mri`` beside the repository. A Space has no data folder: then the tab shows what
``python -m reports.data_summary`` precomputed into ``results/`` (counts, a sample grid, the audit's counts), and
the Classify tab offers the few unseen Testing slices it copied into ``examples/``. Nothing else copies dataset
images into the repository.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from brainmri.data.duplicates import THUMB, audit
from brainmri.data.imageio import IMAGE_SUFFIXES
from brainmri.data.preprocess import eval_transform
from brainmri.data.records import SPLIT_FOLDERS, load_records
from brainmri.models.checkpoint import DATA_AUDIT, DATA_COUNTS, DATA_SAMPLES, results_dir
from brainmri.rendering import colormap_lut
from brainmri.settings import ROOT, default_data
from brainmri.vocabulary import class_words

_logger = logging.getLogger(__name__)

EXAMPLES_DIR = ROOT / "examples"  # unseen Testing slices, two per class, shipped with the Space (reports.data_summary)
COUNTS_JSON, SAMPLES_PNG, AUDIT_JSON = DATA_COUNTS, DATA_SAMPLES, DATA_AUDIT  # in results_dir() (brainmri.models.checkpoint)
SAMPLE_TILE, SAMPLE_CAPTION, SAMPLE_COLUMNS = 112, 16, 4  # the grid's layout: px a tile, px of caption under it, tiles a row


def example_name(label: str, k: int, suffix: str) -> str:
    """A shipped example's file name: its class, then its number within the class ("glioma_1.jpg")."""
    return f"{label}_{k}{suffix}"


def shipped_examples(folder: Path = EXAMPLES_DIR) -> list[tuple[Path, str]]:
    """The examples in ``folder`` as (path, class), sorted; none when the folder is missing."""
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    return [(p, p.stem.rsplit("_", 1)[0]) for p in files]


def sample_tiles(grid: Path, class_names: list[str]) -> list[tuple[Image.Image, str]]:
    """The precomputed grid cut back into its captioned tiles, as (tile, class): a gallery crops one wide picture."""
    with Image.open(grid) as im:
        im.load()
        rows = im.height // (SAMPLE_TILE + SAMPLE_CAPTION)
        n = rows * SAMPLE_COLUMNS
        per_class = max(1, n // max(1, len(class_names)))
        tiles = []
        for k in range(n):
            x, y = (k % SAMPLE_COLUMNS) * SAMPLE_TILE, (k // SAMPLE_COLUMNS) * (SAMPLE_TILE + SAMPLE_CAPTION)
            tile = im.crop((x, y, x + SAMPLE_TILE, y + SAMPLE_TILE)).convert("RGB")  # the gallery captions it
            tiles.append((tile, class_names[min(k // per_class, len(class_names) - 1)]))
    return tiles


def examples_are_local(source: str | None = None) -> bool:
    """Whether the examples come from disk (a data folder or the shipped ones), so the app may list them at start."""
    return local_root(source) is not None or bool(shipped_examples())


def precomputed(results: Path | None = None) -> tuple[list[dict], Path, dict] | None:
    """(class counts, sample grid, audit summary) as reports.data_summary wrote them into ``results`` (default: the
    results folder); None when any is missing."""
    results = results_dir() if results is None else results
    files = [results / name for name in (COUNTS_JSON, SAMPLES_PNG, AUDIT_JSON)]
    if not all(f.is_file() for f in files):
        return None
    return json.loads(files[0].read_text()), files[1], json.loads(files[2].read_text())


def local_root(source: str | None = None) -> Path | None:
    """The data folder, when the source is a local folder that holds both splits (a Hub id, or half a folder, is not
    one: the Data tab then shows what reports.data_summary precomputed)."""
    path = Path(source or default_data()).expanduser()
    return path if all((path / folder).is_dir() for folder in SPLIT_FOLDERS.values()) else None


def class_counts(root: Path) -> list[dict]:
    """One row per class: images in each split and in all."""
    rows: dict[str, dict] = {}
    for split, folder in SPLIT_FOLDERS.items():
        if not (root / folder).is_dir():
            continue
        for name, files in load_records(root, split).paths_by_class().items():
            rows.setdefault(name, {"class": name})[folder] = len(files)
    table = list(rows.values())
    for row in table:
        row["total"] = sum(v for k, v in row.items() if k != "class")
    if table:
        totals = {"class": "all"}
        for key in table[0]:
            if key != "class":
                totals[key] = sum(r.get(key, 0) for r in table)
        table.append(totals)
    return table


def example_files(root: Path, per_class: int = 1, split: str = "test") -> list[tuple[Path, str]]:
    """The first ``per_class`` images of each class, with the class as caption."""
    return [(p, name) for name, files in load_records(root, split).paths_by_class().items() for p in files[:per_class]]


def copy_examples(examples: list[tuple[Path, str]], out_dir: Path) -> list[tuple[Path, str]]:
    """Copy a few example files to ``out_dir`` (a temporary folder the app may serve from)."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for path, caption in examples:
        target = out_dir / f"{caption}_{path.name}"
        if not target.is_file():
            shutil.copyfile(path, target)
        copied.append((target, caption))
    return copied


def hub_examples(dataset_id: str, per_class: int, out_dir: Path) -> list[tuple[Path, str]]:
    """A few Testing images of a Hub dataset, written to ``out_dir`` (a temporary folder) to be served."""
    records = load_records(dataset_id, "test")
    out_dir.mkdir(parents=True, exist_ok=True)
    found = []
    for c, name in enumerate(records.class_names):
        for k, i in enumerate(np.flatnonzero(records.labels == c)[:per_class]):
            path = out_dir / f"{name}_{k}.png"
            records.open(int(i)).save(path)
            found.append((path, name))
    return found


# timm's transform classes as a tile's caption says them (an unknown one keeps its class name); the list beside the
# tiles says every step in a sentence (_step_words). The conversion to numbers changes no picture: it has no caption.
STEP_WORDS = {"Resize": "resized", "CenterCrop": "centre crop", "Normalize": "normalised"}
_DIVERGING = colormap_lut("RdBu_r")  # (256, 3): blue below 0, white at 0, red above


class DataOverview(NamedTuple):
    """What the Data tab shows, as :func:`overview` reads it; all but ``note`` None (``words`` empty) without data."""

    note: str
    counts: list[dict] | None  # a row a class, then "all"
    samples: list[tuple[Image.Image, str]] | None  # Training slices, captioned with their class
    steps: list[tuple[Image.Image, str]] | None  # Preprocessing.tiles
    words: str  # Preprocessing.words


class Preprocessing(NamedTuple):
    """One slice through a model's eval transform: a captioned tile for each step that changes the picture, and every
    step in words (a step that changes nothing seen, as a crop with nothing to cut, gets words and no tile)."""

    tiles: list[tuple[Image.Image, str]]
    words: str


def _step_words(t: object, unchanged: bool) -> str:
    """One transform in words, with its settings: "resize to 128 px (bilinear)", "normalise each channel: minus mean
    (0.5, 0.5, 0.5), over std (0.5, 0.5, 0.5)"; ``unchanged``: the step left the picture as it was."""
    name = type(t).__name__
    size = getattr(t, "size", None)
    size = "x".join(map(str, size)) if isinstance(size, (tuple, list)) else size
    if name == "Resize":
        how = getattr(getattr(t, "interpolation", None), "value", "")
        text = f"resize to {size} px" + (f" ({how})" if how else "")
    elif name == "CenterCrop":
        text = f"centre crop {size}" + (" (nothing to cut on this slice)" if unchanged else "")
    elif name in ("MaybeToTensor", "ToTensor"):
        text = "to numbers from 0 to 1, channels first"
    elif name == "Normalize":
        mean, std = (", ".join(f"{v:.3g}" for v in getattr(t, k)) for k in ("mean", "std"))
        text = f"normalise each channel: minus mean ({mean}), over std ({std})"
    else:
        text = STEP_WORDS.get(name, name)
    return text


def preprocessing_steps(image: Image.Image, cfg: dict) -> Preprocessing:
    """The image after each step of the model's own eval transform, captioned, and every step in words.

    The steps are read from ``eval_transform(cfg)`` itself, so what is shown is what runs. A step whose picture is the
    one before it gets no tile: a crop that cuts nothing, and the conversion to numbers (the same grey levels). The
    normalised tensor is shown channel 0 in a diverging map, white at 0 (a pixel at the config's mean): what the
    network gets.
    """
    # Captions short enough for a gallery tile (a phone's is ~160 px): the size where it changes, the range once normalised.
    tiles, words = [(image, f"decoded: {image.width}x{image.height}")], []
    x = image
    for t in eval_transform(cfg).transforms:
        before, x = x, t(x)
        name = STEP_WORDS.get(type(t).__name__, type(t).__name__)
        if isinstance(x, Image.Image):
            unchanged = isinstance(before, Image.Image) and before.size == x.size and before.tobytes() == x.tobytes()
            if not unchanged:
                tiles.append((x, f"{name}: {x.width}x{x.height}"))
        else:
            c0 = x[0].float()
            lo, hi = float(c0.min()), float(c0.max())
            unchanged = lo >= 0 and hi <= 1  # to numbers: the picture as it was, as floats
            if not unchanged:
                limit = max(abs(lo), abs(hi), 1e-6)  # symmetric about 0, so white is the mean
                index = ((c0 / limit + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8).numpy()
                tiles.append((Image.fromarray(_DIVERGING[index]), f"{name}: {lo:.1f} to {hi:.1f}"))
        words.append(_step_words(t, unchanged))
    steps = "\n".join(f"{i}. {w}" for i, w in enumerate(words, 1))
    note = (
        "The pictures show each step that changes the slice. The last is channel 0 of what the network gets: white at 0,"
        " where a pixel equals the mean the config names; red above it, blue below."
    )
    return Preprocessing(tiles, f"**The steps, from the model's own config**\n\n{steps}\n\n{note}")


def widest_example(root: Path, split: str = "test", scan: int = 40) -> Path:
    """Among the first images of each class, the one furthest from square: it shows what the centre crop cuts."""
    candidates = [p for p, _ in example_files(root, per_class=scan // 4, split=split)]

    def aspect(path: Path) -> float:
        with Image.open(path) as im:
            return max(im.size) / min(im.size)

    return max(candidates, key=aspect)


@functools.lru_cache(maxsize=2)
def audit_summary(source: str) -> dict:
    """The duplicate audit's numbers (exact, near and mirrored twins within and across splits); computed once, then cached."""
    test = load_records(source, "test")
    return audit(load_records(source, "train"), test).summary(test.labels, test.class_names)


def audit_text(source: str) -> str:
    """The audit in words: of the data folder when it is there, else as reports.data_summary precomputed it."""
    if local_root(source) is not None:
        return audit_markdown(audit_summary(source))
    saved = precomputed()
    if saved is None:
        raise ValueError("no data folder and no precomputed audit here (python -m reports.data_summary writes one)")
    return audit_markdown(saved[2]) + "\n\n*Precomputed from the data folder by `python -m reports.data_summary`.*"


def example_images(data: str) -> list[tuple[str, str]]:
    """Example images as (path, class): the shipped ones (examples/: Testing slices with no twin in Training, so an
    example's answer is never a memorised one), else one Testing image per class from the data folder, else from a Hub
    dataset; none, with a warning, when none is there. Copied to the temp folder, which Gradio serves from (it serves
    no data folder elsewhere)."""
    out = Path(tempfile.gettempdir()) / "brainmri-examples"
    if shipped_examples():
        return [(str(p), c) for p, c in copy_examples(shipped_examples(), out)]
    root = local_root(data)
    if root is not None:
        return [(str(p), c) for p, c in copy_examples(example_files(root, per_class=1), out)]
    try:
        return [(str(p), c) for p, c in hub_examples(data, 1, out)]
    except ValueError as e:  # no data folder and no reachable Hub dataset only means no examples
        _logger.warning("no example images: %s", e)
        return []


def captioned(examples: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Example images as a gallery's (path, caption): each with its class in words, so that a visitor can check the
    answer against the dataset's label."""
    return [(path, class_words(label)) for path, label in examples]


def audit_markdown(summary: dict) -> str:
    """The duplicate audit in words, for a reader (the numbers are brainmri.data.duplicates' summary)."""
    s = summary
    unseen = s["test_unseen"] if "test_unseen" in s else s["test_clean"]  # "test_clean": summaries from before mirroring
    mirrored = s.get("test_with_mirrored_twin_in_train_only", 0)
    per_class = s.get("test_unseen_per_class", {})
    classes = f" ({', '.join(f'{n} {class_words(c)}' for c, n in per_class.items())})" if per_class else ""
    return "\n".join(
        [
            f"- **{s['test_with_near_twin_in_train']} Testing images** have a near-identical copy in Training as they are "
            f"({THUMB} x {THUMB} greyscale, at most {s['near_threshold']:g} grey levels apart on average), "
            f"**{s['test_with_exact_twin_in_train']}** of them byte-identical, and **{mirrored}** more only once mirrored "
            "left-right, as training's flips show them: a model has in effect seen them.",
            f"- **{unseen} Testing images** have no such twin{classes}: the *unseen* accuracies in the Experiments tab "
            "are measured on them, and the examples are chosen from them.",
            f"- Within Training, {s['near_pairs_train_train']} pairs of images are near-identical; the validation "
            "split keeps each group of them on one side, so validation accuracy is not inflated by them.",
            f"- Within Testing, {s['near_pairs_test_test']} pairs are near-identical.",
            f"- Byte-identical files: {s['exact_files']} files in {s['exact_groups']} groups, "
            f"{s['exact_groups_across_splits']} of the groups spanning both splits.",
        ]
    )


def overview(source: str, model: torch.nn.Module, model_name: str) -> DataOverview:
    """The Data tab: a note, class counts, Training samples, preprocessing tiles for ``model`` and its steps in words, from the data folder
    when it is there, else as reports.data_summary precomputed them; the note says which. No server path is shown.
    The counts are rows, one a class and "all", the class as a reader says it."""
    from brainmri.data.imageio import load_image
    from brainmri.data.preprocess import data_config

    root = local_root(source)
    saved = precomputed() if root is None else None
    if root is None and saved is None:
        return DataOverview(
            "No data folder found (set `BRAIN_MRI_DATA` to a folder with `Training/` and `Testing/`).", None, None, None, ""
        )
    if root is not None:
        counts = class_counts(root)
        samples = [(load_image(p), c) for p, c in example_files(root, per_class=2, split="train")]
        first = widest_example(root)
        note = f"The data: images per class and split, samples, and one Testing slice through **{model_name}**'s preprocessing."
    else:
        counts = saved[0]
        samples = sample_tiles(saved[1], [row["class"] for row in saved[0] if row["class"] != "all"])
        first = shipped_examples()[0][0] if shipped_examples() else saved[1]
        note = (
            "The data, **precomputed** from the data folder (`python -m reports.data_summary`; this server has none): images "
            f"per class and split, samples, and one unseen Testing slice through **{model_name}**'s preprocessing."
        )
    steps = preprocessing_steps(load_image(first), data_config(model))
    counts = [{**row, "class": class_words(row["class"])} for row in counts]  # "no tumour", not the folder's "notumor"
    return DataOverview(note, counts, [(tile, class_words(c)) for tile, c in samples], steps.tiles, steps.words)
