"""The graphs that :mod:`brainmri.serving.cam_onnx` exports: a timm EfficientNet-Lite's forward, keeping what its
backward reads, and that backward written out by hand.

ONNX has no autograd, so the backward is written out here, for exactly what a Lite's blocks are made of once batch
norm is folded (brainmri.serving.rewrites.fold_batchnorm): 1x1 and depthwise convolutions, ReLU6 (or ReLU), residual sums,
the kept ``bn2`` with its activation, an average pool and a linear head. A convolution's gradient is its transpose,
an activation's a mask of where it passed its input on, a sum's a copy. Anything else (squeeze-excitation, another
activation, a hook on a block's inside) is refused by :func:`writable`, and the heatmap keeps the torch path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.models._efficientnet_blocks import InvertedResidual
from torch import nn

from brainmri.serving.onnx_passes import is_efficientnet
from brainmri.serving.rewrites import Conv2dSameInKernel

# The activations whose gradient is a mask read from their output. An identity's would read nothing, and the exporter
# drops a graph input nothing reads, so a block with one is not written out.
_ACTS = (nn.ReLU6, nn.ReLU)


def _act(module: nn.Module) -> nn.Module | None:
    """The activation a folded norm left (``Sequential(drop, act)``, brainmri.serving.rewrites.fold_batchnorm), or None when
    the module is anything else."""
    if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.Identity):
        return module[1] if type(module[1]) in (*_ACTS, nn.Identity) else None
    return None


def _plain_conv(conv: nn.Module, depthwise: bool) -> bool:
    """A convolution :func:`conv_input_grad` transposes: depthwise (one group a channel) or else dense, no dilation,
    zero padding."""
    return (
        type(conv) in (nn.Conv2d, Conv2dSameInKernel)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and (conv.groups == conv.in_channels == conv.out_channels if depthwise else conv.groups == 1)
    )


def _plain_block(block: nn.Module) -> bool:
    """An inverted residual whose gradient :class:`BackwardGraph` writes out: folded norms, ReLU6 or ReLU after the 1x1
    expansion and the depthwise convolution and nothing after the projection, no SE, no anti-aliasing, no
    space-to-depth stem, no hooks inside."""
    convs = [getattr(block, n) for n in ("conv_pw", "conv_dw", "conv_pwl")]
    return (
        type(block) is InvertedResidual
        and all(isinstance(getattr(block, n), nn.Identity) for n in ("se", "aa", "drop_path"))
        and getattr(block, "conv_s2d", None) is None
        and type(_act(block.bn1)) in _ACTS
        and type(_act(block.bn2)) in _ACTS
        and isinstance(_act(block.bn3), nn.Identity)
        and _plain_conv(convs[0], depthwise=False)
        and _plain_conv(convs[1], depthwise=True)
        and _plain_conv(convs[2], depthwise=False)
        and convs[0].kernel_size == convs[2].kernel_size == (1, 1)
        and convs[0].stride == convs[2].stride == (1, 1)
        and not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in block.modules())
    )


def _masked(g: torch.Tensor, act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``g`` where ``act`` passed its input on, read from its output ``h`` (ReLU6: 0 < h < 6, as torch's backward), zero
    elsewhere. A mask cast to float and multiplied: in ONNX Runtime a Where node took twice as long (5.2 against 2.6 ms
    over Lite0's backward at 288 px)."""
    if isinstance(act, nn.ReLU6):
        return g * ((h > 0) & (h < 6)).to(g.dtype)
    if isinstance(act, nn.ReLU):
        return g * (h > 0).to(g.dtype)
    raise ValueError(f"no written-out gradient for {type(act).__name__}")  # writable() admits none other


def turned_kernel(conv: nn.Conv2d) -> torch.Tensor:
    """A stride-1 convolution's kernel for its transpose: turned round, and for a dense one its channels swapped."""
    if conv.groups != 1 and not conv.groups == conv.in_channels == conv.out_channels:
        raise ValueError("grouped convolutions other than depthwise are not written out")
    weight = conv.weight.detach().flip(-1, -2)
    return (weight if conv.groups > 1 else weight.transpose(0, 1)).contiguous()


