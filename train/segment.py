"""Train the tumour segmentation model (brainmri.models.segmenters.SEGMENTERS) on the expert masks, and measure it.

    python -m train.segment --data ../shared/data/brain-tumor-mri --epochs 16
    python -m train.segment --resume            # continue the last run from its last finished epoch
    python -m train.segment --evaluate-only     # re-measure the shipped folder on its validation scans

Masks: Cheng et al.'s figshare tumour outlines beside the data (``<data>-masks/``, brainmri.data.masks.masks_folder).
No-tumour images train as empty masks; tumour images of the other sources have no mask and are left out, not
taken as empty. The split is the classifiers' mirror-aware one (brainmri.data.split), so twins and images of one
figshare scan stay on one side, and the validation scans are the ones the shipped classifiers are chosen on.
The best epoch on the validation tumours' mean Dice is written with smp's ``save_pretrained`` and measured per
class: Dice, IoU, detection rate, area error, and the share of no-tumour slices left empty.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCardData
from PIL import Image
from tqdm import tqdm

from brainmri.cli import exit_code, setup_logging
from brainmri.data.masks import mask_table, masks_folder
from brainmri.data.preprocess import augment_batch
from brainmri.data.records import ImageRecords, relative_path
from brainmri.data.split import DEFAULT_VAL_FRACTION, training_split, validation_note, write_val_split
from brainmri.eval.curves import write_history_csv
from brainmri.eval.report import DATASET, segmentation_eval_results, write_card
from brainmri.eval.segmentation import per_image_scores, plot_segmentation_history, predict_all, summarise
from brainmri.models.checkpoint import CARD, CURVES, HISTORY, METRICS, TRAIN_CONFIG, drop_run_results, write_manifest
from brainmri.models.segmenters import UNET, create_segmenter, get_segmenter_spec
from brainmri.segmentation import THRESHOLD, load_segmenter, normalise, to_input
from brainmri.settings import default_data
from brainmri.vocabulary import NO_TUMOUR
from train import schedule
from train.config import SegmenterRunConfig, parse_config
from train.resume import clear_resume, has_model_state, load_model_state, save_model_state

if TYPE_CHECKING:  # annotations only
    from timm.scheduler.scheduler import Scheduler
    from torch import nn
    from torch.optim import Optimizer

_logger = logging.getLogger(__name__)


@dataclass
class SegmentConfig(SegmenterRunConfig):
    model: str = UNET  # registry name (brainmri.models.segmenters.SEGMENTERS)
    data: str = dataclasses.field(default_factory=default_data)  # image folder; its masks lie in <data>-masks/
    out: str = ""  # output folder; default runs/<model> (ship it by copying to checkpoints/<model>)
    epochs: int = 16  # epochs of the cosine schedule
    batch_size: int = 16
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5  # linear warm-up, then cosine to zero
    dice_weight: float = 1.0  # loss = BCE + dice_weight * soft Dice
    negatives_per_epoch: float = 0.35  # share of the no-tumour images drawn afresh each epoch: enough to learn "no outline"
    val_fraction: float = DEFAULT_VAL_FRACTION  # the classifiers' (brainmri.data.split): same fraction and seed, same validation scans
    seed: int = 0
    input_size: int = 0  # 0: the registry's, the data's native 224; else a multiple of 32
    crop: int = 160  # train on random crops of this side (0: whole images); served whole, since a U-Net is fully convolutional
    limit_per_class: int = 0  # 0: all images; else a few per class (tests)
    max_train_batches: int = 0  # 0: whole epochs; else stop each epoch early (tests)
    pretrained: bool = True  # encoder from the offline ImageNet weights
    resume: bool = False  # continue from <out>/resume
    evaluate_only: bool = False  # measure the folder's model on its validation scans, train nothing


# ---------------------------------------------------------------- data


def segmentation_subset(records: ImageRecords, data: str) -> tuple[ImageRecords, list[str | None]]:
    """The images with a mask, and the no-tumour images (empty masks); each with its mask file or None for empty."""
    table, folder = mask_table(data), masks_folder(data)
    keep, masks = [], []
    negative = records.class_names.index(NO_TUMOUR)
    for i in range(len(records)):
        rel = relative_path(records.name(i), data)
        if rel in table:
            keep.append(i)
            masks.append(str(folder / Path(rel).with_suffix(".png")))
        elif records.labels[i] == negative:
            keep.append(i)
            masks.append(None)
    return records.subset(keep), masks


def decode_pairs(records: ImageRecords, masks: list[str | None], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, S, S) and masks (N, 1, S, S) of 0 or 255."""
    x = torch.empty((len(records), 3, size, size), dtype=torch.uint8)
    y = torch.zeros((len(records), 1, size, size), dtype=torch.uint8)
    for i in tqdm(range(len(records)), desc="decode", leave=False, mininterval=5):
        x[i] = to_input(records.open(i), size)
        if masks[i]:
            m = np.asarray(Image.open(masks[i]).convert("L").resize((size, size), Image.NEAREST))
            y[i, 0] = torch.from_numpy((m >= 128).astype(np.uint8) * 255)
    return x, y


