"""One encoder for class, heatmap and outline: an smp multi-task U-Net seen as a timm classifier.

The folder is what smp's ``save_pretrained`` writes for a ``Unet(..., aux_params=...)`` (train.multitask), so
``smp.from_pretrained(FOLDER)`` rebuilds it with the library alone and ``model(x)`` gives ``(masks, labels)``.
:class:`MultiTaskClassifier` gives it the face the rest of the project expects of a classifier (timm's
``pretrained_cfg``, ``forward_features``, ``forward_head(pre_logits=True)``, ``get_classifier``), so calibration,
evaluation, the OOD fit and the heatmap treat it like any timm model. Its ``forward`` also runs the decoder on the
same encoder features, without autograd, and keeps the outline's logits of that forward in ``last_mask_logits``:
one forward (and the heatmap's backward, through the encoder alone) gives the class, the heatmap and the outline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from brainmri.models.checkpoint import CONFIG

AUX_PARAMS = "aux_params"  # smp's config.json key of the classification head's arguments


def is_multitask(folder: str | Path) -> bool:
    """An smp folder whose model also classifies (its config.json has ``aux_params`` with classes)."""
    path = Path(folder) / CONFIG
    try:
        return path.is_file() and bool((json.loads(path.read_text()).get(AUX_PARAMS) or {}).get("classes"))
    except json.JSONDecodeError:
        return False


class MultiTaskClassifier(nn.Module):
    """A classifier's face on an smp segmentation model with a classification head.

    Args:
        net: ``smp.Unet`` (or another smp architecture) built with ``aux_params``.
        input_size: the side it was trained at; preprocessing squashes the whole slice to it.
    """

    def __init__(self, net: nn.Module, input_size: int):
        super().__init__()
        if getattr(net, "classification_head", None) is None:
            raise ValueError("this segmentation model has no classification head (smp aux_params)")
        self.net = net
        self.head = net.classification_head  # pool, flatten, dropout, linear, activation (smp ClassificationHead)
        self.num_classes = self.head[3].out_features
        cfg = dict(net.encoder.model.pretrained_cfg)  # mean and std of the encoder's own timm config
        # Squashed whole to the side, bilinear, as training decoded it (brainmri.segmentation.to_input), so the outline
        # maps back onto any upload's frame by a resize.
        cfg.update(input_size=(3, input_size, input_size), crop_pct=1.0, crop_mode="squash", interpolation="bilinear")
        cfg["num_classes"] = self.num_classes
        self.pretrained_cfg = cfg
        self.last_mask_logits: torch.Tensor | None = None  # (B, 1, S, S) of the latest forward, no autograd

    @property
    def encoder(self) -> nn.Module:
        """The timm feature extractor both heads read (its ``blocks`` are the heatmap's stages)."""
        return self.net.encoder.model

    def get_classifier(self) -> nn.Module:
        return self.head[3]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's stage outputs, finest first (smp's encoder: the input itself, then each stride)."""
        return self.net.encoder(x)

    def forward_head(self, features: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """Class logits (B, C) from the deepest stage; ``pre_logits``: its pooled features (B, F), the OOD check's."""
        pooled = self.head[1](self.head[0](features[-1]))
        return pooled if pre_logits else self.head[4](self.head[3](self.head[2](pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        with torch.no_grad():  # the heatmap's backward needs the class path only
            self.last_mask_logits = self.net.segmentation_head(self.net.decoder(features)).float()
        return self.forward_head(features)
