"""Models rewritten for inference, the same function in fewer passes over memory: batch norm folded into the
convolution before it, and TensorFlow's "SAME" padding done in the kernel rather than on a copy of the input.

Applied by the loaders (``loading``, ``segment``) to eval-mode models; tests/test_serving_speed.py checks the
answers do not move.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, Conv2dSame
from timm.layers.padding import get_same_padding
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

# Exactly these: a subclass may normalise differently. timm's BatchNormAct2d is norm, dropout, then activation.
FOLDABLE_NORMS = (nn.BatchNorm2d, BatchNormAct2d)


def fold_batchnorm(model: nn.Module, keep: Iterable[nn.Module] = ()) -> int:
    """Fold each batch norm into the convolution registered just before it, keeping its activation.

    The model computes the same function (to float rounding; tests/test_serving_speed.py), without one
    pass over every activation map forward and backward: Lite0's heatmap pass, 41 -> 37 ms an image.
    timm's blocks and the simple CNNs register each convolution right before the norm that follows it.
    The modules in ``keep`` (CAM layers) and a convolution right before one stay as they are, so a layer's
    output, and the heatmap read from it, do not move. Eval mode only. Returns how many were folded.
    """
    if model.training:
        raise ValueError("fold batch norm in eval mode only: in training it normalises by the batch's statistics")
    kept = {id(m) for m in keep}
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:]):
            foldable = type(norm) in FOLDABLE_NORMS and norm.running_mean is not None
            if not (isinstance(conv, nn.Conv2d) and foldable and conv.out_channels == norm.num_features):
                continue
            if id(conv) in kept or id(norm) in kept:
                continue
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
            setattr(parent, name, nn.Sequential(norm.drop, norm.act) if hasattr(norm, "act") else nn.Identity())
            folded += 1
    return folded


class Conv2dSameInKernel(nn.Conv2d):
    """timm's ``Conv2dSame`` (TensorFlow's "SAME" padding) without padding a copy of its input.

    "SAME" pads ``p = max((ceil(i / s) - 1) * s + k - i, 0)`` along a side of size ``i``, one more zero after than
    before when ``p`` is odd, and a convolution pads both sides alike. timm pads a copy of the input first: in a
    stride-2 depthwise convolution that is the whole expanded activation map (scripts/bench_same_padding.py). Here
    the convolution pads ``ceil(p / 2)`` on both sides, and when ``p`` is odd the kernel gets a leading zero row
    (column), which skips the one zero too many before: the same products and sums, so the same numbers, bit for bit
    (tests/test_serving_speed.py). Dilation 1 only: a dilated kernel's zero row would shift by the dilation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sides = [int(i) for i in x.shape[-2:]]  # ints while an ONNX export traces it too (brainmri.serving.onnx_passes)
        pads = [get_same_padding(i, k, s, 1) for i, k, s in zip(sides, self.kernel_size, self.stride)]  # timm's own rule
        if torch.onnx.is_in_onnx_export():  # ONNX wants a weight of known shape: timm's way, a Pad node before the Conv
            x = F.pad(x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2))
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)
        weight = self.weight
        if pads[0] % 2 or pads[1] % 2:
            weight = F.pad(weight, (pads[1] % 2, 0, pads[0] % 2, 0))  # (out, in/groups, k + 1, k + 1): tiny, unlike x
        return F.conv2d(x, weight, self.bias, self.stride, [(p + 1) // 2 for p in pads], 1, self.groups)


def same_padding_in_kernel(model: nn.Module, keep: Iterable[nn.Module] = ()) -> int:
    """Replace each of timm's ``Conv2dSame`` by a :class:`Conv2dSameInKernel` over the same weight tensors (the
    state dict is unchanged), except the modules in ``keep`` and dilated ones. Returns how many were replaced."""
    kept = {id(m) for m in keep}
    replaced = 0
    for parent in list(model.modules()):
        for name, conv in list(parent.named_children()):
            if type(conv) is not Conv2dSame or id(conv) in kept or conv.dilation != (1, 1):
                continue
            new = Conv2dSameInKernel(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                groups=conv.groups,
                bias=conv.bias is not None,
                device="meta",
            )
            new.weight, new.bias = conv.weight, conv.bias
            new.train(conv.training)
            setattr(parent, name, new)
            replaced += 1
    return replaced