def conv_input_grad(conv: nn.Conv2d, g: torch.Tensor, side: tuple[int, int], turned: torch.Tensor | None = None) -> torch.Tensor:
    """The gradient at a convolution's input of size ``side`` (H, W), from ``g`` (1, out, h, w) at its output.
    ``turned``: :func:`turned_kernel`, made before an export traces this (flipped in the trace, it would be a Slice of
    step -1, which the exporter cannot fold)."""
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1:
        return F.conv2d(g, conv.weight.transpose(0, 1))  # a 1x1 convolution's transpose is one too: a plain Conv node
    k, s = conv.kernel_size, conv.stride
    if isinstance(conv, Conv2dSameInKernel):  # TensorFlow's "SAME": p // 2 zeros before, the rest after
        pads = [max((math.ceil(i / st) - 1) * st + kk - i, 0) for i, kk, st in zip(side, k, s)]
        before = [p // 2 for p in pads]
    else:
        pads, before = [2 * p for p in conv.padding], list(conv.padding)
    padded = [i + p for i, p in zip(side, pads)]
    extra = [pi - ((o - 1) * st + kk) for pi, o, st, kk in zip(padded, g.shape[-2:], s, k)]  # rows the stride never read
    if s == (1, 1):  # a stride-1 transpose is a convolution by the kernel turned round: a plain Conv node, as fast as the forward
        weight = turned_kernel(conv) if turned is None else turned
        if not isinstance(conv, Conv2dSameInKernel) and all(kk - 1 - p >= 0 for kk, p in zip(k, conv.padding)):
            return F.conv2d(g, weight, padding=[kk - 1 - p for kk, p in zip(k, conv.padding)], groups=conv.groups)  # no crop
        full = F.conv2d(F.pad(g, (k[1] - 1, k[1] - 1 + extra[1], k[0] - 1, k[0] - 1 + extra[0])), weight, groups=conv.groups)
    else:
        full = F.conv_transpose2d(g, conv.weight, stride=s, output_padding=extra, groups=conv.groups)
    return full[..., before[0] : before[0] + side[0], before[1] : before[1] + side[1]]


class ForwardGraph(nn.Module):
    """One image's forward: (logits, ``bn2``'s output, each hooked stage's output, each ``kept`` stage's output, then
    the two activations of every block the backward crosses, in order). It holds the modules themselves, so that a
    later brainmri.serving.onnx_passes.prefix_through_onnx, which swaps some of them out of the model, leaves it whole.
    ``kept``: stages whose outputs the caller wants besides (a multi-task model's decoder reads its encoder's)."""

    def __init__(self, model: nn.Module, stages: list[int], kept: Sequence[int] = ()):
        super().__init__()
        self.stages, self.kept, self.stop = stages, list(kept), min(stages) + 1  # the backward runs down to stage stop - 1's output
        self.stem = nn.Sequential(model.conv_stem, model.bn1)
        self.prefix = nn.ModuleList(model.blocks[: self.stop])  # stages 0 ... stop - 1: no backward crosses them
        self.tail = nn.ModuleList(model.blocks[self.stop :])  # stages stop, stop + 1, ...
        self.conv_head, self.bn2, self.classifier = model.conv_head, model.bn2, model.classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outputs, saved = {}, []
        for i, stage in enumerate(self.prefix):
            x = outputs[i] = stage(x)
        for i, stage in enumerate(self.tail, start=self.stop):
            for block in stage:
                h1 = block.bn1(block.conv_pw(x))
                h2 = block.bn2(block.conv_dw(h1))
                y = block.bn3(block.conv_pwl(h2))
                x = y + x if block.has_skip else y
                saved += [h1, h2]
            outputs[i] = x
        features = self.bn2(self.conv_head(x))  # (1, D, h, w), after its activation: LayerCAM's deepest layer
        logits = self.classifier(features.mean((2, 3)))  # the average pool, flattened
        return (logits, features, *(outputs[i] for i in self.stages), *(outputs[i] for i in self.kept), *saved)


class BackwardGraph(nn.Module):
    """The gradient of one class's logit at ``bn2`` and at each hooked stage, from that class's row of the head's
    weights (1, D), ``bn2``'s output and the saved activations (the forward's outputs from
    :attr:`brainmri.serving.cam_onnx.OnnxLayerCAM.saved_from` on, after the hooked and the kept stages')."""

    def __init__(self, model: nn.Module, stages: list[int]):
        super().__init__()
        self.stages, self.stop = stages, min(stages) + 1
        self.tail = nn.ModuleList(model.blocks[self.stop :])
        self.conv_head, self.act = model.conv_head, model.bn2.act
        convs = [block.conv_dw for stage in self.tail for block in stage if block.conv_dw.stride == (1, 1)]
        self.turned = {id(conv): turned_kernel(conv) for conv in convs}  # constants of the graph, by module
        bn = model.bn2  # kept, not folded (the heatmap reads its output): its affine map's slope, per channel
        self.register_buffer("bn_slope", (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()[None, :, None, None])

    def forward(self, row: torch.Tensor, features: torch.Tensor, *saved: torch.Tensor) -> tuple[torch.Tensor, ...]:
        g_features = (row / (features.shape[-2] * features.shape[-1]))[:, :, None, None].expand_as(features)
        g = _masked(g_features, self.act, features) * self.bn_slope
        g = conv_input_grad(self.conv_head, g, tuple(features.shape[-2:]))  # 1x1: the side is the output's
        grads, j = {}, len(saved) // 2
        for i in reversed(range(self.stop, self.stop + len(self.tail))):
            grads[i] = g  # at stage i's output
            for block in reversed(self.tail[i - self.stop]):
                j -= 1
                h1, h2 = saved[2 * j], saved[2 * j + 1]
                g_in = _masked(conv_input_grad(block.conv_pwl, g, tuple(h2.shape[-2:])), _act(block.bn2), h2)
                g_in = conv_input_grad(block.conv_dw, g_in, tuple(h1.shape[-2:]), self.turned.get(id(block.conv_dw)))
                g_in = _masked(g_in, _act(block.bn1), h1)
                g_in = conv_input_grad(block.conv_pw, g_in, tuple(h1.shape[-2:]))
                g = g_in + g if block.has_skip else g_in
        grads[self.stop - 1] = g
        return (g_features, *(grads[i] for i in self.stages))


def writable(model: nn.Module, layers: Sequence[nn.Module]) -> list[int] | None:
    """The indices in ``model.blocks`` of the stages among ``layers`` (after ``bn2``, which must come first), when
    :class:`BackwardGraph` can write this model's gradient out; else None."""
    if not is_efficientnet(model) or not layers or layers[0] is not model.bn2:
        return None
    index = {id(stage): i for i, stage in enumerate(model.blocks)}
    stages = [index.get(id(layer)) for layer in layers[1:]]
    bn2, pool = model.bn2, getattr(model, "global_pool", None)
    ok = (
        stages
        and None not in stages
        and type(bn2) is BatchNormAct2d
        and bn2.weight is not None
        and isinstance(bn2.drop, nn.Identity)
        and type(bn2.act) in _ACTS
        and type(model.conv_head) is nn.Conv2d
        and model.conv_head.kernel_size == model.conv_head.stride == (1, 1)
        and model.conv_head.groups == 1
        and getattr(pool, "pool_type", None) == "avg"
        and type(model.classifier) is nn.Linear
        and all(_plain_block(b) for i in range(min(stages) + 1, len(model.blocks)) for b in model.blocks[i])
    )
    return stages if ok else None
