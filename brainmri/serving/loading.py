"""Build a model for serving from its checkpoint folder: the ``LoadedModel`` every pass runs through.

The builder of the serving package (timm's ``_builder``): a checkpoint folder in, a model out in eval mode,
batch norm folded, no parameter requiring grad, on the serving device, with everything derived from the folder
(labels, preprocessing, OOD statistics, temperature) and from the registry (Grad-CAM layers).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from brainmri.calibration import load_temperature
from brainmri.data.preprocess import data_config, eval_transform
from brainmri.explain import FUSING_METHODS, prepare_for_cam
from brainmri.models.checkpoint import count_tensors_bytes, label_names, load_checkpoint, read_config
from brainmri.models.registry import cam_layer, get_spec
from brainmri.ood import OODStats, load_stats
from brainmri.segmentation import OutlineRule, read_rule
from brainmri.serving.cam_onnx import OnnxLayerCAM, layercam_runner
from brainmri.serving.device import place_model, resolve_device
from brainmri.serving.onnx_passes import features_through_onnx, onnx_serving, prefix_through_onnx, weights_key
from brainmri.serving.overlap import shared_weights_copy
from brainmri.serving.rewrites import fold_batchnorm, same_padding_in_kernel


@dataclass
class LoadedModel:
    """A model ready to serve, with everything derived from its checkpoint folder."""

    name: str
    folder: Path
    model: nn.Module
    labels: list[str]
    cfg: dict  # preprocessing, from the checkpoint's pretrained_cfg
    layer: nn.Module  # Grad-CAM layer, from the registry
    ood: OODStats | None  # on the CPU, whatever the model's device: the verdict is a few small products
    temperature: float  # probabilities are softmax(logits / temperature); 1.0 when uncalibrated
    nbytes: int
    stages: list[nn.Module] = field(default_factory=list)  # shallower layers LayerCAM fuses with ``layer``, from the registry
    cam_size: int | None = None  # side the heatmap pass runs at, when not the input size (registry)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where ``model`` is and its passes run
    lock: threading.Lock = field(default_factory=threading.Lock)
    twin: nn.Module | None = None  # ``model``'s modules again over its tensors: its plain forward beside the heatmap's
    outline_rule: OutlineRule = field(default_factory=OutlineRule)  # how a multi-task model's own outline is decoded (outline.json)
    layercam: OnnxLayerCAM | None = None  # LayerCAM's forward and backward in ONNX Runtime, where written out for the model

    def __post_init__(self) -> None:
        self.transform = eval_transform(self.cfg)
        self.set_cam_size(self.cam_size)

    def set_cam_size(self, size: int | None) -> None:
        """Run the heatmap's pass at ``size`` pixels (None or the input size: the forward that classifies draws it)."""
        side = self.cfg["input_size"][-1]
        self.cam_size = size if size and size != side else None
        resized = {**self.cfg, "input_size": (3, size, size)}
        self.cam_transform = eval_transform(resized) if self.cam_size else None
        if self.cam_transform is None:
            self.twin = None  # only a pass at a second size runs beside the plain forward
        elif self.twin is None:
            self.twin = shared_weights_copy(self.model)  # brainmri.serving.overlap; guarded by ``lock`` like ``model``

    @property
    def plain_model(self) -> nn.Module:
        """What a pass without a heatmap runs through: the twin where there is one (no heatmap's hooks on it, and its
        whole forward in ONNX Runtime where that is on, brainmri.serving.onnx_passes), else ``model``."""
        return self.twin if self.twin is not None else self.model

    def module_name(self, module: nn.Module) -> str:
        return self._module_names.get(module, type(module).__name__)

    @cached_property
    def _module_names(self) -> dict[nn.Module, str]:
        """Each module of ``model`` by its dotted name, found once: a heatmap names its layers on every request."""
        return {m: n for n, m in self.model.named_modules()}

    def cam_layers(self, method: str) -> list[nn.Module]:
        """The layers ``method`` weighs: the CAM layer, and the shallower stages when it fuses them."""
        return [self.layer, *(self.stages if method in FUSING_METHODS else [])]

    def cam_layer_name(self, method: str) -> str:
        """Those layers as named in the model, joined by "+" ("bn2", "bn2+blocks.4+blocks.2")."""
        return "+".join(self.module_name(m) for m in self.cam_layers(method))


def load_model(name: str, folder: str | Path, device: torch.device | str | None = None) -> LoadedModel:
    """Rebuild a checkpoint for serving: eval mode, batch norm folded, "SAME" padding in the kernel, channels_last, no
    parameter requiring grad (brainmri.serving.rewrites).

    Args:
        name: the registry name it is served under.
        folder: the checkpoint folder.
        device: where it runs; None for ``BRAIN_MRI_DEVICE`` (brainmri.serving.device.resolve_device).
    """
    folder = Path(folder)
    device = resolve_device(None if device is None else str(device))
    model = load_checkpoint(folder)
    registry_name = read_config(folder).get("registry_name", name)
    layer = cam_layer(model, registry_name)
    spec = get_spec(registry_name)
    stages = spec.cam_stages(model)
    fold_batchnorm(model, keep=[layer, *stages])  # on the CPU, before the move: the folded weights are computed once
    same_padding_in_kernel(model, keep=[layer, *stages])
    prepare_for_cam(model)
    model = place_model(model, device)
    loaded = LoadedModel(
        name,
        folder,
        model,
        label_names(folder),
        data_config(model),
        layer,
        load_stats(folder),
        load_temperature(folder),
        count_tensors_bytes(model),
        stages,
        spec.cam_size,
        device,
        outline_rule=read_rule(folder),
    )
    if onnx_serving(device):  # the passes no heatmap differentiates, through ONNX Runtime (brainmri.serving.onnx_passes)
        key, side = weights_key(folder), loaded.cfg["input_size"][-1]
        # The heatmap's pass, at its own size (brainmri.serving.classify.heatmaps) or at the input size, where it also
        # classifies (classify.own_size_pass). Made before the prefix moves: the runner copies the model's modules, and a
        # copy made after would hold placeholders
        loaded.layercam = layercam_runner(loaded.model, [layer, *stages], key, loaded.cam_size or side)
        # The prefix then serves the other heatmap methods alone (and LayerCAM should its export fail): exported when
        # one first asks, not at start-up
        prefix_side = None if loaded.layercam is not None else loaded.cam_size or side
        prefix_through_onnx(loaded.model, [layer, *stages], key, prefix_side)
        if loaded.twin is not None:
            features_through_onnx(loaded.twin, key, side)
    return loaded
