"""Out-of-distribution check: does an upload look like the brain MRI slices a model was trained on?

The serving half: the statistics' format and the per-image verdict. Fitting and measuring them
live in train.ood. Three tests, any of which flags an image:

1. colour: MRI slices are greyscale; an image whose channels differ more than any
   training image's by a margin is a photo or a colour scan.
2. contrast: a (nearly) uniform image is blank, whatever the model says about it.
3. features: the Mahalanobis distance of the model's pooled penultimate features to the
   nearest training-class mean, with one covariance shared by the classes (Lee et al.,
   2018), above a high percentile of the *validation* images' distances.

The statistics are fitted per checkpoint on the same train/validation split as training
(brainmri.data.split.checkpoint_split) and stored beside it as ``ood.safetensors`` + ``ood.json``,
added to its sha256 manifest. Training fits them as it finishes a checkpoint; by hand:

    python -m train.ood fit checkpoints/tf_efficientnet_lite0 --data ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from brainmri.data.records import sha256
from brainmri.models.checkpoint import OOD_CONFIG, OOD_TENSORS, WEIGHTS, add_to_manifest

_logger = logging.getLogger(__name__)


DEFAULT_PERCENTILE = 99.0  # the distance threshold's, of validation distances: about 1% of real slices flagged by design


@dataclass
class OODResult:
    """The verdict on one image, with the numbers behind it."""

    in_distribution: bool
    reasons: list[str]
    distance: float | None  # Mahalanobis distance to the nearest class mean
    threshold: float | None
    colourfulness: float
    contrast: float
    checked_by: str = ""  # the model whose features and statistics gave the verdict
    percentile: float | None = None  # of validation distances the threshold sits at, as fitted (None: unknown)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @property
    def unfamiliar_only(self) -> bool:
        """Flagged by its features' distance alone: grey and not flat, so perhaps a brain MRI unlike the training
        slices, rather than some other picture (brainmri.vocabulary.UNLIKE_TRAINING)."""
        far = self.distance is not None and self.threshold is not None and self.distance > self.threshold
        return not self.in_distribution and far and len(self.reasons) == 1


@dataclass
class OODStats:
    """Fitted statistics of one checkpoint; ``precision`` is the inverse shared covariance."""

    means: torch.Tensor  # (C, D)
    precision: torch.Tensor  # (D, D)
    threshold: float  # distance above which an image is flagged
    colour_threshold: float
    contrast_threshold: float
    meta: dict  # percentile, counts, the weights' sha256 the stats were fitted on

    def __post_init__(self) -> None:
        # precision = L L^T, so (x - m)^T precision (x - m) = |L^T x - L^T m|^2: one (D, D) product an image
        # instead of one a class (Lite0: 3.3 -> 0.9 ms a request). None when precision is not positive definite.
        factor, info = torch.linalg.cholesky_ex(self.precision.double())
        self._whiten = None if int(info) else factor
        self._white_means = None if int(info) else self.means.double() @ factor  # (C, D)

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B,) Mahalanobis distance to the nearest class mean."""
        if self._whiten is not None:
            white = features.double() @ self._whiten  # (B, D)
            return torch.cdist(white, self._white_means).min(dim=1).values.float()
        diff = features.double()[:, None, :] - self.means.double()[None]  # (B, C, D)
        d2 = torch.einsum("bcd,de,bce->bc", diff, self.precision.double(), diff)
        return d2.clamp_min(0).min(dim=1).values.sqrt().float()

    def flags(self, colour: np.ndarray, contrast: np.ndarray, distance: np.ndarray) -> dict[str, np.ndarray]:
        """The rule, one place for it: which of N images each test flags (bool (N,) each), from their measures."""
        return {
            "colour": np.asarray(colour) > self.colour_threshold,
            "contrast": np.asarray(contrast) < self.contrast_threshold,
            "distance": np.asarray(distance) > self.threshold,
        }

    def check(self, image: Image.Image, features: torch.Tensor) -> OODResult:
        """Verdict on one RGB image and its (1, D) features."""
        small = _small_array(image)
        colour, contrast = colourfulness(small), grey_contrast(small)
        distance = float(self.distance(features)[0])
        flagged = {test: bool(f) for test, f in self.flags(colour, contrast, distance).items()}
        reasons = []  # each figure beside what it is measured against, in words (train.ood fits the limits)
        if flagged["colour"]:
            limit = self.colour_threshold
            reasons.append(
                f"it is in colour (colour spread {colour:.1f}, where every training slice stays under {limit:.1f});"
                " MRI slices are greyscale"
            )
        if flagged["contrast"]:
            limit = self.contrast_threshold
            reasons.append(f"it is almost uniform (grey-level spread {contrast:.1f}, where every training slice has more than {limit:.1f})")
        percentile = self.meta.get("percentile")
        if flagged["distance"]:
            share = f"{percentile:g}% of" if percentile else "most"
            reasons.append(
                f"its features are far from every training class (distance {distance:.1f}, where {share} validation slices"
                f" are within {self.threshold:.1f})"
            )
        return OODResult(not reasons, reasons, distance, self.threshold, colour, contrast, percentile=percentile)

    def save(self, folder: str | Path) -> None:
        """Write ood.safetensors + ood.json (what load_stats reads) and add both to the folder's manifest."""
        folder = Path(folder)
        save_file({"means": self.means.float().contiguous(), "precision": self.precision.float().contiguous()}, folder / OOD_TENSORS)
        config = {
            "threshold": self.threshold,
            "colour_threshold": self.colour_threshold,
            "contrast_threshold": self.contrast_threshold,
            **self.meta,
            # Checked at load even if a later write_manifest drops these files from the manifest.
            "tensors_sha256": sha256((folder / OOD_TENSORS).read_bytes()),
        }
        (folder / OOD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        add_to_manifest(folder, [OOD_TENSORS, OOD_CONFIG])


def load_stats(folder: str | Path) -> OODStats | None:
    """The folder's OOD statistics; None when absent (logged at info: expected for all but the judge) or fitted on
    other weights (a warning).

    ValueError when the tensors do not match the sha256 recorded beside them.
    """
    folder = Path(folder)
    if not (folder / OOD_CONFIG).is_file() or not (folder / OOD_TENSORS).is_file():
        # Expected for all but the model that judges uploads (brainmri.serving.Predictor's ood_model).
        _logger.info("%s has no OOD statistics (fit them with: python -m train.ood fit %s)", folder, folder)
        return None
    config = json.loads((folder / OOD_CONFIG).read_text())
    if config.get("weights_sha256") != sha256((folder / WEIGHTS).read_bytes()):
        _logger.warning("%s: OOD statistics were fitted on other weights; refit with python -m train.ood fit", folder)
        return None
    if config.pop("tensors_sha256", None) != sha256((folder / OOD_TENSORS).read_bytes()):
        raise ValueError(f"{folder / OOD_TENSORS} does not match its sha256 in {OOD_CONFIG}")
    tensors = load_file(folder / OOD_TENSORS)
    thresholds = {k: float(config.pop(k)) for k in ("threshold", "colour_threshold", "contrast_threshold")}
    return OODStats(tensors["means"], tensors["precision"], **thresholds, meta=config)


# ---------------------------------------------------------------- image measures


def _small_array(image: Image.Image, side: int = 128) -> np.ndarray:
    im = image.convert("RGB")
    if max(im.size) > side:
        im = im.copy()
        im.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def colourfulness(image: Image.Image | np.ndarray) -> float:
    """Mean over pixels of max - min across R, G, B: 0 for greyscale."""
    a = image if isinstance(image, np.ndarray) else _small_array(image)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]  # three planes, not a reduction over an axis of 3 (18x slower in numpy)
    return float((np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)).mean())


