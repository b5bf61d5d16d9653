"""The tumour outline's figures: per-image Dice and IoU through smp's metrics, then per class and overall; its curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainmri.eval.curves import epoch_panels, save_epoch_panels
from brainmri.eval.metrics import bootstrap_accuracy_ci
from brainmri.runtime import eval_batch
from brainmri.segmentation import binary_mask, mask_overlap, tumour_probability
from brainmri.vocabulary import NO_TUMOUR


def predict_all(model: torch.nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """(N, S, S) tumour probabilities, in batches of ``batch_size`` (by default the device's, ``runtime.eval_batch``)."""
    model.eval()
    batch_size = batch_size or eval_batch(next(model.parameters()).device)
    return torch.cat([tumour_probability(model, x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def per_image_scores(probs: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Dice, IoU, areas and detection of each image (true mask from ``y``, predicted from :func:`binary_mask`).

    Dice and IoU are :func:`brainmri.segmentation.mask_overlap`'s (smp's metrics). An image whose true and predicted
    masks are both empty scores 1: a no-tumour slice left empty is right, where smp's DiceLoss would skip it.
    Training's soft Dice instead pools the batch (train.segment.soft_dice_loss).
    """
    pred = torch.stack([torch.from_numpy(binary_mask(p.numpy())) for p in probs])  # (N, H, W) bool
    true = y[:, 0] > 0  # (N, H, W) bool
    dice, iou = (v.tolist() for v in mask_overlap(pred, true))
    pred_area, true_area = pred.float().mean(dim=(1, 2)).tolist(), true.float().mean(dim=(1, 2)).tolist()
    return [{"dice": d, "iou": i, "pred_area": pa, "true_area": ta} for d, i, pa, ta in zip(dice, iou, pred_area, true_area)]


def summarise(rows: list[dict], labels: np.ndarray, class_names: list[str]) -> dict:
    """Per class and overall: the figures the README and the Experiments tab give."""
    negative = class_names.index(NO_TUMOUR)
    tumour = [r for r, c in zip(rows, labels) if c != negative]
    out: dict = {"tumour": _tumour_figures(tumour)}
    out["per_class"] = {
        class_names[c]: _tumour_figures([r for r, k in zip(rows, labels) if k == c]) for c in sorted(set(labels)) if c != negative
    }
    empty = [r["pred_area"] == 0 for r, c in zip(rows, labels) if c == negative]
    out["no_tumour"] = {"n": len(empty), "empty_share": float(np.mean(empty)) if empty else None}
    return out


def _tumour_figures(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    dice = np.array([r["dice"] for r in rows])
    rel = np.array([(r["pred_area"] - r["true_area"]) / r["true_area"] for r in rows if r["true_area"] > 0])
    return {
        "n": len(rows),
        "dice": float(dice.mean()),
        "dice_ci95": list(bootstrap_accuracy_ci(dice)),  # a bootstrap of the mean, Dice values as they are
        "iou": float(np.mean([r["iou"] for r in rows])),
        "detection_rate": float(np.mean([r["pred_area"] > 0 for r in rows])),
        "area_error_abs": float(np.abs(rel).mean()) if len(rel) else None,  # mean |predicted - true| / true area
        "area_error_signed": float(rel.mean()) if len(rel) else None,  # > 0: outlines too large on average
    }


def plot_segmentation_history(history: list[dict], path: str | Path) -> None:
    """The segmenter's curves.png: training loss, and validation Dice per class, per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_dice) = epoch_panels()
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (augmented)")
    for key in [k for k in history[0] if k.startswith("val_dice")]:
        ax_dice.plot(epochs, [h[key] for h in history], "o-", label=key.removeprefix("val_dice_") if key != "val_dice" else "all tumours")
    ax_dice.plot(epochs, [h["val_empty_no_tumour"] for h in history], "k--", label="no tumour: empty")
    save_epoch_panels(fig, [(ax_loss, "loss: BCE + soft Dice"), (ax_dice, "validation Dice")], path, legend_size=8)
