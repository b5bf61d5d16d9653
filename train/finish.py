"""The end of a classifier's training run (train.train): the best epoch written as a self-describing checkpoint folder
with its history, curves, metrics and model card, then tested, calibrated and given its OOD statistics."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from brainmri.data.split import checkpoint_split, write_val_split
from brainmri.eval.curves import write_history_csv
from brainmri.eval.tables import update_metrics
from brainmri.models.checkpoint import BEST, CURVES, HISTORY, save_checkpoint
from brainmri.models.registry import ModelSpec, count_parameters
from brainmri.serving.device import exact_float32
from train.config import TrainConfig
from train.distill import describe_teacher
from train.loaders import Loaders
from train.resume import State, clear_resume

_logger = logging.getLogger(__name__)


def finish(
    cfg: TrainConfig,
    spec: ModelSpec,
    model: nn.Module,
    loaders: Loaders,
    state: State,
    out: Path,
    dcfg: dict,
    device: torch.device | str = "cpu",
) -> Path:
    """Write the best epoch as a checkpoint folder with its history, metrics and model card; test, calibrate and fit its
    OOD statistics on ``device``."""
    from brainmri.eval.report import plot_history, write_model_card
    from train.calibrate import calibrate_checkpoint
    from train.evaluate import evaluate_checkpoint
    from train.ood import fit_or_warn

    model = model.to("cpu", memory_format=torch.contiguous_format).float()
    model.load_state_dict(load_file(out / BEST))
    init = (
        f"ImageNet (offline package {spec.imagenet_init})"
        if cfg.pretrained and spec.imagenet_init
        else ("ImageNet (timm)" if cfg.pretrained else "random (no pretrained weights)")
    )
    save_checkpoint(model, out, loaders.class_names, extra={"registry_name": spec.name, "initialization": init}, model_args=spec.model_args)
    write_history_csv(state.history, out / HISTORY)
    plot_history(state.history, out / CURVES)
    metrics = run_metrics(cfg, spec, model, loaders, state, dcfg, init)
    update_metrics(out, metrics)
    _, val = checkpoint_split(out, cfg.data)  # what validation chose on, listed for anyone to check
    write_val_split(out, val, cfg.data, f"validation split ({cfg.split} rule, seed {cfg.seed}): the best epoch, T and OOD fit here")
    with as_served(device):
        if cfg.evaluate_test:
            evaluate_checkpoint(out, cfg.data, limit=cfg.limit_per_class, seed=cfg.seed, device=device)
        calibrate_checkpoint(out, cfg.data, evaluate_test=cfg.evaluate_test, device=device)  # T on validation, ECE before/after
        if cfg.fit_ood:
            fit_or_warn(out, cfg.data, device=device)  # class means and covariance on train, the threshold on validation
    (out / BEST).unlink()
    clear_resume(out)
    write_model_card(out)
    _logger.info("wrote %s", out)
    return out


@contextmanager
def as_served(device: torch.device | str) -> Iterator[None]:
    """Float32 as the app serves it (brainmri.serving.device.exact_float32): on a GPU, no TF32 in the convolutions
    (cuDNN's default) while Testing, the temperature and the OOD statistics are measured, so that they hold for the
    features served. The flags come back after: the next run of a sweep trains as before."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    exact_float32()
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run_metrics(cfg: TrainConfig, spec: ModelSpec, model: nn.Module, loaders: Loaders, state: State, dcfg: dict, init: str) -> dict:
    """metrics.json before testing: the model, the best epoch on validation, and how the run used the machine."""
    best = state.history[state.best_epoch - 1]
    return {
        "model": spec.name,
        "parameters": count_parameters(model),
        "input_size": dcfg["input_size"][1],
        "initialization": init,
        **({"distilled_from": describe_teacher(cfg.teacher, cfg.distill_weight)} if cfg.teacher else {}),
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
