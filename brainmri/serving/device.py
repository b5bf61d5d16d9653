"""Where the serving passes run: the device, chosen from ``BRAIN_MRI_DEVICE``, and models and batches moved to it.

``auto`` (the default) is CUDA when torch sees a GPU or the Space runs on ZeroGPU, else the CPU. On the CPU
nothing changes from before there was a choice: the same passes, in channels_last for oneDNN's convolutions.
On ZeroGPU the app's process has no GPU of its own: a model moved to ``cuda`` there is held by the ``spaces``
package and lands on the GPU that each ``@spaces.GPU`` call is lent (brainmri.serving.zerogpu).

On CUDA, TF32 is switched off for matrix products and convolutions, so that the answers are the CPU's to float
rounding (scripts/cuda_check.py checks probabilities within 1e-3 and heatmap peaks within a few pixels); the
models are small enough that full float32 costs little on a GPU.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from brainmri.runtime import pick_device
from brainmri.settings import on_zerogpu, serving_device

_logger = logging.getLogger(__name__)


def resolve_device(name: str | None = None) -> torch.device:
    """The device to serve on: ``name`` ("auto", "cpu", "cuda", "cuda:N"), else ``BRAIN_MRI_DEVICE``.

    ValueError naming the setting when it asks for a GPU that torch does not see (outside ZeroGPU, where
    the GPU appears only inside a decorated call)."""
    device = pick_device(name or serving_device(), on_zerogpu())
    if device.type == "cuda":
        exact_float32()
    return device


def exact_float32() -> None:
    """No TF32 in CUDA's matrix products and convolutions: float32 as on the CPU (process-wide, as torch keeps it)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device``, in channels_last (faster convolutions with oneDNN on the CPU and cuDNN on a GPU)."""
    return model.to(device=device, memory_format=torch.channels_last)


def place_batch(images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(3, H, W) tensors stacked into one (B, 3, H, W) channels_last batch on ``device``."""
    return torch.stack(images).to(device).contiguous(memory_format=torch.channels_last)
