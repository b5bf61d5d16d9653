"""LayerCAM of a timm EfficientNet-Lite through ONNX Runtime: its forward and its backward, each one exported graph.

The served default's heatmap pass (Lite0 at 288 px) took 54 ms of a request's CPU with only its stem and first
blocks in ONNX Runtime: the rest of its forward, and its backward, ran in torch because LayerCAM needs the gradient
(docs/serving.md). ONNX has no autograd, so the backward is written out here, for exactly what a Lite's blocks are
made of once batch norm is folded (brainmri.runtime.fold_batchnorm): 1x1 and depthwise convolutions, ReLU6 (or
ReLU), residual sums, the kept ``bn2`` with its activation, an average pool and a linear head. A convolution's
gradient is its transpose, an activation's a mask of where it passed its input on, a sum's a copy. Anything else
(squeeze-excitation, another activation, a hook on a block's inside) keeps the torch path: :func:`layercam_runner`
returns None.

Two graphs, so that the forward need not wait for the class it explains (brainmri.explain.DeferredClass): the
forward returns the logits, each hooked layer's output, any stage output the caller keeps (a multi-task model's
decoder reads its encoder's) and every activation whose mask the backward reads; the
backward takes those and the explained class's row of the head's weights, and returns each hooked layer's
gradient. The maps are then LayerCAM's, fused as :class:`brainmri.explain.LayerCAM` fuses them: the same heatmap to
float rounding (tests/test_cam_onnx.py holds it to autograd's).

It serves two passes: the default's heatmap at a size of its own (brainmri.serving.classify.heatmaps), and a heatmap
at the input size, whose forward also classifies (classify.own_size_pass). For a multi-task model
(brainmri.models.multitask) that forward also returns the encoder's stages its decoder reads, so one pass through
ONNX Runtime gives the class, the heatmap and what the outline is decoded from.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.image import scale_cam_image
from timm.layers import BatchNormAct2d
from timm.models._efficientnet_blocks import InvertedResidual
from torch import nn

from brainmri.explain import fuse_stage_maps
from brainmri.models.multitask import MultiTaskClassifier
from brainmri.runtime import Conv2dSameInKernel
from brainmri.serving.onnx_passes import export_graph, is_efficientnet, shared_session
from brainmri.serving.overlap import shared_weights_copy

_logger = logging.getLogger(__name__)
# The activations whose gradient is a mask read from their output. An identity's would read nothing, and the exporter
# drops a graph input nothing reads, so a block with one is not written out.
_ACTS = (nn.ReLU6, nn.ReLU)


def _act(module: nn.Module) -> nn.Module | None:
    """The activation a folded norm left (``Sequential(drop, act)``, brainmri.runtime.fold_batchnorm), or None when
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
    """An inverted residual whose gradient :class:`_Backward` writes out: folded norms, ReLU6 or ReLU after the 1x1
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


class _Forward(nn.Module):
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


class _Backward(nn.Module):
    """The gradient of one class's logit at ``bn2`` and at each hooked stage, from that class's row of the head's
    weights (1, D), ``bn2``'s output and the saved activations (the forward's outputs from
    :attr:`OnnxLayerCAM.saved_from` on, after the hooked and the kept stages')."""

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
    :class:`_Backward` can write this model's gradient out; else None."""
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


Sessions = tuple[Any, Any]  # (forward, backward): onnxruntime.InferenceSession each


@dataclass
class CamForward:
    """A batch's forward through :class:`OnnxLayerCAM`: what its caller reads, and what the backward needs."""

    logits: torch.Tensor  # (B, C)
    pooled: torch.Tensor  # (B, D) ``bn2``'s output averaged: the pre-logits features, which the OOD check scores
    kept: list[torch.Tensor]  # the ``kept`` stages' outputs, (B, C_i, h_i, w_i) each, channels_last
    side: tuple[int, int]  # the input's (H, W)
    runs: list[list[np.ndarray]] = field(repr=False)  # each image's forward outputs, as the session returned them


