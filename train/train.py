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

import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs, DataLoaderConfiguration, set_seed
from safetensors.torch import save_file
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim import Optimizer
from tqdm import tqdm

from brainmri.cli import exit_code, setup_logging
from brainmri.data.preprocess import augment_batch, data_config, normalize_batch
from brainmri.models.checkpoint import BEST, TRAIN_CONFIG, drop_run_results
from brainmri.models.registry import create_model, get_spec, set_input_size
from brainmri.runtime import warn_if_bf16_emulated
from train import graphs, schedule
from train.budget import BUDGET_SLACK, Throughput, plan_epochs, seconds_per_epoch, startup_seconds
from train.config import TrainConfig, parse_config
from train.distill import distill_loss
from train.finish import finish
from train.graphs import GraphedStep
from train.loaders import Batches, build_loaders, load_train_records
from train.resume import State, load_resume, save_resume

_logger = logging.getLogger(__name__)


def steps_per_epoch(loader: Batches, cfg: TrainConfig) -> int:
    """Optimizer updates an epoch makes (this process's batches, at most ``max_train_batches``)."""
    return min(len(loader), cfg.max_train_batches or len(loader))


def create_scheduler(optimizer: Optimizer, cfg: TrainConfig, steps: int) -> Scheduler:
    """timm's cosine schedule, stepped per update, or its plateau one, stepped per epoch (train.schedule)."""
    if cfg.schedule == "cosine":
        return schedule.cosine(optimizer, cfg.lr, int(cfg.warmup_epochs * steps), cfg.epochs * steps)
    if cfg.schedule == "plateau":
        return schedule.plateau(optimizer, math.ceil(cfg.warmup_epochs))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine or plateau")


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: Optimizer,
    scheduler: Scheduler,
    accelerator: Accelerator,
    cfg: TrainConfig,
    dcfg: dict,
    epoch: int,
    deadline: float = math.inf,
    ema: ModelEmaV3 | None = None,
    graphed: GraphedStep | None = None,
) -> dict:
    """One pass over the training batches, cut short at ``max_train_batches`` or at ``deadline`` (a perf_counter time);
    ``ema`` (timm ModelEmaV3), when given, follows every step; ``graphed``, when requested, replays the forward and
    backward from a CUDA graph captured on the first batch (train.graphs)."""
    graphed = graphed or GraphedStep()
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
    for step, (x, y, *soft) in enumerate(bar):  # soft: [(B, C) the teacher's probabilities] with --teacher
        if (cfg.max_train_batches and step >= cfg.max_train_batches) or (step and time.perf_counter() > deadline):
            break
        timer.mark(step, total)
        x = normalize_batch(augment_batch(x, gen), dcfg)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            graphs.capture(model, x, graphed)  # once, on the first batch, when asked for
            logits = graphs.forward(model, x, graphed)
            if soft:
                loss = distill_loss(logits, y, soft[0], cfg.distill_weight, cfg.label_smoothing)
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step_update(epoch * steps + step + 1)  # the rate of the next update
        schedule.follow(ema, accelerator.unwrap_model(model), epoch * steps + step + 1)
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
def evaluate(model: nn.Module, loader: Batches, accelerator: Accelerator, dcfg: dict, channels_last: bool) -> dict:
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


def mixed_precision(amp: str) -> str:
    """accelerate's ``mixed_precision`` for the config's ``amp``: bf16 autocast, or "no" (fp32)."""
    if amp not in {"auto", "bf16", "none"}:
        raise ValueError(f"amp must be auto, bf16 or none, not {amp!r}")
    return "bf16" if amp == "bf16" or (amp == "auto" and torch.cuda.is_available()) else "no"


def fit(cfg: TrainConfig) -> Path:
    """Train, keep the best epoch on validation, write and evaluate the checkpoint folder."""
    spec = get_spec(cfg.model)  # fails early, naming the choices, on an unknown model
    if spec.segmenter:
        raise ValueError(f"{cfg.model} learns its class and its outline together: train it with python -m train.multitask")
    accelerator = Accelerator(
        mixed_precision=mixed_precision(cfg.amp),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # A CUDA graph cannot hold autocast's cache of cast weights (torch.cuda.make_graphed_callables)
        kwargs_handlers=[AutocastKwargs(cache_enabled=False)] if cfg.cuda_graphs else None,
    )
    if accelerator.mixed_precision == "bf16":
        warn_if_bf16_emulated(accelerator.device)
    if cfg.data_on_device and accelerator.num_processes > 1:
        raise ValueError("data_on_device batches on one process; train on several GPUs without it")
    set_seed(cfg.seed)
    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        _logger.info("config:\n%s", cfg.to_json())
        if not cfg.resume:
            drop_run_results(out)
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
    ema = schedule.moving_average(accelerator.unwrap_model(model), cfg.ema_decay, cfg.ema_warmup)
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


def run_epochs(
    cfg: TrainConfig, parts: tuple, accelerator: Accelerator, dcfg: dict, state: State, out: Path, ema: ModelEmaV3 | None = None
) -> None:
    """Epochs until the planned number, early stopping, or the time budget; the best one saved as it comes
    (the moving average's weights, with ``ema``)."""
    model, optimizer, scheduler, train_loader, val_loader = parts
    judged = model if ema is None else ema.module
    graphed = GraphedStep(requested=cfg.cuda_graphs)  # captured in the first epoch's first step
    budget_end = time.perf_counter() + BUDGET_SLACK * cfg.time_budget_s - state.wall_seconds if cfg.time_budget_s else math.inf
    while (
        state.epoch < (state.epochs_planned or cfg.epochs)
        and state.stale < cfg.patience
        and (not state.epoch or time.perf_counter() < budget_end)
    ):
        start = time.perf_counter()
        row = train_one_epoch(model, train_loader, optimizer, scheduler, accelerator, cfg, dcfg, state.epoch, budget_end, ema, graphed)
        seconds = time.perf_counter() - start
        row.update(evaluate(judged, val_loader, accelerator, dcfg, cfg.channels_last))
        record_epoch(state, row, seconds, optimizer.param_groups[0]["lr"])
        scheduler.step(state.epoch, row["val_acc"])  # the plateau rule's epoch step; nothing for the cosine one
        state.plateau = schedule.plateau_state(scheduler)
        if state.best_epoch == state.epoch and accelerator.is_main_process:
            save_file({k: v.contiguous() for k, v in accelerator.unwrap_model(judged).state_dict().items()}, out / BEST)
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
        accelerator.wait_for_everyone()
        # Last, so that a resumed run starts from the epoch's whole bookkeeping: its time against the budget and the
        # plan the first epoch fixed (the cosine's span with it).
        if accelerator.is_main_process and cfg.save_resume:
            saving = time.perf_counter()
            save_resume(out, accelerator, state)  # the model is among what the accelerator prepared
            state.wall_seconds += time.perf_counter() - saving  # in the next epoch's saved state
    state.stopped = "early stop" if state.stale >= cfg.patience else "time budget" if state.epoch < cfg.epochs else "epochs"
    _logger.info("stopped after epoch %d (%s); best epoch %d", state.epoch, state.stopped, state.best_epoch)


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


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    cfg = parse_config(argv, description=__doc__.splitlines()[0])
    return exit_code(lambda: fit(cfg), _logger)


if __name__ == "__main__":
    sys.exit(main())