def load_split(cfg: SegmentConfig) -> dict:
    """Train and validation images with their masks; raises ValueError when the masks are not beside the data."""
    if masks_folder(cfg.data) is None:
        raise ValueError(f"no tumour masks beside {cfg.data}: expected {cfg.data}-masks/masks.csv")
    train, val = training_split(cfg.data, cfg.val_fraction, cfg.seed, cfg.limit_per_class)
    out = {}
    for name, records in (("train", train), ("val", val)):
        subset, masks = segmentation_subset(records, cfg.data)
        out[name] = (subset, *decode_pairs(subset, masks, cfg.input_size))
        _logger.info("%s: %d images (%d with a tumour mask)", name, len(subset), sum(m is not None for m in masks))
    return out


# ---------------------------------------------------------------- training


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Dice of the batch as one volume (so empty masks of no-tumour slices count, without a 0/0)."""
    p = torch.sigmoid(logits)
    return 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)


def epoch_batches(y: torch.Tensor, cfg: SegmentConfig, g: torch.Generator) -> list[torch.Tensor]:
    """An epoch's batches of indices: every slice with a tumour, and a draw of the ones without."""
    negative = (y.flatten(1).amax(dim=1) == 0).nonzero()[:, 0]
    positive = (y.flatten(1).amax(dim=1) > 0).nonzero()[:, 0]
    drawn = negative[torch.randperm(len(negative), generator=g)[: round(cfg.negatives_per_epoch * len(negative))]]
    both = torch.cat([positive, drawn])
    order = both[torch.randperm(len(both), generator=g)]
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    return batches[: cfg.max_train_batches] if cfg.max_train_batches else batches


def train_one_epoch(
    model: nn.Module, optimizer: Optimizer, scheduler: Scheduler, x: torch.Tensor, y: torch.Tensor, cfg: SegmentConfig, epoch: int
) -> float:
    """One epoch; ``scheduler`` (timm's, train.schedule) is told each update's count, so a resumed run needs no state."""
    model.train()
    g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    batches = epoch_batches(y, cfg, g)
    total = 0.0
    for b, idx in enumerate(tqdm(batches, desc=f"epoch {epoch}", leave=False, mininterval=10)):
        images, masks = random_crop(*augment_batch(x[idx], g, masks=y[idx]), cfg.crop, g)
        logits = model(normalise(images, model))
        target = masks.float() / 255
        loss = F.binary_cross_entropy_with_logits(logits, target) + cfg.dice_weight * soft_dice_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(epoch * len(batches) + b + 1)  # the rate of the next update
        total += loss.item()
    return total / max(1, len(batches))