class OnnxLayerCAM:
    """LayerCAM over ``bn2`` and whole stages of a timm EfficientNet-Lite, its forward and backward in ONNX Runtime,
    one image at a time; sessions shared by ``key`` and the stages, as brainmri.serving.onnx_passes shares them.
    ``kept``: stages whose outputs the forward returns besides (:attr:`CamForward.kept`); ``keeper``: the multi-task
    model whose classifier this is, which keeps each forward's stages for its outline as its own forward would."""

    def __init__(self, model: nn.Module, stages: list[int], key: str, kept: Sequence[int] = (), keeper: MultiTaskClassifier | None = None):
        # Over a copy of its modules (the same tensors): a heatmap's hooks on ``model`` must not see the export's forward,
        # which may run beside them (:meth:`prepare`)
        model = shared_weights_copy(model)
        self.forward_graph, self.backward_graph = _Forward(model, stages, kept), _Backward(model, stages)
        self.head = model.classifier.weight.detach().float().cpu().numpy()  # (classes, D)
        self.stages, self.kept, self.keeper = stages, list(kept), keeper
        self.key = f"{key}:cam{''.join(f'+blocks.{i}' for i in stages)}{''.join(f':keep.{i}' for i in self.kept)}"
        self._held: dict[int, Sessions | None] = {}  # by side: what keeps the shared sessions alive
        self._lock = threading.Lock()

    def prepare(self, side: int) -> threading.Thread:
        """Make ``side``'s sessions in a thread of their own, so that what start-up does besides exporting goes on
        meanwhile (exports take turns: the exporter is not thread-safe); a request that comes sooner waits for them
        in :meth:`sessions`."""
        # Not a daemon: the interpreter's exit waits for it (torch and ONNX Runtime abort a process that ends inside them)
        thread = threading.Thread(target=self.sessions, args=(side,), name="brainmri-layercam-export")
        thread.start()
        return thread

    def sessions(self, side: int) -> Sessions | None:
        """The forward's and the backward's sessions for ``side`` x ``side`` images, made on first use; None where
        either failed (logged: the heatmap then runs through autograd, to the same numbers)."""
        with self._lock:
            if side not in self._held:
                self._held[side] = self._make(side)
            return self._held[side]

    @property
    def saved_from(self) -> int:
        """Where the saved activations start among the forward's outputs: after the logits, bn2's, the hooked stages'
        and the kept stages' (what the backward graph takes after the class's row and bn2's output)."""
        return 2 + len(self.stages) + len(self.kept)

    def _make(self, side: int) -> Sessions | None:
        try:
            with torch.inference_mode(False), torch.no_grad():
                x = torch.zeros(1, 3, side, side)
                outputs = self.forward_graph(x)
        except Exception as e:  # noqa: BLE001  (a model this module misjudged: autograd serves it)
            _logger.warning("%s: LayerCAM stays with autograd (%s)", self.key, str(e).splitlines()[0][:200])
            return None
        saved = outputs[self.saved_from :]
        forward = shared_session(f"{self.key}:forward", (3, side, side), lambda: export_graph(self.forward_graph, (x,)))
        inputs = (torch.zeros(1, self.head.shape[1]), outputs[1], *saved)
        backward = shared_session(f"{self.key}:backward", (3, side, side), lambda: export_graph(self.backward_graph, inputs))
        if forward is None or backward is None:
            return None
        if len(backward.get_inputs()) != len(inputs):  # the exporter drops an input nothing reads
            read = len(backward.get_inputs())
            _logger.warning("%s: LayerCAM stays with autograd (its backward reads %d of %d inputs)", self.key, read, len(inputs))
            return None
        return forward, backward

    def forward(self, x: torch.Tensor) -> CamForward | None:
        """The forward of ``x`` (B, 3, H, W), its stages kept by the ``keeper`` where there is one; None where this
        cannot run it (a non-square input, a session that failed or fails now: the caller runs autograd's, which keeps
        them in its stead, brainmri.serving.classify)."""
        if x.shape[-1] != x.shape[-2]:
            return None
        sessions = self.sessions(int(x.shape[-1]))
        if sessions is None:
            return None
        images = x.detach().float().contiguous().numpy()
        try:
            runs = [sessions[0].run(None, {"x": images[i : i + 1]}) for i in range(len(images))]
        except Exception as e:  # noqa: BLE001  (ONNX Runtime refusing an input: autograd draws it instead)
            _logger.warning("%s: this heatmap through autograd (%s)", self.key, str(e).splitlines()[0][:200])
            return None

        def batch(index: int) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([run[index] for run in runs]))

        kept = [batch(i).contiguous(memory_format=torch.channels_last) for i in range(2 + len(self.stages), self.saved_from)]
        done = CamForward(batch(0), batch(1).mean((2, 3)), kept, (int(x.shape[-2]), int(x.shape[-1])), runs)
        if self.keeper is not None:  # its outline is decoded from this forward, as from one of its own
            self.keeper.keep_last(x, done.kept, done.logits)
        return done

    def backward(self, done: CamForward, classes: Sequence[int]) -> np.ndarray | None:
        """(B, H, W) heatmaps in [0, 1] at the input's size, each for its class in ``classes``, from :meth:`forward`'s
        ``done``; None where ONNX Runtime refuses (logged: the caller runs autograd's)."""
        backward = self.sessions(done.side[-1])[1]
        names = [i.name for i in backward.get_inputs()]  # the row, bn2's output, the saved activations
        hooked = 2 + len(self.stages)
        maps = []
        try:
            for run, c in zip(done.runs, classes, strict=True):
                feed = dict(zip(names, [self.head[int(c)][None], run[1], *run[self.saved_from :]], strict=True))
                maps.append(layercam_maps(run[1:hooked], backward.run(None, feed), done.side))
        except Exception as e:  # noqa: BLE001
            _logger.warning("%s: this heatmap through autograd (%s)", self.key, str(e).splitlines()[0][:200])
            return None
        return np.concatenate(maps).astype(np.float32)

    def __call__(self, x: torch.Tensor, classes: Callable[[], Sequence[int]]) -> np.ndarray | None:
        """(B, H, W) heatmaps in [0, 1] of ``x`` (B, 3, H, W), each for its class in ``classes()`` (read after the
        forwards: another pass may still be choosing them); None where this cannot draw them (:meth:`forward`,
        :meth:`backward`: the caller runs autograd's, brainmri.serving.classify.heatmaps)."""
        done = self.forward(x)
        if done is None:
            return None
        wanted = classes()  # outside the backward's try: another pass's failure is the request's, not a reason to retry here
        return self.backward(done, wanted)