def grey_contrast(image: Image.Image | np.ndarray) -> float:
    """Standard deviation of the grey levels (0-255)."""
    a = image if isinstance(image, np.ndarray) else _small_array(image)
    return float(((a[..., 0] + a[..., 1] + a[..., 2]) / 3).std())  # the mean over the channels, summed in their order


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D): the pooled penultimate features, the classifier's input.

    The one definition of the OOD features: fitting (train.ood), the judge's pass and the classifier's pass all take
    them from here, through timm's ``forward_features`` / ``forward_head(pre_logits=True)``, with no hook. The one
    exception computes the same thing: the LayerCAM graph for ONNX Runtime averages ``bn2``'s output itself
    (brainmri.serving.cam_graphs), and is written out only for a model whose head pools by that average (``writable``).
    """
    return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: (B, C) logits and the (B, D) :func:`pooled_features` they come from.

    The logits are the classifier applied to the features: the model's own forward in eval mode (every registry
    model; tests/test_registry.py).
    """
    features = pooled_features(model, x)
    return model.get_classifier()(features), features


class KeepFeatures(nn.Module):
    """``model`` as Grad-CAM calls it (x -> logits) through :func:`logits_and_features`, keeping the features.

    So a heatmap's forward also gives the OOD features, with no hook: ``features`` holds the last forward's, detached.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, features = logits_and_features(self.model, x)
        self.features = features.detach()
        return logits
