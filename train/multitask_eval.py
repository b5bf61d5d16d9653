"""Score a multi-task model on validation: its class, and its outline against each expert beside the experts'
agreement with each other on the same scans.

Per-image Dice and IoU come from :func:`brainmri.segmentation.mask_overlap` (smp's metrics); an empty prediction of
an empty mask scores 1.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import torch
import torch.nn.functional as F

from brainmri.eval.metrics import bootstrap_accuracy_ci
from brainmri.runtime import eval_batch
from brainmri.segmentation import batch_masks, mask_overlap, normalise
from brainmri.vocabulary import NO_TUMOUR
from train.experts import EXPERTS


@torch.inference_mode()
def predict(
    model: torch.nn.Module, x: torch.Tensor, precision: AbstractContextManager, batch_size: int | None = None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Class logits (N, C) and bool outlines (N, S, S), emptied below MIN_AREA as served (brainmri.segmentation).
    A segmenter without a class head (``unet_lite0``) gives None for the logits. ``batch_size``: by default the
    device's (``brainmri.runtime.eval_batch``)."""
    model.eval()
    device = next(model.parameters()).device  # x stays on the CPU; each batch visits the model's device
    batch_size = batch_size or eval_batch(device)
    logits, outlines = [], []
    for i in range(0, len(x), batch_size):
        with precision:
            out = model(normalise(x[i : i + batch_size].to(device), model))
        mask_logits, class_logits = out if isinstance(out, tuple) else (out, None)
        pred = batch_masks(torch.sigmoid(mask_logits[:, 0].float()))
        if class_logits is not None:
            logits.append(class_logits.float().cpu())
        outlines.append(pred.cpu())
    return (torch.cat(logits) if logits else None), torch.cat(outlines)


def _figures(dice: np.ndarray, iou: np.ndarray) -> dict:
    if not len(dice):
        return {"n": 0}
    return {"n": len(dice), "dice": float(dice.mean()), "dice_ci95": list(bootstrap_accuracy_ci(dice)), "iou": float(iou.mean())}


def outline_scores(outlines: torch.Tensor, masks: torch.Tensor, known: torch.Tensor, labels: np.ndarray, class_names: list[str]) -> dict:
    """Against each expert on the tumour scans it outlined; on the scans both outlined, the model against each and
    the experts against each other; and the share of no-tumour slices left empty."""
    negative = class_names.index(NO_TUMOUR)
    tumour = torch.from_numpy(labels != negative)
    names = list(EXPERTS)
    groups = {"all": tumour} | {c: torch.from_numpy(labels == k) for k, c in enumerate(class_names) if k != negative}
    truth = [masks[:, j] > 0 for j in range(len(names))]
    per_expert = [mask_overlap(outlines, t) for t in truth]
    between = mask_overlap(truth[0], truth[1])
    out: dict = {"each_expert": {}, "both_experts": {}}
    for j, e in enumerate(names):
        out["each_expert"][e] = {g: _figures(*(s[(sel & known[:, j]).numpy()] for s in per_expert[j])) for g, sel in groups.items()}
    both = known.all(dim=1)
    for g, sel in groups.items():
        keep = (sel & both).numpy()
        row = {"n": int(keep.sum())}
        for j, e in enumerate(names):
            row[f"dice_{e}"], row[f"iou_{e}"] = (float(s[keep].mean()) if keep.any() else None for s in per_expert[j])
        row["experts_dice"], row["experts_iou"] = (float(s[keep].mean()) if keep.any() else None for s in between)
        out["both_experts"][g] = row
    empty = ~outlines[torch.from_numpy(labels == negative)].flatten(1).any(dim=1)
    out["no_tumour"] = {"n": len(empty), "empty_share": float(empty.float().mean()) if len(empty) else None}
    return out


def class_scores(logits: torch.Tensor, labels: np.ndarray, class_names: list[str]) -> dict:
    y = torch.from_numpy(labels)
    right = (logits.argmax(dim=1) == y).numpy().astype(float)
    return {
        "n": len(labels),
        "accuracy": float(right.mean()),
        "accuracy_ci95": list(bootstrap_accuracy_ci(right)),
        "loss": float(F.cross_entropy(logits, y)),
        "per_class": {c: {"n": int((labels == k).sum()), "accuracy": float(right[labels == k].mean())} for k, c in enumerate(class_names)},
    }


def evaluate(model: torch.nn.Module, split: tuple, precision: AbstractContextManager) -> dict:
    """Everything the card and the history give, for one side of the split (records, x, masks, known)."""
    records, x, masks, known = split
    logits, outlines = predict(model, x, precision)
    classes = class_scores(logits, records.labels, records.class_names)
    outline = outline_scores(outlines, masks, known, records.labels, records.class_names)
    both = outline["both_experts"]
    summary = {"val_accuracy": classes["accuracy"], "val_loss": classes["loss"]}
    for g in both:
        for e in EXPERTS:
            summary[f"val_dice_{e}_{g}"] = both[g][f"dice_{e}"]
        summary[f"val_experts_dice_{g}"] = both[g]["experts_dice"]
    summary["val_empty_no_tumour"] = outline["no_tumour"]["empty_share"]
    return {"classes": classes, "outline": outline, "summary": summary}


def selection_score(scores: dict) -> float:
    """What picks the kept epoch: accuracy plus the mean of the outline's Dice against each expert (both on validation)."""
    s = scores["summary"]
    dice = [s[f"val_dice_{e}_all"] for e in EXPERTS if s[f"val_dice_{e}_all"] is not None]
    return s["val_accuracy"] + (float(np.mean(dice)) if dice else 0.0)
