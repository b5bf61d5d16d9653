"""The tumour outline: loading a segmentation checkpoint and turning an image into a mask.

A checkpoint folder is what segmentation-models-pytorch's ``save_pretrained`` writes (``config.json`` with the
architecture's arguments, ``model.safetensors``), plus this project's manifest, metrics and model card, so that
``smp.from_pretrained(FOLDER)`` rebuilds it with the library alone. Preprocessing comes from the encoder's own
timm pretrained_cfg (mean, std); the input size from the folder's ``train_config.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from brainmri.data.preprocess import normalize_batch
from brainmri.models.checkpoint import OUTLINE_RULE, TRAIN_CONFIG, add_to_manifest, is_multitask, verify_checkpoint
from brainmri.models.multitask import UnetOnClassifier
from brainmri.rendering import data_url
from brainmri.vocabulary import NO_TUMOUR

_logger = logging.getLogger(__name__)

THRESHOLD = 0.5  # sigmoid probability above which a pixel is tumour
MIN_AREA = 0.001  # share of the image: a predicted outline smaller than this (~50 px at 224) counts as none


@dataclass(frozen=True)
class OutlineRule:
    """How a probability map becomes an outline. The defaults were fixed before any training; a folder's
    ``outline.json`` replaces them with the rule chosen on its validation scans."""

    threshold: float = THRESHOLD  # a pixel is tumour where p > threshold
    min_area: float = MIN_AREA  # an outline smaller than this share of the image counts as none
    mirror: bool = False  # average the map with the mirrored image's (a second pass)
    gate: bool = False  # no outline where the model's own class head says no tumour


def read_rule(folder: str | Path) -> OutlineRule:
    """The folder's rule, or the fixed defaults when it has no ``outline.json``."""
    path = Path(folder) / OUTLINE_RULE
    if not path.is_file():
        return OutlineRule()
    fields = json.loads(path.read_text())
    return OutlineRule(**{k: fields[k] for k in OutlineRule.__dataclass_fields__ if k in fields})


def write_rule(folder: str | Path, rule: OutlineRule, note: str) -> Path:
    """Store ``rule`` as the folder's ``outline.json`` and add it to the sha256 manifest (the folder is verified
    first, so re-writing the manifest cannot bless altered weights)."""
    verify_checkpoint(folder)
    path = Path(folder) / OUTLINE_RULE
    path.write_text(json.dumps({**asdict(rule), "note": note}, indent=2) + "\n")
    add_to_manifest(folder, [OUTLINE_RULE])
    return path


def load_segmenter(folder: str | Path) -> nn.Module:
    """Rebuild the segmentation model from its folder alone (fp32, eval mode); ValueError naming the problem."""
    import segmentation_models_pytorch as smp

    verify_checkpoint(folder)
    try:
        if is_multitask(folder):
            model = UnetOnClassifier.from_pretrained(str(Path(folder).resolve()))
        else:
            model = smp.from_pretrained(str(Path(folder).resolve()))
    except Exception as e:  # a corrupt file surfaces as several error types
        raise ValueError(f"cannot load segmentation checkpoint {folder}: {e}") from e
    model.input_size = input_size(folder)
    return model.float().eval()


def input_size(folder: str | Path) -> int:
    path = Path(folder) / TRAIN_CONFIG
    return int(json.loads(path.read_text())["input_size"]) if path.is_file() else 224


def to_input(image: Image.Image, side: int) -> torch.Tensor:
    """An RGB image as the segmenter takes it: resized to ``side`` (bilinear), uint8 (3, side, side). Training and
    serving both prepare images here."""
    return torch.from_numpy(np.array(image.convert("RGB").resize((side, side), Image.BILINEAR))).permute(2, 0, 1)


