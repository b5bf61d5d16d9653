"""ONNX Runtime for the CPU passes that need no gradient: the same numbers to float rounding, in less CPU time.

On a host without native bf16 (AVX2), one thread, batch 1, Lite0's forward at 192 px took 15.1 ms in torch and 8.4
ms in ONNX Runtime (its MLAS kernels); the one encoder's encoder 18.7 against 13.4 ms (docs/serving.md). So
a served model routes through it what no heatmap differentiates:

- :func:`features_through_onnx`: a classifier's whole ``forward_features``, in the copy no heatmap hooks (the twin:
  the plain pass at the input size and the OOD judge's pass);
- :func:`prefix_through_onnx`: the heatmap model's stem and blocks below its shallowest hooked stage, whose
  gradient LayerCAM never reads (brainmri.explain anchors the gradient at that stage);
- :func:`encoder_through_onnx`: the one encoder's encoder when it serves the outline and its second opinion
  (brainmri.serving.segment); its decoder stays in torch, under the gate.

The heatmap pass above the prefix, and its backward, are brainmri.serving.cam_onnx's, for the models whose gradient it
writes out.

Each wrapped module is exported once per input shape, for one image (a batch runs image by image), its session shared
by every copy of the model that asks with the same key (the batch workers' copies hold the same weights) and freed with
the last of them (the model cache's eviction frees it). Where a gradient is needed (training, or a caller that wants
one) the module runs in torch as before. ``BRAIN_MRI_ONNX=0`` switches it off; without ``onnxruntime`` and ``onnx``
installed nothing changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainmri.settings import on_zerogpu, onnx_runtime

_logger = logging.getLogger(__name__)

# (key, one image's shape) -> InferenceSession, while something holds it (an OnnxForward's, or an OnnxLayerCAM's, _held)
_sessions: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_sessions_lock = threading.Lock()


def weights_key(folder: Path) -> str:
    """What names a folder's weights for the shared sessions: its path and its weight files' sizes and times (a
    folder rewritten in place gets new sessions)."""
    folder = Path(folder).resolve()
    stamp = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(folder.glob("*.safetensors"))]
    return f"{folder.name}@{hashlib.sha1('|'.join([str(folder), *stamp]).encode()).hexdigest()[:10]}"


def onnx_serving(device: torch.device) -> bool:
    """Whether this process routes its no-gradient passes through ONNX Runtime: on the CPU, off ZeroGPU (whose passes
    run on the lent GPU, and whose ``spaces`` package patches torch where the exporter traces), ``BRAIN_MRI_ONNX`` not
    0, and both packages importable."""
    return (
        device.type == "cpu"
        and not on_zerogpu()
        and onnx_runtime()
        and importlib.util.find_spec("onnxruntime") is not None
        and importlib.util.find_spec("onnx") is not None
    )


def _export(module: nn.Module, shape: tuple[int, ...]) -> bytes:
    """``module`` as ONNX (opset 17) for one float32 image of ``shape`` (C, H, W); its outputs named y0, y1, ...
    Traced on zeros (made outside any inference mode the caller is in: the exporter needs plain tensors)."""
    with torch.inference_mode(False):
        return export_graph(module, (torch.zeros((1, *shape)),))


def export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """``module`` as ONNX (opset 17), traced on ``inputs`` (named x, x1, x2, ...), outside any inference mode the caller
    is in (the exporter needs plain tensors); its outputs named y0, y1, ..."""
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad():
        outputs = module(*inputs)
        count = len(outputs) if isinstance(outputs, tuple) else 1
        with warnings.catch_warnings():  # the exporter's notes on constant shapes and its own deprecation, not ours to act on
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                inputs,
                buffer,
                opset_version=17,
                dynamo=False,  # the TorchScript exporter: no onnxscript, and it traces timm's and smp's modules as they run
                input_names=["x", *(f"x{i}" for i in range(1, len(inputs)))],
                output_names=[f"y{i}" for i in range(count)],
            )
    return buffer.getvalue()


def shared_session(key: str, shape: tuple[int, ...], graph: Callable[[], bytes]) -> Any:
    """The session named ``key`` for inputs of ``shape``, shared while anything holds it: made from ``graph()`` when none
    is held; None where the export or the session failed, logged (the caller then runs in torch; a failure is not
    kept, so another copy of the model tries again)."""
    with _sessions_lock:  # one export per key and shape, even when both workers load at once
        session = _sessions.get((key, shape))
        if session is None:
            start = time.perf_counter()
            try:
                session = _sessions[key, shape] = _new_session(graph())
            except Exception as e:  # noqa: BLE001  (an exporter or runtime that cannot take this module: torch can)
                _logger.warning("%s at %s stays in torch: its ONNX export failed (%s)", key, shape, str(e).splitlines()[0][:200])
            else:
                _logger.info("ONNX Runtime session for %s at %s in %.1f s", key, shape, time.perf_counter() - start)
    return session


def _new_session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # As many threads as each batch worker's torch (brainmri.runtime.configure_torch_threads: one on 2 cores with two
    # workers); no spinning: a waiting thread would spin on the core the other worker needs.
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # as torch does here (brainmri.runtime)
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


class _Held(dict):
    """A module's sessions by shape. A copy of the module (brainmri.serving.overlap.shared_weights_copy: the same
    weights) shares them: a session cannot be deep-copied, and need not be."""

    def __deepcopy__(self, memo: dict) -> _Held:
        return self


class OnnxForward(nn.Module):
    """``module``'s forward through ONNX Runtime wherever no gradient is asked for; in torch where one is.

    Outputs are float32 tensors on the CPU (4-D ones channels_last, as the served torch layers run), a tuple when
    ``module`` returns several. ``key`` names the weights: copies of one model share a session by it.
    """

    def __init__(self, module: nn.Module, key: str):
        super().__init__()
        self.module, self.key = module, key
        self._trainable = any(p.requires_grad for p in module.parameters())
        self._held = _Held()  # its sessions by shape: what keeps them alive

    def session(self, shape: tuple[int, ...]) -> Any:
        """The session for images of ``shape`` (C, H, W), exported on first use; None where the export or the session
        failed, logged: those images then run in torch, to the same numbers, and the app serves on."""
        shape = tuple(int(n) for n in shape)
        if shape not in self._held:
            self._held[shape] = shared_session(self.key, shape, lambda: _export(self.module, shape))
        return self._held[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if torch.is_grad_enabled() and (x.requires_grad or self._trainable):
            return self.module(x)
        session = self.session(x.shape[1:])
        if session is None:
            return self.module(x)
        runs = run_per_image(session, x)
        outputs = [torch.from_numpy(np.concatenate(parts)) for parts in zip(*runs)]
        outputs = [y.contiguous(memory_format=torch.channels_last) if y.dim() == 4 else y for y in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def run_per_image(session: Any, x: torch.Tensor) -> list[list[np.ndarray]]:
    """Each image of ``x`` (B, ...) through ``session`` (input "x") alone, in float32: the outputs of each, in order.

    Image by image: a session then only ever plans one image's buffers, and its memory arena stays that size.
    Batches of up to 8 grew the server by 0.9 GB under load (docs/serving.md); one thread gains little from them."""
    images = x.detach().float().contiguous().numpy()
    return [session.run(None, {"x": images[i : i + 1]}) for i in range(len(images))]


def is_efficientnet(model: nn.Module) -> bool:
    """A timm EfficientNet's ``forward_features``: conv_stem, bn1, blocks (stages), conv_head, bn2."""
    return all(hasattr(model, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")) and isinstance(
        model.blocks, nn.Sequential
    )


def features_through_onnx(model: nn.Module, key: str, side: int | None = None) -> bool:
    """Route a timm EfficientNet's whole ``forward_features`` through ONNX Runtime (a copy no heatmap hooks: its
    modules after the stem become identities), exported now for ``side`` x ``side`` images when given (else on first
    use). False, and nothing changed, for another architecture."""
    if not is_efficientnet(model):
        return False
    chain = nn.Sequential(model.conv_stem, model.bn1, model.blocks, model.conv_head, model.bn2)
    model.conv_stem = OnnxForward(chain, f"{key}:features")
    model.bn1, model.blocks, model.conv_head, model.bn2 = nn.Identity(), nn.Sequential(), nn.Identity(), nn.Identity()
    if side:
        model.conv_stem.session((3, side, side))
    return True


def shallowest_block(model: nn.Module, hooked: list[nn.Module]) -> int:
    """Index of the first of ``model.blocks`` that holds (or is) one of ``hooked``; ``len(blocks)`` when none does."""
    for i, block in enumerate(model.blocks):
        inside = set(map(id, block.modules()))
        if any(id(m) in inside for m in hooked):
            return i
    return len(model.blocks)


def prefix_through_onnx(model: nn.Module, hooked: list[nn.Module], key: str, side: int | None = None) -> int:
    """Route a timm EfficientNet's stem and the blocks below the shallowest of ``hooked`` (the heatmap's layers)
    through ONNX Runtime, exported now for ``side`` x ``side`` images when given; those blocks become identities, so
    every module a hook names keeps its name and place. Returns how many blocks moved (0: nothing changed; also for
    another architecture, or a hook on the stem)."""
    if not is_efficientnet(model) or any(m in (model.conv_stem, model.bn1) for m in hooked):
        return 0
    stop = shallowest_block(model, hooked)
    if stop == 0:
        return 0
    chain = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:stop])
    model.conv_stem, model.bn1 = OnnxForward(chain, f"{key}:blocks[:{stop}]"), MovedToOnnx("bn1")
    for i in range(stop):
        model.blocks[i] = MovedToOnnx(f"blocks.{i}")
    if side:
        model.conv_stem.session((3, side, side))
    return stop


