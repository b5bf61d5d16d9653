"""The one home of the validation split: which Training images a checkpoint trained on and which it was chosen on.

Training (train.train), calibration (train.calibrate), OOD fitting (train.ood) and anything else that
needs a checkpoint's validation images rebuild them here from the same plain fields of its
``train_config.json``: data, limit_per_class, val_fraction, seed. Exact and near-duplicate images
(32 x 32 greyscale, mean absolute difference <= 2 grey levels) are grouped first, and a group never
straddles train and validation; the cut is seeded and stratified by class.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from brainmri.checkpoint import TRAIN_CONFIG
from brainmri.data import ImageRecords, limit_per_class, load_records, split_train_val
from brainmri.datacache import memo, source_key, thumbnails
from brainmri.duplicates import connected_groups, near_pairs

_logger = logging.getLogger(__name__)


def training_records(data: str, limit: int = 0, seed: int = 0) -> ImageRecords:
    """The Training split's records, or a seeded ``limit`` per class of them (tests, --quick)."""
    records = load_records(data, "train")
    return limit_per_class(records, limit, seed) if limit else records


def split_records(records: ImageRecords, val_fraction: float, seed: int) -> tuple[ImageRecords, ImageRecords]:
    """(train, validation), near-duplicate groups kept whole; memoised while a data cache is open."""

    def split() -> tuple[np.ndarray, np.ndarray]:
        groups = connected_groups(len(records), near_pairs(thumbnails(records)))
        train_idx, val_idx = split_train_val(records.labels, groups, val_fraction, seed)
        kept = len(records) - groups.max() - 1
        _logger.info("split: %d train, %d validation (%d duplicate groups kept whole)", len(train_idx), len(val_idx), kept)
        return train_idx, val_idx

    train_idx, val_idx = memo(("split", source_key(records), val_fraction, seed), split)
    return records.subset(train_idx), records.subset(val_idx)


def training_split(data: str, val_fraction: float, seed: int, limit: int = 0) -> tuple[ImageRecords, ImageRecords]:
    """The (train, validation) records a run with these fields trained and was chosen on."""
    return split_records(training_records(data, limit, seed), val_fraction, seed)


def checkpoint_split(folder: str | Path, data: str | None = None) -> tuple[ImageRecords, ImageRecords]:
    """A checkpoint's own (train, validation) records, from its train_config.json; ``data`` overrides where the
    images are (the same images, elsewhere: a device run's ``data/`` copy, say)."""
    path = Path(folder) / TRAIN_CONFIG
    if not path.is_file():
        raise ValueError(f"{folder} has no train_config.json, so its validation split cannot be rebuilt")
    cfg = json.loads(path.read_text())
    return training_split(data or cfg["data"], cfg["val_fraction"], cfg["seed"], cfg.get("limit_per_class", 0))
