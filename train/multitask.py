"""Train one encoder for class, heatmap and outline (brainmri.models.segmenters.SEGMENTERS["multitask_lite0"]).

    python -m train.multitask --data ../shared/data/brain-tumor-mri --epochs 8 --out ../runs/multitask_lite0
    python -m train.multitask --out ../runs/multitask_lite0 --resume   # continue after the last finished epoch
    python -m train.multitask --init-from checkpoints/multitask_lite0 --lr 3e-4 --dice image --out ../runs/mt2
        # a second schedule on a finished folder's weights (same validation split, checked)
    python -m train.multitask --init-classifier checkpoints/tf_efficientnet_lite0 --init-from checkpoints/multitask_lite0 ...
        # the class path (encoder and head) from a finished classifier, the decoder from a multi-task folder

The Lite0 classifier with a U-Net decoder on its stages (brainmri.models.multitask.UnetOnClassifier), trained on
both tasks at once: cross-entropy on every Training image, and BCE + soft Dice on the outline where a
target exists (train.experts: the two experts' mean, empty for no-tumour slices, none for the tumours no expert
outlined). The split is the classifiers' mirror-aware one (brainmri.data.split), so twins and the images of one
figshare scan stay on one side, and neither head ever trains on a validation scan. Each epoch is scored on
validation: accuracy, and Dice against each expert; the epoch with the best accuracy + mean Dice is kept.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm import tqdm

from brainmri.cli import exit_code, setup_logging
from brainmri.data.masks import EXPERTS
from brainmri.data.preprocess import augment_batch
from brainmri.data.split import DEFAULT_RULE, DEFAULT_VAL_FRACTION, training_split, validation_note, write_val_split
from brainmri.eval.curves import write_history_csv
from brainmri.models.checkpoint import CURVES, HISTORY, METRICS, TRAIN_CONFIG, drop_run_results, write_manifest
from brainmri.models.segmenters import create_segmenter, get_segmenter_spec
from brainmri.runtime import pick_device, warn_if_bf16_emulated
from brainmri.segmentation import load_segmenter, normalise, to_input
from brainmri.settings import default_data
from train.config import SegmenterRunConfig, parse_config
from train.distill import check_same_validation, describe_teacher, distill_loss, teacher_targets
from train.experts import decode_expert_masks, soft_target
from train.multitask_eval import evaluate, selection_score
from train.multitask_init import load_class_path, started_from, stitched_from
from train.multitask_report import plot_history, write_multitask_card
from train.resume import RESUME, clear_resume, has_model_state, load_model_state, save_model_state
from train.schedule import cosine, follow, moving_average
from train.segment import run_record, soft_dice_loss

if TYPE_CHECKING:  # annotations only
    from contextlib import AbstractContextManager

    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3
    from torch import nn
    from torch.optim import Optimizer

    from brainmri.data.records import ImageRecords

_logger = logging.getLogger(__name__)


@dataclass
class MultiTaskConfig(SegmenterRunConfig):
    model: str = "multitask_lite0"  # registry name (brainmri.models.segmenters.SEGMENTERS, with num_classes)
    data: str = dataclasses.field(default_factory=default_data)  # image folder; the experts' masks lie beside it
    out: str = ""  # output folder; default runs/<model>
    epochs: int = 10  # epochs of the cosine schedule
    batch_size: int = 32  # the Lite0 classifier's protocol (its lr, weight decay, label smoothing, warm-up too)
    lr: float = 6e-4  # peak learning rate of AdamW: the decoder's and the class head's
    encoder_lr_scale: float = 1.0  # share of lr for the pretrained classifier's layers (the decoder and class head: lr)
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5  # linear warm-up, then cosine to zero (timm CosineLRScheduler, per step)
    label_smoothing: float = 0.1  # of the class targets; the temperature fitted afterwards undoes its overconfidence cut
    outline_weight: float = 1.0  # loss = CE + outline_weight * (BCE + soft Dice) on the images with a target
    dice: str = "batch"  # "batch": soft Dice of the batch as one volume; "image": mean per-image Dice over the
    # tumour images (the mean per-scan Dice validation scores; one volume lets large tumours outweigh small ones)
    val_fraction: float = DEFAULT_VAL_FRACTION  # the classifiers' (brainmri.data.split): same fraction and seed, same validation scans
    split: str = DEFAULT_RULE  # its twin rule (brainmri.data.split.SPLIT_RULES), recorded as the classifiers' is
    seed: int = 0
    input_size: int = 0  # 0: the registry's, the data's native 224; else a multiple of 32: one size for both heads
    amp: str = "bf16"  # "bf16": torch.autocast on CPU or CUDA (2x on an avx512_bf16 CPU, 18x slower where emulated); "none": fp32
    device: str = "auto"  # "auto": the GPU when there is one, else the CPU; or "cpu", "cuda", "cuda:N"
    limit_per_class: int = 0  # 0: all images; else a few per class (tests)
    max_train_batches: int = 0  # 0: whole epochs; else stop each epoch early (tests, the bf16 check)
    pretrained: bool = True  # encoder from the offline ImageNet weights
    resume: bool = False  # continue from <out>/resume
    init_from: str = ""  # a finished multi-task folder to start from (a second schedule on its weights), not ImageNet
    init_classifier: str = ""  # a finished classifier folder (this backbone, this split) whose weights replace the class path's
    teacher: str = (
        ""  # finished classifier folder(s) cut by this split, comma-separated: their mean softmax is a soft class target (train.distill)
    )
    distill_weight: float = 0.5  # with --teacher: share of the class loss on the teacher's soft targets, the rest on the labels
    ema_decay: float = 0.0  # 0: none; else validate, keep and ship an exponential moving average of the weights (timm ModelEmaV3)
    ema_warmup: bool = False  # the average's decay grows with the updates up to ema_decay (train.schedule.moving_average)


def autocast(cfg: MultiTaskConfig, device: torch.device) -> AbstractContextManager:
    if cfg.amp == "none":
        return nullcontext()
    if cfg.amp != "bf16":
        raise ValueError(f"amp must be 'bf16' or 'none', got {cfg.amp!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------- data


def load_split(cfg: MultiTaskConfig) -> dict:
    """Per side: records, uint8 images (N, 3, S, S), expert masks (N, E, S, S) and which exist (N, E)."""
    train, val = training_split(cfg.data, cfg.val_fraction, cfg.seed, cfg.limit_per_class, cfg.split)
    out = {}
    for name, records in (("train", train), ("val", val)):
        x = torch.empty((len(records), 3, cfg.input_size, cfg.input_size), dtype=torch.uint8)
        for i in tqdm(range(len(records)), desc=f"decode {name}", leave=False, mininterval=5):
            x[i] = to_input(records.open(i), cfg.input_size)
        masks, known = decode_expert_masks(records, cfg.data, cfg.input_size)
        out[name] = (records, x, masks, known)
        _logger.info("%s: %d images, %d with an outline target", name, len(records), int(known.any(dim=1).sum()))
    if not out["train"][3].any():
        raise ValueError(f"no expert masks beside {cfg.data}: expected one of {', '.join(f'{cfg.data}{s}/' for s in EXPERTS.values())}")
    return out


# ---------------------------------------------------------------- training


def joint_loss(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    labels: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    cfg: MultiTaskConfig,
    soft: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """CE on every image (on the labels and, with ``soft``, a teacher's (B, C) probabilities: train.distill) +
    outline_weight * (BCE + soft Dice) on the images with a target (weight 1)."""
    if soft is None:
        ce = F.cross_entropy(class_logits.float(), labels, label_smoothing=cfg.label_smoothing)
    else:
        ce = distill_loss(class_logits.float(), labels, soft, cfg.distill_weight, cfg.label_smoothing)
    keep = weight > 0
    if not keep.any():
        return ce, {"ce": ce.item(), "outline": 0.0}
    logits, t = mask_logits[keep].float(), target[keep]
    dice = per_image_dice_loss(logits, t) if cfg.dice == "image" else soft_dice_loss(logits, t)
    outline = F.binary_cross_entropy_with_logits(logits, t) + dice
    return ce + cfg.outline_weight * outline, {"ce": ce.item(), "outline": outline.item()}


def per_image_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the mean soft Dice of the images whose target has a tumour (B, 1, H, W); 0 when none has. Empty targets
    are left to BCE: a per-image Dice on an empty target punishes a few stray pixels as much as a missed tumour."""
    tumour = target.flatten(1).amax(dim=1) > 0
    if not tumour.any():
        return logits.sum() * 0.0
    p, t = torch.sigmoid(logits[tumour]).flatten(1), target[tumour].flatten(1)
    return 1 - ((2 * (p * t).sum(dim=1) + 1) / (p.sum(dim=1) + t.sum(dim=1) + 1)).mean()


def epoch_batches(n: int, cfg: MultiTaskConfig, epoch: int) -> tuple[list[torch.Tensor], torch.Generator]:
    g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = torch.randperm(n, generator=g)
    batches = [order[i : i + cfg.batch_size] for i in range(0, n - cfg.batch_size + 1, cfg.batch_size)]
    return batches[: cfg.max_train_batches] if cfg.max_train_batches else batches, g


def train_one_epoch(
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: Scheduler,
    split: dict,
    cfg: MultiTaskConfig,
    epoch: int,
    ema: ModelEmaV3 | None = None,
) -> dict:
    """One pass over the training side; ``ema`` (timm ModelEmaV3), when given, follows every step."""
    model.train()
    records, x, masks, known = split["train"]
    labels = torch.from_numpy(records.labels)
    batches, g = epoch_batches(len(x), cfg, epoch)
    sums = {"loss": 0.0, "ce": 0.0, "outline": 0.0}
    device = next(model.parameters()).device
    for b, idx in enumerate(tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, mininterval=10)):
        images, moved = augment_batch(x[idx], g, masks=masks[idx])  # the experts' masks move with their image
        target, weight = (t.to(device) for t in soft_target(moved, known[idx]))
        with autocast(cfg, device):
            mask_logits, class_logits = model(normalise(images.to(device), model))
        soft = split["soft"][idx].to(device) if split.get("soft") is not None else None
        loss, parts = joint_loss(class_logits, mask_logits, labels[idx].to(device), target, weight, cfg, soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(epoch * len(batches) + b + 1)
        follow(ema, model, epoch * len(batches) + b + 1)
        sums["loss"] += loss.item()
        for k, v in parts.items():
            sums[k] += v
    return {k: v / max(1, len(batches)) for k, v in sums.items()}


# ---------------------------------------------------------------- the run


def param_groups(model: nn.Module, cfg: MultiTaskConfig) -> list[dict]:
    """The pretrained classifier's layers at ``encoder_lr_scale`` of the rate; its new class head and the decoder at
    the full rate (timm's schedulers scale each group from its own initial rate)."""
    head = {id(p) for p in model.classifier.get_classifier().parameters()}
    encoder = [p for p in model.classifier.parameters() if id(p) not in head]
    rest = [p for p in model.parameters() if id(p) not in {id(q) for q in encoder}]
    return [{"params": encoder, "lr": cfg.lr * cfg.encoder_lr_scale}, {"params": rest, "lr": cfg.lr}]


def build(cfg: MultiTaskConfig, steps_per_epoch: int, device: torch.device = torch.device("cpu")):
    spec = get_segmenter_spec(cfg.model)
    if not spec.num_classes:
        raise ValueError(f"{cfg.model} has no classification head (registry num_classes); choose a multi-task model")
    if cfg.dice not in ("batch", "image"):
        raise ValueError(f"dice must be 'batch' or 'image', got {cfg.dice!r}")
    # resumed, --init-from or --init-classifier weights replace ImageNet's
    imagenet = cfg.pretrained and not (cfg.init_from or cfg.init_classifier) and not (cfg.resume and has_model_state(cfg.output_dir()))
    model = create_segmenter(spec.name, pretrained=imagenet, input_size=cfg.input_size)  # both faces at the trained size
    if cfg.init_from:
        start = load_segmenter(Path(cfg.init_from))
        if type(start) is not type(model):
            raise ValueError(f"--init-from {cfg.init_from} holds a {type(start).__name__}, not a {type(model).__name__}")
        model.load_state_dict(start.state_dict())
        _logger.info("started from the weights in %s", cfg.init_from)
    if cfg.init_classifier:
        load_class_path(model, Path(cfg.init_classifier))
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine(optimizer, cfg.lr, int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch)
    # The moving average is validated, kept and shipped instead of the raw weights, as train.train does.
    ema = moving_average(model, cfg.ema_decay, cfg.ema_warmup)
    return model, optimizer, scheduler, ema


def check_init_split(cfg: MultiTaskConfig, val: ImageRecords) -> None:
    """--init-from and --init-classifier must start from folders whose validation scans are this run's: weights that
    trained on one of this run's validation scans would leak it."""
    for flag, folder in (("--init-from", cfg.init_from), ("--init-classifier", cfg.init_classifier)):
        if folder:
            check_same_validation(folder, val, cfg.data, flag, several=False)


def fit(cfg: MultiTaskConfig) -> Path:
    torch.manual_seed(cfg.seed)
    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        drop_run_results(out)
    (out / TRAIN_CONFIG).write_text(cfg.to_json() + "\n")
    split = load_split(cfg)
    check_init_split(cfg, split["val"][0])
    if cfg.teacher:
        check_same_validation(cfg.teacher, split["val"][0], cfg.data)
        split["soft"] = teacher_targets(cfg.teacher, split["train"][0], cache=out / RESUME)  # read back on --resume
    # Written now, not only at the end: the best epoch's weights in ``out`` are then a valid --init-from source
    # even if the run never finishes (a session ending with its resume state lost).
    write_val_split(out, split["val"][0], cfg.data, "validation scans of this run: none is trained on")
    steps = len(epoch_batches(len(split["train"][1]), cfg, 0)[0])
    device = pick_device(cfg.device)  # "auto" is the GPU when torch sees one; a missing GPU is named
    if cfg.amp == "bf16":
        warn_if_bf16_emulated(device)
    model, optimizer, scheduler, ema = build(cfg, steps, device)
    if model.label_names != split["train"][0].class_names:
        raise ValueError(f"the model's classes {model.label_names} are not the data's {split['train'][0].class_names}")
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "history": [], "seconds": 0.0}
    saved = load_model_state(out, model, optimizer, ema) if cfg.resume else None
    if saved is not None:
        state = saved
        _logger.info("resumed after epoch %d (best at epoch %d)", state["epoch"], state["best_epoch"])
    for epoch in range(state["epoch"], cfg.epochs):
        start = time.perf_counter()
        losses = train_one_epoch(model, optimizer, scheduler, split, cfg, epoch, ema)
        kept = model if ema is None else ema.module  # the weights scored, and saved if best
        scores = evaluate(kept, split["val"], autocast(cfg, device))
        seconds = time.perf_counter() - start
        row = {"epoch": epoch + 1, **{f"train_{k}": round(v, 5) for k, v in losses.items()}, **scores["summary"]}
        row["seconds"] = round(seconds, 1)
        state["history"].append(row)
        state["seconds"] += seconds
        state["epoch"] = epoch + 1
        _logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
        if selection_score(scores) > state["best_score"]:
            state["best_score"], state["best_epoch"] = selection_score(scores), epoch + 1
            kept.save_pretrained(str(out))
        save_model_state(out, model, optimizer, state, ema)
    finish(cfg, out, split, state, device)
    return out


