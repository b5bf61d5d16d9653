"""train.train's clock: the steady throughput of an epoch, and how many epochs fit a time budget."""

from __future__ import annotations

import time

import torch

from train.config import TrainConfig

WARMUP_STEPS = 2  # first steps of each epoch left out of the throughput timing (cuDNN algorithm choice, allocator growth)
BUDGET_SLACK = 1.2  # an epoch running past this share of time_budget_s is cut short


class Throughput:
    """Images per second from step WARMUP_STEPS to the end of an epoch; one device sync at each end."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.images = device, 0.0, 0

    def mark(self, step: int, images: int) -> None:
        if step == WARMUP_STEPS:
            _sync(self.device)
            self.start, self.images = time.perf_counter(), images

    def rate(self, images: int) -> float | None:
        """None when the epoch was too short to time past its warm-up steps."""
        if not self.start or images == self.images:
            return None
        _sync(self.device)
        return (images - self.images) / (time.perf_counter() - self.start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def startup_seconds(first: dict) -> float:
    """What the first epoch's training took beyond its images at the steady rate measured past its warm-up steps."""
    return max(0.0, first["seconds"] - first["train_images"] / first["img_per_s"])


def seconds_per_epoch(last: dict, wall: float) -> float:
    """The next epoch's expected wall time: the last one's images at its steady rate, plus what it spent outside training
    (validation, saving). ``wall`` is the last epoch's whole wall time."""
    return last["train_images"] / last["img_per_s"] + max(0.0, wall - last["seconds"])


def plan_epochs(cfg: TrainConfig, state, epoch_seconds: float) -> int:
    """Epochs that fit ``time_budget_s`` at ``epoch_seconds`` each: at least those run, at most cfg.epochs.

    ``state``: train.train's State (its ``epoch`` and ``wall_seconds`` are read).
    """
    fit_in = state.epoch + int(max(0.0, cfg.time_budget_s - state.wall_seconds) // max(epoch_seconds, 1e-6))
    return max(state.epoch, min(cfg.epochs, fit_in))
