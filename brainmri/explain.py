"""Grad-CAM heatmaps through the ``grad-cam`` package (pytorch_grad_cam), placed over the image the model saw.

Colouring them is :mod:`brainmri.rendering`'s job.

A new CAM object is made for every call and its hooks are released when the call ends, so
no two requests share hooks or gradients; callers that share a model between threads
hold that model's lock around :func:`gradcam_batch` (see ``brainmri.serving``), because hooks
on a shared module see every forward that passes through it.

The layers come from the registry (``ModelSpec.cam_layer`` and ``cam_stages``; ``LoadedModel.cam_layers``): one for Grad-CAM, Grad-CAM++ and
HiResCAM, and for LayerCAM that one plus the shallower stages it fuses. The backward pass is
kept short: :func:`prepare_for_cam` freezes every parameter, and :func:`cam_session` makes the
shallowest layer's output a leaf that requires grad, so autograd records the graph from there
on and computes no weight gradient (Lite0's heatmap pass: 50 -> 41 ms an image).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import cv2  # a dependency of pytorch_grad_cam, which resizes its maps with it
import numpy as np
import pytorch_grad_cam
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.data import DEFAULT_CROP_PCT
from torch import nn

Layers = nn.Module | Sequence[nn.Module]


class LayerCAM(pytorch_grad_cam.LayerCAM):
    """LayerCAM (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE TIP 30, 2021), fused over several stages: each stage's map ReLU(dy/dA) * A, summed over channels,
    is scaled to [0, 1] at the input's size and smoothed, and the stages are averaged.

    Deep stages say which region holds the evidence, shallow ones where its edges are; a shallow stage alone
    also lights single pixels on the skull's rim. A Gaussian (sigma ``SMOOTH`` of the side, :func:`fuse_stage_maps`)
    damps those before the mean, so the peak falls where the stages agree. The stages (registry ``cam_stages``)
    and the smoothing were chosen on held-out boxed slices (reports.cam_localisation, ``choose`` half;
    results/cam_localisation_methods.json). With one layer it is LayerCAM on that layer, smoothed.
    """

    def aggregate_multi_layers(self, cam_per_target_layer: list[np.ndarray]) -> np.ndarray:
        return fuse_stage_maps(np.concatenate(cam_per_target_layer, axis=1))


SMOOTH = 1 / 28  # sigma of LayerCAM's Gaussian, as a share of the map's side (8 px at 224)


def fuse_stage_maps(maps: np.ndarray, smooth: float = SMOOTH) -> np.ndarray:
    """Smooth each stage's map, rescale it to [0, 1], average the stages and rescale the mean.

    Args:
        maps: (B, stages, H, W), each map in [0, 1] at the input's size.
    Returns:
        (B, H, W) float32 in [0, 1].
    """
    sigma = smooth * maps.shape[-1]
    smoothed = [scale_cam_image(np.stack([cv2.GaussianBlur(m, (0, 0), sigma) for m in per_image])) for per_image in maps]
    return scale_cam_image(np.mean(smoothed, axis=1))


CAM_METHODS: dict[str, type[BaseCAM]] = {"Grad-CAM": GradCAM, "Grad-CAM++": GradCAMPlusPlus, "HiResCAM": HiResCAM, "LayerCAM": LayerCAM}
FUSING_METHODS = {"LayerCAM"}  # methods that weigh the registry's shallower stages too, not only its last layer
DEFAULT_METHOD = "LayerCAM"


def shared_parent(layer: str) -> tuple[str, list[str]]:
    """A CAM layer list ("a.b.bn2+a.b.blocks.4") as the module its layers share and their paths inside it
    (``("a.b", ["bn2", "blocks.4"])``), so that the one encoder's stages, inside its wrapper ``net.classifier``, read
    like the Lite0 classifier's own. One layer, or layers that share nothing, or only a container whose children
    are numbered (``blocks.5+blocks.3``), keep their whole paths and share ``""``."""
    parts = layer.split("+")
    shared = os.path.commonprefix(parts) if len(parts) > 1 else ""
    shared = shared[: shared.rfind(".") + 1]
    while shared and any(part[len(shared)].isdigit() for part in parts):
        shared = shared[: shared[:-1].rfind(".") + 1]
    return shared[:-1], [part[len(shared) :] for part in parts]


def as_layers(layers: Layers) -> list[nn.Module]:
    return [layers] if isinstance(layers, nn.Module) else list(layers)


def prepare_for_cam(model: nn.Module) -> None:
    """Freeze every parameter: a CAM's backward then runs from its shallowest layer on (see :func:`cam_session`)."""
    for p in model.parameters():
        p.requires_grad_(False)


