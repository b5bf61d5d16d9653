"""train.train's data: the training records, decoded once to uint8 and cut into its validation split, as batches
on the CPU (a DataLoader) or already on the training device (:class:`DeviceBatches`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from brainmri.data.cache import decode_records
from brainmri.data.records import ImageRecords
from brainmri.data.split import split_records, training_records
from brainmri.runtime import eval_batch
from train.config import TrainConfig
from train.distill import check_same_validation, teacher_targets


class DeviceBatches:
    """Batches of uint8 images and labels that already sit on the training device: no DataLoader, no copies.

    Shuffled by a permutation seeded with ``seed + epoch`` (``set_epoch``), like accelerate's seedable sampler.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        soft: torch.Tensor | None = None,
    ):
        self.x, self.y = x, y  # (N, 3, H, W) uint8, (N,) int64, on one device
        self.soft = soft  # (N, C) a teacher's probabilities (train.distill), batched beside the labels; or None
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield (self.x[idx], self.y[idx]) if self.soft is None else (self.x[idx], self.y[idx], self.soft[idx])


Batches = DataLoader | DeviceBatches  # what a trainer iterates: (x uint8, y[, soft]) batches


@dataclass
class Loaders:
    train: Batches
    val: Batches
    class_names: list[str]
    n_train: int
    n_val: int


def load_train_records(cfg: TrainConfig) -> ImageRecords:
    return training_records(cfg.data, cfg.limit_per_class, cfg.seed)


def build_loaders(cfg: TrainConfig, records: ImageRecords, dcfg: dict, device: torch.device | str = "cpu") -> Loaders:
    """Validation split with twin groups (mirrored ones included) kept whole, each side decoded once to uint8 (moved to
    ``device`` once with ``data_on_device``). With ``cfg.teacher`` the training batches carry its soft targets third."""
    train_set, val_set = split_records(records, cfg.val_fraction, cfg.seed, cfg.split, cfg.data)
    soft = None
    if cfg.teacher:
        check_same_validation(cfg.teacher, val_set, cfg.data)
        soft = teacher_targets(cfg.teacher, train_set)
    drop_last = len(train_set) > cfg.batch_size
    # validation needs no gradient: a CPU's own evaluation batch (small, for its caches), a GPU's twice the training's
    val_batch = eval_batch(device, gpu=2 * cfg.batch_size)
    (xt, yt), (xv, yv) = [
        (decode_records(s, dcfg, f"decode {name}"), torch.from_numpy(s.labels)) for s, name in ((train_set, "train"), (val_set, "val"))
    ]
    if cfg.data_on_device:
        soft = soft.to(device) if soft is not None else None
        train = DeviceBatches(xt.to(device), yt.to(device), cfg.batch_size, shuffle=True, drop_last=drop_last, seed=cfg.seed, soft=soft)
        val = DeviceBatches(xv.to(device), yv.to(device), val_batch, shuffle=False, drop_last=False)
    else:
        train_data = TensorDataset(xt, yt) if soft is None else TensorDataset(xt, yt, soft)
        train = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, drop_last=drop_last)
        val = DataLoader(TensorDataset(xv, yv), batch_size=val_batch)
    return Loaders(train, val, records.class_names, len(train_set), len(val_set))