class MovedToOnnx(nn.Identity):
    """The place of a module that now runs inside an :class:`OnnxForward` earlier in the model: it passes its input on.
    A hook on it would see another module's output, so a forward with one fails, naming the module."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._forward_hooks or self._forward_pre_hooks or self._backward_hooks:
            raise RuntimeError(f"{self.name} runs inside ONNX Runtime here: a hook on it needs BRAIN_MRI_ONNX=0")
        return x


class _Encoder(nn.Module):
    """The one encoder's ``features`` as a flat tuple (final, stage 1, ..., stage 5), as an export needs it."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        final, stages = self.classifier.forward_intermediates(x)
        return (final, *stages)


def encoder_through_onnx(
    net: nn.Module, key: str, side: int | None = None
) -> Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
    """Route a ``UnetOnClassifier``'s (brainmri.models.multitask) ``features`` through ONNX Runtime, for this served
    copy only (an instance attribute over the class's method, which training and the heatmap's copy keep), exported
    now for ``side`` x ``side`` images when given."""
    runner = OnnxForward(_Encoder(net.classifier), f"{key}:encoder")
    if side:
        runner.session((3, side, side))

    def features(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        final, *stages = runner(x)
        return final, list(stages)

    object.__setattr__(net, "features", features)  # not nn.Module's __setattr__: a plain callable, not a submodule
    return features