def anchor_gradients(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: a CAM layer's output that nothing before it made require grad becomes a leaf that does.

    The first CAM layer reached becomes the leaf, and the deeper ones already require grad through it.
    A model with trainable parameters is left as it is.
    """
    if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.detach().requires_grad_()
    return None


@contextmanager
def cam_session(model: nn.Module, layers: Layers, method: str = DEFAULT_METHOD) -> Iterator[BaseCAM]:
    """A fresh CAM object whose hooks, and the layers' gradient anchors, are removed on exit.

    Not the package's own ``with cam:``, whose ``__exit__`` prints and swallows IndexError.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of: {', '.join(CAM_METHODS)}")
    # Registered before the CAM's own hooks, so that those see the anchored output (hooks run in order).
    anchors = [layer.register_forward_hook(anchor_gradients) for layer in as_layers(layers)]
    cam = CAM_METHODS[method](model=model, target_layers=as_layers(layers))
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()
        for handle in anchors:
            handle.remove()


class DeferredClass:
    """A Grad-CAM target whose class another pass predicts, read when the backward needs it (image ``index`` of
    ``classes()``): the heatmap's forward need not wait for that pass (brainmri.serving.overlap)."""

    def __init__(self, classes: Callable[[], Sequence[int]], index: int):
        self.classes, self.index = classes, index

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:  # (C,) one image's logits
        return model_output[..., int(self.classes()[self.index])]


def gradcam_batch(
    model: nn.Module,
    layers: Layers,
    x: torch.Tensor,
    method: str = DEFAULT_METHOD,
    targets: Sequence[int | Callable[[torch.Tensor], torch.Tensor]] | Callable[[], Sequence[int]] | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """One forward and one backward over a batch: each image's heatmap for its own class, and the logits.

    The backward runs from the sum of each image's target logit; in an eval-mode network images do not
    interact, so each image's gradient is the one it would get alone, and so is its heatmap.

    Args:
        layers: the layer to weigh, or several (fused by methods that fuse, else averaged).
        x: (B, 3, H, W) normalised input.
        targets: each image's class to explain, or its own target (a callable of its (C,) logits); None explains each
            image's predicted class; a callable gives the classes once the forward is done (:class:`DeferredClass`:
            another pass may still be predicting them).
    Returns:
        cams: (B, H, W) float32 in [0, 1] at the input's resolution, each scaled on its own; logits: (B, C), detached.
    """
    if callable(targets):
        wanted = [DeferredClass(targets, i) for i in range(len(x))]
    else:
        wanted = None if targets is None else [t if callable(t) else ClassifierOutputTarget(int(t)) for t in targets]
    with cam_session(model, layers, method) as cam:
        maps = cam(input_tensor=x, targets=wanted)  # (B, H, W)
        logits = cam.outputs.detach()
    return maps.astype(np.float32), logits


def view_box(width: int, height: int, cfg: dict) -> tuple[int, int, int, int]:
    """The part of a ``width`` x ``height`` image that timm's eval transform for ``cfg`` shows the model.

    The default "center" mode resizes the shorter side and crops the centre, so on a
    non-square image the model (and its heatmap) covers only a centred square. The box
    may reach outside the image ("border" mode pads).
    """
    crop_pct = cfg.get("crop_pct") or DEFAULT_CROP_PCT
    mode = cfg.get("crop_mode") or "center"
    if mode == "squash":
        w, h = width * crop_pct, height * crop_pct
    elif mode == "border":
        w = h = max(width, height) * crop_pct
    else:
        w = h = min(width, height) * crop_pct
    left, top = (width - w) / 2, (height - h) / 2
    return math.floor(left + 0.5), math.floor(top + 0.5), math.floor(left + w + 0.5), math.floor(top + h + 0.5)


def cam_to_image_size(cam: np.ndarray, size: tuple[int, int], cfg: dict) -> np.ndarray:
    """Place an input-resolution heatmap over the region of the original image the model saw.

    Args:
        cam: (h, w) in [0, 1].
        size: (width, height) of the original image.
    Returns:
        (height, width) float32 in [0, 1]; zero where the model saw nothing.
    """
    width, height = size
    left, top, right, bottom = view_box(width, height, cfg)
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((right - left, bottom - top), Image.Resampling.BILINEAR)
    canvas = Image.new("F", (width, height), 0.0)
    canvas.paste(resized, (left, top))
    return np.clip(np.asarray(canvas, dtype=np.float32), 0.0, 1.0)