def random_crop(images: torch.Tensor, masks: torch.Tensor, side: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random ``side`` x ``side`` window of a batch (B, C, S, S), the same for images and masks; half the pixels at 160 of 224."""
    size = images.shape[-1]
    if not side or side >= size:
        return images, masks
    top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
    return images[..., top : top + side, left : left + side], masks[..., top : top + side, left : left + side]


# ---------------------------------------------------------------- measuring


def measure(model: nn.Module, split: dict) -> dict:
    records, x, y = split["val"]
    scores = summarise(per_image_scores(predict_all(model, x), y), records.labels, records.class_names)
    scores["split"] = validation_note()
    return scores


# ---------------------------------------------------------------- the run


def fit(cfg: SegmentConfig) -> Path:
    spec = get_segmenter_spec(cfg.model)
    torch.manual_seed(cfg.seed)
    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        drop_run_results(out)
    (out / TRAIN_CONFIG).write_text(cfg.to_json() + "\n")
    split = load_split(cfg)
    imagenet = cfg.pretrained and not (cfg.resume and has_model_state(cfg.output_dir()))  # resumed weights replace them
    model = create_segmenter(spec.name, pretrained=imagenet).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    _, xt, yt = split["train"]
    steps = len(epoch_batches(yt, cfg, torch.Generator().manual_seed(0)))  # the same count every epoch
    # Made before --resume loads the optimizer, whose saved rate is the one the next update takes.
    scheduler = schedule.cosine(optimizer, cfg.lr, int(cfg.warmup_epochs * steps), cfg.epochs * steps)
    state = {"epoch": 0, "best_dice": -1.0, "best_epoch": 0, "history": [], "seconds": 0.0}
    saved = load_model_state(out, model, optimizer) if cfg.resume else None
    if saved is not None:
        state = saved
        _logger.info("resumed after epoch %d (best Dice %.4f at epoch %d)", state["epoch"], state["best_dice"], state["best_epoch"])
    records, xv, yv = split["val"]
    for epoch in range(state["epoch"], cfg.epochs):
        start = time.perf_counter()
        loss = train_one_epoch(model, optimizer, scheduler, xt, yt, cfg, epoch)
        scores = summarise(per_image_scores(predict_all(model, xv), yv), records.labels, records.class_names)
        seconds = time.perf_counter() - start
        row = {
            "epoch": epoch + 1,
            "train_loss": loss,
            "val_dice": scores["tumour"]["dice"],
            "val_empty_no_tumour": scores["no_tumour"]["empty_share"],
        }
        row |= {f"val_dice_{c}": s["dice"] for c, s in scores["per_class"].items()}
        state["history"].append(row | {"seconds": seconds})
        state["seconds"] += seconds
        state["epoch"] = epoch + 1
        _logger.info(
            "epoch %d: loss %.4f, val Dice %.4f, no-tumour empty %.3f (%.0f s)",
            epoch + 1,
            loss,
            row["val_dice"],
            row["val_empty_no_tumour"] or 0,
            seconds,
        )
        if row["val_dice"] > state["best_dice"]:
            state["best_dice"], state["best_epoch"] = row["val_dice"], epoch + 1
            model.save_pretrained(str(out))
        save_model_state(out, model, optimizer, state)
    finish(cfg, out, split, state)
    return out


def run_record(cfg: SegmentConfig, model: nn.Module, state: dict, split: dict) -> dict:
    """What a segmentation run's metrics.json says of the run itself (this trainer's and train.multitask's)."""
    spec = get_segmenter_spec(cfg.model)
    return {
        "model": cfg.model,
        "architecture": spec.about,
        "initialization": f"ImageNet encoder (offline package {spec.imagenet_init})" if cfg.pretrained else "random",
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_size": cfg.input_size,
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "train_seconds": round(state["seconds"], 1),
        "train_images": len(split["train"][0]),
    }


def finish(cfg: SegmentConfig, out: Path, split: dict, state: dict) -> None:
    records = split["val"][0]
    write_val_split(out, records, cfg.data, "validation scans the Dice figures in metrics.json are measured on")
    write_manifest(out)
    model = load_segmenter(out)
    metrics = run_record(cfg, model, state, split) | {"validation": measure(model, split)}
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    write_history_csv(state["history"], out / HISTORY)
    plot_segmentation_history(state["history"], out / CURVES)
    write_segmentation_card(out)
    clear_resume(out)
    _logger.info("wrote %s: validation Dice %.4f", out, metrics["validation"]["tumour"]["dice"])


def write_segmentation_card(folder: Path) -> Path:
    """README.md with Hub front matter: what the model is, how it was trained, its validation figures per class."""
    m = json.loads((folder / METRICS).read_text())
    cfg = json.loads((folder / TRAIN_CONFIG).read_text())
    v = m["validation"]
    rows = [("all tumours", v["tumour"]), *v["per_class"].items()]
    data = ModelCardData(
        library_name="segmentation-models-pytorch",
        license="apache-2.0",
        pipeline_tag="image-segmentation",
        tags=["image-segmentation", "segmentation-models-pytorch", "brain-mri"],
        datasets=[DATASET],
        model_name=m["model"],
        eval_results=segmentation_eval_results(v),
    )
    lines = [
        f"# {m['model']}: brain tumour outline",
        "",
        "Outlines the tumour in a brain MRI slice (one channel, sigmoid). For research and education, not diagnosis.",
        "",
        f"- Architecture: {m['architecture']}; {m['parameters']:,} parameters",
        f"- Weights initialised from: {m['initialization']}",
        f"- Input: {m['input_size']} x {m['input_size']} RGB, mean/std of the encoder's timm config; tumour where p > {THRESHOLD}",
        f"- Trained for {m['epochs_run']} epochs (best validation epoch {m['best_epoch']}) on CPU, {m['train_seconds']} s,"
        f" {m['train_images']} images: Cheng et al.'s figshare masks (CC BY 4.0), and no-tumour slices as empty masks",
        f"- Command: `python -m train.segment --data DATA --epochs {cfg['epochs']}`",
        "",
        "## Validation (scans with no twin in the training part, in either orientation; `val_split.txt`)",
        "",
        "| class | n | Dice (95% CI) | IoU | detected | area error |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {name} | {r['n']} | {r['dice']:.3f} ({r['dice_ci95'][0]:.3f}-{r['dice_ci95'][1]:.3f}) | {r['iou']:.3f}"
            f" | {r['detection_rate']:.1%} | {r['area_error_abs']:.1%} |"
            for name, r in rows
        ],
        "",
        f"No-tumour slices left empty: {v['no_tumour']['empty_share']:.1%} of {v['no_tumour']['n']}.",
        "",
        "```python",
        "import segmentation_models_pytorch as smp",
        "",
        f'model = smp.from_pretrained("OWNER/{m["model"]}")  # or a local folder',
        "```",
        "",
    ]
    return write_card(data, "\n".join(lines), folder / CARD)


def evaluate_only(cfg: SegmentConfig) -> dict:
    out = cfg.output_dir()
    split = load_split(cfg)
    scores = measure(load_segmenter(out), split)
    print(json.dumps(scores, indent=2))
    return scores


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    cfg = parse_config(argv, __doc__.splitlines()[0], SegmentConfig)
    return exit_code(lambda: evaluate_only(cfg) if cfg.evaluate_only else fit(cfg), _logger)


if __name__ == "__main__":
    sys.exit(main())
