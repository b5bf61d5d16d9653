"""LayerCAM of a timm EfficientNet-Lite through ONNX Runtime: its forward and its backward, each one exported graph.

The served default's heatmap pass (Lite0 at 288 px) took 54 ms of a request's CPU with only its stem and first
blocks in ONNX Runtime: the rest of its forward, and its backward, ran in torch because LayerCAM needs the gradient
(docs/serving.md). The two graphs, the backward written out by hand, are brainmri.serving.cam_graphs'; this module
exports them, runs them and fuses the maps. A model they cannot write out keeps the torch path:
:func:`layercam_runner` returns None.

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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import nn

from brainmri.explain import fuse_stage_maps
from brainmri.models.multitask import MultiTaskClassifier
from brainmri.serving.cam_graphs import BackwardGraph, ForwardGraph, writable
from brainmri.serving.onnx_passes import export_graph, run_per_image, shared_session
from brainmri.serving.overlap import shared_weights_copy

_logger = logging.getLogger(__name__)
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
        self.forward_graph, self.backward_graph = ForwardGraph(model, stages, kept), BackwardGraph(model, stages)
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
        try:
            runs = run_per_image(sessions[0], x)
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
