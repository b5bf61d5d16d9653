"""Grad-CAM heatmaps through the ``grad-cam`` package (pytorch_grad_cam), and their overlays.

A new CAM object is made for every call and its hooks are released when the call ends, so
no two requests share hooks or gradients; callers that share a model between threads
hold that model's lock around :func:`gradcam` (see ``brainmri.predict``), because hooks
on a shared module see every forward that passes through it.

The layer comes from the registry (``registry.cam_layer``). :func:`prepare_for_cam` makes
the one Grad-CAM forward cheap: only the layer's own parameters require gradients, so
autograd records the graph from that layer on, and the backward pass runs through the
head alone instead of the whole network.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

CAM_METHODS: dict[str, type[BaseCAM]] = {"Grad-CAM": GradCAM, "Grad-CAM++": GradCAMPlusPlus, "HiResCAM": HiResCAM}
DEFAULT_METHOD = "Grad-CAM"


def prepare_for_cam(model: nn.Module, layer: nn.Module) -> None:
    """Freeze every parameter but the CAM layer's: the layer's output still requires grad, nothing before it does."""
    layer_params = list(layer.parameters())
    if not layer_params:
        raise ValueError(f"the Grad-CAM layer {type(layer).__name__} has no parameters to anchor gradients on")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in layer_params:
        p.requires_grad_(True)


@contextmanager
def cam_session(model: nn.Module, layer: nn.Module, method: str = DEFAULT_METHOD) -> Iterator[BaseCAM]:
    """A fresh CAM object whose hooks are removed on exit.

    Not the package's own ``with cam:``, whose ``__exit__`` prints and swallows IndexError.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of: {', '.join(CAM_METHODS)}")
    cam = CAM_METHODS[method](model=model, target_layers=[layer])
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def gradcam_batch(model: nn.Module, layer: nn.Module, x: torch.Tensor, method: str = DEFAULT_METHOD) -> tuple[np.ndarray, torch.Tensor]:
    """One forward and one backward over a batch: each image's heatmap for its own predicted class, and the logits.

    The backward runs from the sum of each image's target logit; in an eval-mode network images do not
    interact, so each image's gradient is the one it would get alone, and so is its heatmap.

    Args:
        x: (B, 3, H, W) normalised input.
    Returns:
        cams: (B, H, W) float32 in [0, 1] at the input's resolution, each scaled on its own; logits: (B, C), detached.
    """
    with cam_session(model, layer, method) as cam:
        maps = cam(input_tensor=x, targets=None)  # (B, H, W)
        logits = cam.outputs.detach()
    return maps.astype(np.float32), logits


def gradcam(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, method: str = DEFAULT_METHOD, target: int | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """One forward and one backward: the heatmap and the logits of the same pass.

    Args:
        x: (1, 3, H, W) normalised input.
        target: class to explain; None explains the predicted class.
    Returns:
        cam: (H, W) float32 in [0, 1] at the input's resolution; logits: (1, C), detached.
    """
    if target is None:
        maps, logits = gradcam_batch(model, layer, x, method)
        return maps[0], logits
    with cam_session(model, layer, method) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])  # (1, H, W)
        logits = cam.outputs.detach()
    return maps[0].astype(np.float32), logits


def view_box(width: int, height: int, cfg: dict) -> tuple[int, int, int, int]:
    """The part of a ``width`` x ``height`` image that timm's eval transform for ``cfg`` shows the model.

    The default "center" mode resizes the shorter side and crops the centre, so on a
    non-square image the model (and its heatmap) covers only a centred square. The box
    may reach outside the image ("border" mode pads).
    """
    crop_pct = cfg.get("crop_pct") or 0.875
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


def _colormap_lut(name: str = "jet") -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)


_LUT = _colormap_lut()


def overlay(image: Image.Image, cam: np.ndarray | None, opacity: float = 0.45) -> Image.Image:
    """Blend a colour-mapped heatmap over the image.

    Args:
        cam: (H, W) in [0, 1], the image's size; None shows the image alone.
        opacity: 0 shows the image alone, 1 the heatmap alone.
    """
    if cam is None:
        return image.convert("RGB")
    if cam.shape != (image.height, image.width):
        raise ValueError(f"heatmap is {cam.shape[1]} x {cam.shape[0]}, the image {image.width} x {image.height}")
    opacity = float(np.clip(opacity, 0.0, 1.0))
    heat = _LUT[(np.clip(cam, 0, 1) * 255).astype(np.uint8)].astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((base * (1 - opacity) + heat * opacity + 0.5).astype(np.uint8))
