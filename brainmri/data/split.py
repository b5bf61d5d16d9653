"""The one home of the validation split: which Training images a checkpoint trained on and which it was chosen on.

Training (train.train), calibration (train.calibrate), OOD fitting (train.ood), segmentation (train.segment) and
anything else that needs a checkpoint's validation images rebuild them here from the plain fields of its
``train_config.json`` (data, limit_per_class, val_fraction, seed, split), or read them from its ``val_split.txt``.

Rules (``split`` in the config):

- ``"mirror-aware"`` (the default): twins in either orientation (brainmri.data.duplicates.twin_pairs: exact, near, or
  near once mirrored left-right) are grouped, and so are images that share a figshare scan id where the masks'
  ``masks.csv`` lies beside the data (brainmri.data.masks.figshare_ids); a group never straddles train and validation.
- ``"as-is"``: the rule the first shipped models were cut with, which grouped unmirrored twins only. Their mirrored
  twins leaked into validation, so their ``val_split.txt`` keeps only the validation images with no twin in their
  train part in either orientation (:func:`leak_free`).

The cut is seeded and stratified by class (:func:`split_train_val`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from brainmri.data.cache import memo, source_key, thumbnails
from brainmri.data.duplicates import connected_groups, near_pairs, twin_pairs, unseen_indices
from brainmri.data.masks import figshare_ids
from brainmri.data.records import ImageRecords, limit_per_class, load_records, relative_path
from brainmri.models.checkpoint import TRAIN_CONFIG, VAL_SPLIT

_logger = logging.getLogger(__name__)


def split_train_val(labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified train/validation indices; each duplicate group stays on one side."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    n_splits = round(1 / val_fraction)
    smallest = int(np.bincount(labels).min())
    if smallest < n_splits:
        raise ValueError(f"val_fraction {val_fraction} needs at least {n_splits} images per class; the smallest class has {smallest}")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(folds.split(np.zeros(len(labels)), labels, groups))
    return train_idx, val_idx


MIRROR_AWARE, AS_IS = "mirror-aware", "as-is"
SPLIT_RULES = (MIRROR_AWARE, AS_IS)
DEFAULT_RULE = MIRROR_AWARE
DEFAULT_VAL_FRACTION = 0.15  # every trainer's: the same fraction and seed give the same validation scans


def validation_note(rule: str = DEFAULT_RULE) -> str:
    """How a run's metrics.json names the scans its validation figures are measured on (listed in val_split.txt)."""
    twins = "no twin, mirrored or not, in train" if rule == MIRROR_AWARE else "twins as the first shipped models split them"
    return f"validation scans of the {rule} split (val_split.txt): {twins}"


def training_records(data: str, limit: int = 0, seed: int = 0) -> ImageRecords:
    """The Training split's records, or a seeded ``limit`` per class of them (tests, --quick)."""
    records = load_records(data, "train")
    return limit_per_class(records, limit, seed) if limit else records


def twin_groups(records: ImageRecords, rule: str = DEFAULT_RULE, data: str | None = None) -> np.ndarray:
    """(N,) group id per image under ``rule``; images of one group must stay on one side of any split."""
    if rule not in SPLIT_RULES:
        raise ValueError(f"split rule must be one of {list(SPLIT_RULES)}, got {rule!r}")
    thumbs = thumbnails(records)
    if rule == AS_IS:
        return connected_groups(len(records), near_pairs(thumbs))
    pairs: list[tuple] = list(twin_pairs(thumbs))
    if data is not None:
        by_scan: dict[int, int] = {}
        for i, scan in figshare_ids(records, data).items():
            pairs.append((by_scan.setdefault(scan, i), i))  # join each image to the first of its scan
    return connected_groups(len(records), pairs)


def split_records(
    records: ImageRecords, val_fraction: float, seed: int, rule: str = DEFAULT_RULE, data: str | None = None
) -> tuple[ImageRecords, ImageRecords]:
    """(train, validation), twin groups kept whole; memoised while a data cache is open."""

    def split() -> tuple[np.ndarray, np.ndarray]:
        groups = twin_groups(records, rule, data)
        train_idx, val_idx = split_train_val(records.labels, groups, val_fraction, seed)
        kept = len(records) - groups.max() - 1
        _logger.info("split (%s): %d train, %d validation (%d twins kept with theirs)", rule, len(train_idx), len(val_idx), kept)
        return train_idx, val_idx

    train_idx, val_idx = memo(("split", source_key(records), val_fraction, seed, rule, data), split)
    return records.subset(train_idx), records.subset(val_idx)


def training_split(
    data: str, val_fraction: float, seed: int, limit: int = 0, rule: str = DEFAULT_RULE
) -> tuple[ImageRecords, ImageRecords]:
    """The (train, validation) records a run with these fields trained and was chosen on."""
    return split_records(training_records(data, limit, seed), val_fraction, seed, rule, data)


def leak_free(train: ImageRecords, val: ImageRecords) -> ImageRecords:
    """The validation images with no exact, near or mirrored twin in ``train``."""
    return val.subset(unseen_indices(thumbnails(val), thumbnails(train)))


def checkpoint_config(folder: str | Path) -> dict:
    path = Path(folder) / TRAIN_CONFIG
    if not path.is_file():
        raise ValueError(f"{folder} has no {TRAIN_CONFIG}, so its validation split cannot be rebuilt")
    return json.loads(path.read_text())


def split_rule(train_config: dict) -> str:
    """The twin rule a run's split followed, from its train_config.json (``split``; :data:`DEFAULT_RULE` when absent)."""
    return train_config.get("split", DEFAULT_RULE)


def checkpoint_split(folder: str | Path, data: str | None = None) -> tuple[ImageRecords, ImageRecords]:
    """A checkpoint's own (train, validation) records: the rule's cut from its train_config.json, with validation
    narrowed to the images its ``val_split.txt`` lists when it has one. ``data`` overrides where the images are
    (the same images, elsewhere: a device run's ``data/`` copy, say)."""
    cfg = checkpoint_config(folder)
    data = data or cfg["data"]
    train, val = training_split(data, cfg["val_fraction"], cfg["seed"], cfg.get("limit_per_class", 0), split_rule(cfg))
    listed = read_val_split(folder)
    if listed is None:
        return train, val
    names = [relative_path(val.name(i), data) for i in range(len(val))]
    missing = sorted(set(listed) - set(names))
    if missing:
        raise ValueError(f"{folder}/{VAL_SPLIT} lists {len(missing)} images that are not in its validation split, e.g. {missing[0]}")
    keep = set(listed)
    return train, val.subset([i for i, name in enumerate(names) if name in keep])


def read_val_split(folder: str | Path) -> list[str] | None:
    """The dataset-relative paths in the folder's ``val_split.txt``, or None when it has none."""
    path = Path(folder) / VAL_SPLIT
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def write_val_split(folder: str | Path, val: ImageRecords, data: str, note: str) -> Path:
    """Write the validation images (dataset-relative paths, one a line) that a checkpoint's figures and fits use."""
    path = Path(folder) / VAL_SPLIT
    lines = [f"# {note}", f"# {len(val)} images, relative to the dataset folder"]
    lines += sorted(relative_path(val.name(i), data) for i in range(len(val)))
    path.write_text("\n".join(lines) + "\n")
    return path