def finish(cfg: MultiTaskConfig, out: Path, split: dict, state: dict, device: torch.device = torch.device("cpu")) -> None:
    """The kept epoch's folder: validation split, manifest, metrics (re-measured in fp32 from the folder), history,
    curves and card; the resume state is removed once all of it is written."""
    write_val_split(out, split["val"][0], cfg.data, "validation scans the class and outline figures in metrics.json are measured on")
    write_manifest(out)
    model = load_segmenter(out)
    scores = evaluate(model, split["val"], nullcontext())
    metrics = run_record(cfg, model, state, split) | {"amp": cfg.amp, "device": device.type, "data": cfg.data}
    if cfg.init_classifier:
        metrics["initialization"] = stitched_from(Path(cfg.init_classifier), Path(cfg.init_from) if cfg.init_from else None)
    elif cfg.init_from:
        metrics["initialization"] = started_from(Path(cfg.init_from))
    if cfg.teacher:
        metrics["distilled_from"] = describe_teacher(cfg.teacher, cfg.distill_weight)
    # The class figures where every classifier keeps them (brainmri.eval.tables); the outline's beside them.
    metrics["validation"] = scores["classes"] | {"split": validation_note(cfg.split)}
    metrics["outline"] = scores["outline"]
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    write_history_csv(state["history"], out / HISTORY)
    plot_history(state["history"], out / CURVES)
    write_multitask_card(out)
    clear_resume(out)
    _logger.info("wrote %s: %s", out, json.dumps(scores["summary"]))


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    cfg = parse_config(argv, __doc__.splitlines()[0], MultiTaskConfig)
    return exit_code(lambda: fit(cfg), _logger)


if __name__ == "__main__":
    sys.exit(main())
