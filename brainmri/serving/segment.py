"""The tumour outline's pass: the segmentation model loaded for serving, and a batch of images to their outlines.

The segmenter is the registry's ``SEGMENTER_DEFAULT``, found as the classifiers are (brainmri.models.catalog: its
shipped folder ``checkpoints/multitask_lite0``, else its Hub repo), and decodes its map by its folder's rule
(``outline.json``, brainmri.segmentation.OutlineRule). Like the classifiers it loads into a model cache
(brainmri.serving.cache) and runs on the serving device under its own lock;
:meth:`brainmri.serving.predictor.Predictor.run_passes` calls :func:`segment_batch` as its third step, so on ZeroGPU
the outline shares the request's lent GPU.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch import nn

from brainmri.calibration import calibrated_probs, load_temperature
from brainmri.models.checkpoint import count_tensors_bytes
from brainmri.models.multitask import MultiTaskClassifier, UnetOnClassifier
from brainmri.runtime import native_bf16
from brainmri.segmentation import (
    Outline,
    OutlineRule,
    gate_opens,
    load_segmenter,
    outline,
    read_rule,
    to_input,
    tumour_probability_and_class,
)
from brainmri.serving.device import place_model, resolve_device
from brainmri.serving.onnx_passes import encoder_through_onnx, onnx_serving, weights_key
from brainmri.serving.rewrites import fold_batchnorm, same_padding_in_kernel
from brainmri.settings import outline_bf16

_logger = logging.getLogger(__name__)


@dataclass
class LoadedSegmenter:
    """A segmentation model ready to serve."""

    name: str
    model: nn.Module
    input_size: int
    nbytes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    lock: threading.Lock = field(default_factory=threading.Lock)
    bf16: bool = False  # its forward under bfloat16 autocast (brainmri.settings.outline_bf16)
    rule: OutlineRule = OutlineRule()  # its folder's outline.json, chosen on validation (train.outline_rules)
    labels: list[str] = field(default_factory=list)  # a multi-task segmenter's classes, in its class head's order
    temperature: float = 1.0  # its class head's, fitted on validation (calibration.json)


def load_for_serving(name: str, folder: str | Path, device: torch.device | str | None = None) -> LoadedSegmenter:
    """The ModelCache loader of segmenters: eval mode, batch norm folded, channels_last, on the serving device; its
    forward in bfloat16 on a CPU that computes it natively (``BRAIN_MRI_OUTLINE_BF16``, docs/serving.md)."""
    device = resolve_device(None if device is None else str(device))
    model = load_segmenter(folder)
    size = model.input_size
    fold_batchnorm(model)
    same_padding_in_kernel(model)
    model = place_model(model.requires_grad_(False), device)
    bf16 = device.type == "cpu" and outline_bf16() and native_bf16()
    labels = list(getattr(model, "label_names", []))
    temperature = load_temperature(folder) if labels else 1.0
    nbytes = count_tensors_bytes(model)
    if not bf16 and isinstance(model, UnetOnClassifier) and onnx_serving(device):
        encoder_through_onnx(model, weights_key(Path(folder)), size)  # its decoder stays in torch, under the gate
    return LoadedSegmenter(name, model, size, nbytes, device, bf16=bf16, rule=read_rule(folder), labels=labels, temperature=temperature)


def segment_batch(loaded: LoadedSegmenter, images: list[Image.Image]) -> list[Outline]:
    """Each RGB image's outline, in its own frame (size), from one batched forward."""
    return segment_and_classify(loaded, images).outlines


class SecondOpinion(NamedTuple):
    """What the outline's forward gives an ensemble (brainmri.models.registry.ENSEMBLES) beside the outlines."""

    outlines: list[Outline]  # each image's, in its own frame
    probabilities: torch.Tensor | None  # (B, C) the class head's, calibrated, in the segmenter's label order; None: no head


def segment_and_classify(loaded: LoadedSegmenter, images: list[Image.Image]) -> SecondOpinion:
    """:func:`segment_batch`, with the class probabilities a multi-task segmenter's head gave in that same forward,
    calibrated by its temperature: an ensemble's second opinion at no extra pass."""
    side = loaded.input_size
    batch = torch.stack([to_input(im, side) for im in images])
    with loaded.lock, torch.autocast("cpu", dtype=torch.bfloat16, enabled=loaded.bf16):
        probability, logits = tumour_probability_and_class(loaded.model, batch.contiguous(memory_format=torch.channels_last), loaded.rule)
    outlines = [outline(p, im.size, loaded.rule) for p, im in zip(probability, images)]  # probability: (B, S, S)
    return SecondOpinion(outlines, None if logits is None else calibrated_probs(logits, loaded.temperature))


def draws_own_outline(model: nn.Module) -> bool:
    """Whether ``model``'s forward draws the outline too (a multi-task classifier, brainmri.models.multitask)."""
    return isinstance(model, MultiTaskClassifier)


def own_outlines(model: nn.Module, images: list[Image.Image], rule: OutlineRule = OutlineRule()) -> list[Outline] | None:
    """The outlines of a multi-task classifier's (brainmri.models.multitask) last forward, over ``images`` (that
    forward's batch), each in its image's frame, decoded by ``rule`` (its folder's): under a gate, only the images it
    lets through reach the decoder. None for a model without a decoder. Call it under the model's lock, right after the
    forward: it consumes what the forward kept, so none of the request stays in the model. The mirror average would take
    a second pass, which this path does not run: train.outline_rules writes no such rule unless asked
    (``--allow-mirror``)."""
    if not draws_own_outline(model):
        return None
    labels, heads = model.net.label_names, model.last_class_logits
    try:
        logits = model.decode_last(gate_opens(heads, labels) if rule.gate and heads is not None else None)
    finally:
        model.forget_last()
    if logits is None:
        return None
    probability = torch.sigmoid(logits[:, 0]).cpu()  # (B, S, S); zero where the gate closed (-inf logits)
    return [outline(p, im.size, rule) for p, im in zip(probability, images)]