def normalise(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, with the mean and std of the encoder's own timm pretrained_cfg, channels_last:
    the memory format every segmenter runs in (serving and training put their models in it), where oneDNN's
    convolutions take the batch without a copy a layer (the multi-task model's validation pass 2x faster on the CPU)."""
    cfg = model.pretrained_cfg if isinstance(model, UnetOnClassifier) else model.encoder.model.pretrained_cfg
    return normalize_batch(images, cfg).contiguous(memory_format=torch.channels_last)


def mask_logits(output: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The outline's logits (B, 1, S, S) of a segmenter's output: a multi-task model (smp ``aux_params``) also
    gives class logits, as ``(masks, labels)``."""
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def tumour_probability(model: nn.Module, images: torch.Tensor, rule: OutlineRule = OutlineRule()) -> torch.Tensor:
    """Per-pixel tumour probability: uint8 (B, 3, S, S) at the model's input size -> float (B, S, S). Under the
    rule's ``mirror``, averaged with the mirrored image's map (flipped back); under its ``gate``, zero where a
    model with a class head (a multi-task one) says no tumour."""
    return tumour_probability_and_class(model, images, rule)[0]


@torch.inference_mode()
def tumour_probability_and_class(
    model: nn.Module, images: torch.Tensor, rule: OutlineRule = OutlineRule()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`tumour_probability`, with the class logits (B, C) of the same forward: a multi-task model's class head
    (of the unmirrored image), None for a plain U-Net. Both on the CPU, float32.

    A multi-task model's class head runs first, and under a gate its decoder sees only the images the gate lets
    through (``UnetOnClassifier.segment_where``): the others' maps are zero, as gating would leave them, and the
    decoder costs as much as the encoder (a third of Testing's slices have no tumour; scripts/bench_outline_gate.py)."""
    device = next(model.parameters()).device
    x = normalise(images.to(device), model)
    if isinstance(model, UnetOnClassifier):
        final, stages = model.features(x)  # x: normalised (B, 3, S, S); stages finest first
        class_logits = model.classifier.forward_head(final).float()
        keep = gate_opens(class_logits, model.label_names).to(device) if rule.gate else None  # (B,) bool

        def logits_of(v: torch.Tensor) -> torch.Tensor:
            return model.segment_where(v, stages if v is x else model.features(v)[1], keep)  # the mirror: its own encoding

    else:  # a plain U-Net: no class head, nothing to gate
        class_logits = None

        def logits_of(v: torch.Tensor) -> torch.Tensor:
            return mask_logits(model(v))

    probability = torch.sigmoid(logits_of(x)[:, 0].float())
    if rule.mirror:
        probability = (probability + torch.sigmoid(logits_of(x.flip(-1))[:, 0].float()).flip(-1)) / 2
    return probability.cpu(), None if class_logits is None else class_logits.cpu()


def gate_opens(class_logits: torch.Tensor, label_names: list[str]) -> torch.Tensor:
    """(B,) bool: where a multi-task model's class logits (B, C) top out on a tumour class, so the gate lets the
    outline through (the one home of that rule)."""
    return class_logits.argmax(dim=1) != label_names.index(NO_TUMOUR)


def gated(probability: torch.Tensor, class_logits: torch.Tensor | None, label_names: list[str], rule: OutlineRule) -> torch.Tensor:
    """Probability maps (B, S, S), zero for the images whose class logits (B, C) top out on no tumour when the rule
    gates: maps decoded whole, as train.outline_rules caches them (serving decodes only where :func:`gate_opens`)."""
    if not rule.gate or class_logits is None:
        return probability
    return probability * gate_opens(class_logits, label_names).to(probability.device)[:, None, None]


def batch_masks(probability: torch.Tensor, rule: OutlineRule = OutlineRule()) -> torch.Tensor:
    """Probability maps (B, S, S) -> bool masks at that size under ``rule``, each emptied below its smallest outline:
    the validation figures' decoder (serving decodes each map at its upload's size with :func:`binary_mask`)."""
    masks = probability > rule.threshold
    masks[masks.flatten(1).float().mean(dim=1) < rule.min_area] = False
    return masks


def binary_mask(probability: np.ndarray | torch.Tensor, rule: OutlineRule = OutlineRule()) -> np.ndarray:
    """A (H, W) probability map -> bool mask, emptied when the outline is smaller than the rule's ``min_area``."""
    mask = np.asarray(probability) > rule.threshold
    return mask if mask.mean() >= rule.min_area else np.zeros_like(mask)


@dataclass
class Outline:
    """The segmentation model's estimate for one image, in that image's own frame."""

    mask: np.ndarray  # (H, W) bool, at the image's size
    area: float  # share of the image
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1 in 0-1, or None when empty

    @property
    def empty(self) -> bool:
        return self.box is None


def outline(probability: torch.Tensor, size: tuple[int, int], rule: OutlineRule = OutlineRule()) -> Outline:
    """The mask of a (S, S) probability map, resized to ``size`` (width, height) of the uploaded image."""
    w, h = size
    resized = F.interpolate(probability[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    mask = binary_mask(resized.numpy(), rule)
    if not mask.any():
        return Outline(mask, 0.0, None)
    ys, xs = np.nonzero(mask)
    box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
    return Outline(mask, float(mask.mean()), tuple(round(float(v), 4) for v in box))


def mask_overlap(pred: torch.Tensor, true: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of two bool stacks (N, H, W), by smp's metrics (``get_stats``, then ``f1_score`` /
    ``iou_score``): every outline figure of the project, and the CUDA check's, is scored here. Two empty masks score 1
    (``zero_division=1``): a no-tumour slice left empty is right."""
    import segmentation_models_pytorch as smp  # only where outlines are scored, not on the serving path

    stats = smp.metrics.get_stats(pred[:, None].long(), true[:, None].long(), mode="binary")  # tp, fp, fn, tn: (N, 1)
    dice = smp.metrics.f1_score(*stats, reduction="none", zero_division=1.0)[:, 0]
    iou = smp.metrics.iou_score(*stats, reduction="none", zero_division=1.0)[:, 0]
    return dice.numpy(), iou.numpy()


def mask_data_url(mask: np.ndarray) -> str:
    """A (H, W) bool mask as a PNG data URL, 0 or 255, at the mask's size (the API's ``tumour_mask``)."""
    return data_url(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"))
