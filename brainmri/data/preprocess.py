"""Preprocessing, the same for training, evaluation and the app: derived from the model's own pretrained_cfg (timm
``resolve_model_data_config``) in :func:`data_config` and :func:`eval_transform`; the images decoded once as uint8
(:func:`decode_records`), normalised per batch, and augmented on whatever device they are on (:func:`augment_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torch import nn
from tqdm import tqdm

from brainmri.data.records import ImageRecords


def data_config(model: nn.Module) -> dict:
    """The model's preprocessing (input size, interpolation, crop, mean, std), from its pretrained_cfg."""
    return resolve_model_data_config(model)


def eval_transform(cfg: dict, normalize: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform for ``cfg``: PIL image -> (3, H, W) tensor.

    With ``normalize=False`` it gives the resized uint8 tensor, which is how training
    caches the data once; :func:`normalize_batch` then finishes the same preprocessing.
    """
    return create_transform(**cfg, is_training=False, normalize=normalize)


def normalize_batch(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, normalised with the model's mean and std."""
    mean = torch.tensor(cfg["mean"], device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg["std"], device=x.device).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


def decode_records(records: ImageRecords, cfg: dict, desc: str = "decoding") -> torch.Tensor:
    """Decode and resize every image once: uint8 (N, 3, H, W), ready for :func:`normalize_batch`."""
    transform = eval_transform(cfg, normalize=False)
    size = cfg["input_size"][1:]
    out = torch.empty((len(records), 3, *size), dtype=torch.uint8)
    for i in tqdm(range(len(records)), desc=desc, leave=False, mininterval=2):
        out[i] = transform(records.open(i))
    return out


def augment_batch(
    x: torch.Tensor, generator: torch.Generator | None = None, masks: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Augmentation suited to MRI slices, per sample, on whatever device ``x`` is on.

    Flips, a small affine (rotation +-10 deg, scale 0.9-1.1, shift +-6%), brightness and
    contrast; no hue jitter, since the scans are greyscale. Written on batched tensors
    (a few lines) so that it runs on the GPU as well, rather than per image on the CPU.

    Args:
        x: uint8 (B, 3, H, W).
        masks: optional uint8 (B, 1, H, W), 0 or 255: moved by the same flip and affine as their images.
    Returns:
        uint8 (B, 3, H, W); with ``masks``, the pair (images, masks).
    """
    b, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device="cpu").to(dev) * (hi - lo) + lo

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.9, 1.1)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, uniform(-0.06, 0.06)], 1), torch.stack([sin * flip, cos, uniform(-0.06, 0.06)], 1)],
        1,
    )  # (B, 2, 3)
    xf = x.float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xf = F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brightness = uniform(-20, 20).view(b, 1, 1, 1)
    contrast = uniform(0.85, 1.15).view(b, 1, 1, 1)
    mean = xf.mean(dim=(1, 2, 3), keepdim=True)
    xf = (xf - mean) * contrast + mean + brightness
    out = xf.clamp(0, 255).round().to(torch.uint8)
    if masks is None:
        return out
    moved = F.grid_sample(masks.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out, torch.where(moved >= 127.5, 255, 0).to(torch.uint8)
