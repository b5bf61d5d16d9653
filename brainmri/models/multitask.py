"""One encoder for class, heatmap and outline: the timm classifier itself, with smp's U-Net decoder on its stages.

:class:`UnetOnClassifier` is a whole timm classifier (``tf_efficientnet_lite0``: blocks, ``conv_head``, pooling,
the 4-class head) whose five stage outputs (timm ``forward_intermediates``) also feed segmentation-models-pytorch's
``UnetDecoder`` and ``SegmentationHead``. ``model(x)`` gives ``(masks, labels)`` as an smp model with ``aux_params``
does. The class path *is* the Lite0 classifier, ImageNet weights and ``conv_head`` included, so it can classify as
Lite0 does, and the heatmap's stages are Lite0's. (smp's own class head pools the deepest stage's 320 linear
projections with no non-linearity before the pool; docs/segmentation.md gives both designs' first epochs.)

Saved and loaded with huggingface_hub's ``PyTorchModelHubMixin`` (``config.json`` of the constructor's arguments,
``model.safetensors``), like smp's own models; ``config.json`` also names ``_model_class``, which marks a
segmentation folder (brainmri.models.checkpoint.is_segmenter, is_multitask), and the class names of its head.

:class:`MultiTaskClassifier` gives it the face the rest of the project expects of a timm classifier
(``pretrained_cfg``, ``forward_features``, ``forward_head(pre_logits=True)``, ``get_classifier``): its ``forward``
returns the class logits and keeps what the outline of that same encoder pass needs (``decode_last``).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from huggingface_hub import PyTorchModelHubMixin
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from brainmri.vocabulary import DATASET_LABELS

MODEL_CLASS = "UnetOnClassifier"  # config.json's _model_class for this architecture


class UnetOnClassifier(nn.Module, PyTorchModelHubMixin, library_name="brain-mri", tags=["image-segmentation", "image-classification"]):
    """A timm classifier with a U-Net decoder on its stages: ``forward(x) -> (masks (B, 1, H, W), logits (B, C))``.

    Args:
        backbone: the timm classifier (its stages must be a multiple of 32 in all, as a U-Net's are).
        num_classes: classes of its head.
        decoder_channels: the decoder's widths, finest last (one per stage).
        input_size: the side it is trained and served at; preprocessing squashes the whole slice to it.
        label_names: the class of each logit (a folder saved before this argument existed has the dataset's).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        decoder_channels: tuple[int, ...],
        input_size: int,
        label_names: tuple[str, ...] = DATASET_LABELS,
    ):
        super().__init__()
        if len(label_names) != num_classes:
            raise ValueError(f"{num_classes} classes but {len(label_names)} label names: {list(label_names)}")
        self.label_names = list(label_names)
        self.classifier = timm.create_model(backbone, num_classes=num_classes)
        stages = [f["num_chs"] for f in self.classifier.feature_info]  # (16, 24, 40, 112, 320) at strides 2 ... 32
        self.decoder = UnetDecoder([3, *stages], list(decoder_channels), n_blocks=len(decoder_channels))
        self.segmentation_head = SegmentationHead(decoder_channels[-1], 1, kernel_size=3)
        self.input_size = input_size
        # Squashed whole to the side, bilinear, as training decodes it (brainmri.segmentation.to_input), so the
        # outline maps back onto any upload's frame by a resize.
        cfg = dict(self.classifier.pretrained_cfg)
        cfg.update(input_size=(3, input_size, input_size), crop_pct=1.0, crop_mode="squash", interpolation="bilinear")
        cfg.pop("test_input_size", None)
        self.classifier.pretrained_cfg = cfg

    @property
    def pretrained_cfg(self) -> dict:
        """The preprocessing: mean and std of the backbone's timm config, at :attr:`input_size`."""
        return self.classifier.pretrained_cfg

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The classifier's last features before pooling (B, F, h, w) and its stage outputs, finest first."""
        return self.classifier.forward_intermediates(x)

    def segment(self, x: torch.Tensor, stages: list[torch.Tensor]) -> torch.Tensor:
        """Outline logits (B, 1, H, W) from the stage outputs (smp's decoder takes the input as its stage 0)."""
        return self.segmentation_head(self.decoder([x, *stages]))

    def segment_where(self, x: torch.Tensor, stages: list[torch.Tensor], keep: torch.Tensor | None) -> torch.Tensor:
        """:meth:`segment` for the images ``keep`` (B,) bool marks, and -inf logits (probability 0) for the others;
        every image when ``keep`` is None. The decoder costs as much as the encoder: it runs on the kept ones alone."""
        if keep is None or keep.all():
            return self.segment(x, stages)
        logits = torch.full((x.shape[0], 1, *x.shape[-2:]), float("-inf"), device=x.device)
        if keep.any():
            # boolean indexing drops channels_last, which the convolutions run faster in
            x, *stages = (t[keep].contiguous(memory_format=torch.channels_last) for t in (x, *stages))
            logits[keep] = self.segment(x, stages).float()
        return logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final, stages = self.features(x)
        return self.segment(x, stages), self.classifier.forward_head(final)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        config = {**(self._hub_mixin_config or {}), "_model_class": MODEL_CLASS}
        super().save_pretrained(save_directory, config=config, **kwargs)


class MultiTaskClassifier(nn.Module):
    """A timm classifier's face on :class:`UnetOnClassifier`: ``forward(x)`` gives the class logits. Every pass
    through ``forward_features`` (the class, the heatmap's forward, the OOD features) keeps its input and stage outputs,
    without autograd (the heatmap's backward needs the class path only), so that :meth:`decode_last` draws that pass's
    outline afterwards, for the images that need one: one encoder pass gives both. The decoder costs as much as the
    encoder, so it runs only when asked, and not on a slice whose outline the gate would empty anyway."""

    def __init__(self, net: UnetOnClassifier):
        super().__init__()
        self.net = net
        self.pretrained_cfg = net.pretrained_cfg
        self.num_classes = net.classifier.num_classes
        self.last_class_logits: torch.Tensor | None = None  # (B, C) of the last pass: the outline's gate
        self._last_pass: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # its input and stage outputs, detached

    def get_classifier(self) -> nn.Module:
        return self.net.classifier.get_classifier()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's last features before pooling (B, F, h, w); what the same pass's outline needs is kept."""
        final, stages = self.net.features(x)
        with torch.no_grad():
            self.keep_last(x, stages, self.net.classifier.forward_head(final))
        return final

    def keep_last(self, x: torch.Tensor, stages: list[torch.Tensor], class_logits: torch.Tensor) -> None:
        """Keep a pass's input, stage outputs and class logits (B, C) for :meth:`decode_last`: a pass run elsewhere
        (brainmri.serving.cam_onnx) gives its outline as one through :meth:`forward_features` does."""
        self.last_class_logits = class_logits.detach().float()
        self._last_pass = (x.detach(), [s.detach() for s in stages])

    @torch.no_grad()
    def decode_last(self, keep: torch.Tensor | None = None) -> torch.Tensor | None:
        """The last pass's outline logits (B, 1, S, S), float32; None before any pass. With ``keep`` (B,) bool, only
        those images are decoded, and the others' logits are -inf (probability 0, no outline)."""
        if self._last_pass is None:
            return None
        x, stages = self._last_pass
        return self.net.segment_where(x, stages, keep).float()

    def forget_last(self) -> None:
        """Drop what the last pass kept (its input, stage outputs and class logits): nothing of a request outlives it."""
        self._last_pass = self.last_class_logits = None

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class logits (B, C); with ``pre_logits`` the pooled features (B, F) the OOD check scores."""
        return self.net.classifier.forward_head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