def layercam_maps(acts: Sequence[np.ndarray], grads: Sequence[np.ndarray], side: tuple[int, int]) -> np.ndarray:
    """LayerCAM fused over layers, as :class:`brainmri.explain.LayerCAM` computes it through pytorch_grad_cam: per
    layer ReLU(sum over channels of ReLU(grad) * activation), scaled to [0, 1] at the input's ``side`` (H, W); then
    :func:`~brainmri.explain.fuse_stage_maps`. acts, grads: (B, C, h, w) each. Returns (B, H, W)."""
    per_layer = []
    for a, g in zip(acts, grads):
        cam = np.maximum((np.maximum(g, 0) * a).sum(axis=1), 0)
        per_layer.append(scale_cam_image(cam, (side[1], side[0]))[:, None])
    return fuse_stage_maps(np.concatenate(per_layer, axis=1))


def layercam_runner(model: nn.Module, layers: Sequence[nn.Module], key: str, side: int | None = None) -> OnnxLayerCAM | None:
    """An :class:`OnnxLayerCAM` for ``model``'s heatmap over ``layers``, its sessions for ``side`` begun now, in the
    background, when given; None for a model whose gradient is not written out here. A multi-task model
    (brainmri.models.multitask) is its classifier, whose forward also returns the stages its decoder reads."""
    kept: list[int] = []
    keeper = model if isinstance(model, MultiTaskClassifier) else None
    if keeper is not None:
        model = keeper.net.classifier
        # timm's stage ends count the stem as 0: a decoder stage read from the stem is not among the blocks' outputs
        kept = [end - 1 for end in getattr(model, "stage_ends", [0])]
        if min(kept) < 0:
            return None
    stages = writable(model, layers)
    if stages is None:
        return None
    runner = OnnxLayerCAM(model, stages, key, kept, keeper)
    if side:
        runner.prepare(side)
    return runner
