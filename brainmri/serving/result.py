"""What one model says about one image: the ``Prediction`` every serving pass fills in, and its JSON for the API.

The same in words, for people, is the app's (brainmri.app.summary)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from brainmri.ood import OODResult
from brainmri.segmentation import Outline, mask_data_url
from brainmri.vocabulary import LOOKS_NOT_MRI, NOT_MRI, UNLIKE_TRAINING, UNLIKE_TRAINING_SHORT


@dataclass
class Prediction:
    """What one model says about one image. Plain data (arrays, a PIL image, floats), so it pickles: under
    ZeroGPU it is made in the GPU worker process and sent back to the app's (brainmri.serving.zerogpu)."""

    model: str
    image: Image.Image  # the decoded RGB image the heatmap belongs to
    probabilities: dict[str, float]
    top_class: str
    tumour_probability: float | None  # P(any tumour) = 1 - P(no tumour) (brainmri.vocabulary)
    ood: OODResult | None  # None when the checkpoint has no OOD statistics
    cam: np.ndarray  # (H, W) float32 in [0, 1], the image's size
    cam_method: str
    temperature: float
    latency_ms: float
    cam_layer: str = ""  # the module(s) the heatmap weighs, as named in the model ("bn2", "features.11", "bn2+blocks.4+blocks.2")
    device: str = "cpu"  # where the passes ran ("cpu", "cuda:0")
    outline: Outline | None = None  # the segmenter's tumour mask in the image's frame; None: no segmenter, or not an MRI
    outlined_by: str = ""  # the model whose decoder drew ``outline``: the classifier itself when it has one
    heatmap_by: str = ""  # the model whose heatmap ``cam`` is, when not ``model`` (an ensemble's explainer)

    @property
    def cam_in_tumour(self) -> bool | None:
        """Whether the heatmap's peak falls inside the outlined tumour; None without an outline or with an empty one
        (no tumour outlined: nothing to fall into)."""
        if self.outline is None or self.outline.empty:
            return None
        h, w = self.outline.mask.shape
        x, y = self.cam_peak
        return bool(self.outline.mask[min(h - 1, int(y * h)), min(w - 1, int(x * w))])

    @property
    def explained_cam(self) -> np.ndarray | None:
        """The heatmap to show: none over an image that does not look like a brain MRI, where it would explain nothing."""
        return self.cam if self.in_distribution else None

    @property
    def cam_peak(self) -> list[float]:
        """The heatmap's maximum as [x, y] in 0-1 coordinates of the image (x to the right, y down), at pixel centres."""
        y, x = np.unravel_index(int(np.argmax(self.cam)), self.cam.shape)
        return [round(float(x + 0.5) / self.cam.shape[1], 4), round(float(y + 0.5) / self.cam.shape[0], 4)]

    @property
    def in_distribution(self) -> bool:
        return self.ood is None or self.ood.in_distribution

    @property
    def prediction(self) -> str | None:
        """The predicted class; None when the image does not look like a brain MRI."""
        return self.top_class if self.in_distribution else None

    def answered(self, digits: int) -> tuple[dict[str, float] | None, float | None]:
        """The class probabilities and P(any tumour), rounded to ``digits``, as the API and the tool give them: both
        None over an image that does not look like a brain MRI, where the model's argmax answers a question the image
        does not pose (:attr:`probabilities` keeps what it computed, for study)."""
        if not self.in_distribution:
            return None, None
        tumour = None if self.tumour_probability is None else round(self.tumour_probability, digits)
        return {k: round(v, digits) for k, v in self.probabilities.items()}, tumour

    @property
    def ood_verdict(self) -> str | None:
        """The OOD verdict as a label: "does not look like a brain MRI", or, when only the features' distance flagged
        the image, "unlike the brain MRI slices the models learned from"; None for an image that passed."""
        if self.in_distribution:
            return None
        return UNLIKE_TRAINING if self.ood.unfamiliar_only else LOOKS_NOT_MRI

    @property
    def ood_verdict_short(self) -> str | None:
        """:attr:`ood_verdict` for a table cell or a caption."""
        if self.in_distribution:
            return None
        return UNLIKE_TRAINING_SHORT if self.ood.unfamiliar_only else NOT_MRI

    def label_value(self) -> dict[str, float] | str:
        """For ``gr.Label``: the class probabilities, or the OOD verdict instead of a tumour class."""
        return self.probabilities if self.in_distribution else self.ood_verdict

    def details(self) -> dict:
        """JSON-ready details, the API's third output. Over an image that does not look like a brain MRI the class,
        the probabilities and the tumour probability are null, as in the tool's answer (:meth:`answered`), and so is
        everything about the heatmap (none is shown); ``ood`` gives the reasons."""
        mri = self.in_distribution
        probabilities, tumour = self.answered(6)
        return {
            "model": self.model,
            "prediction": self.prediction,
            "top_class": self.prediction,  # as "prediction" (until 2026-12-07 the argmax, a flagged image's too)
            "probabilities": probabilities,
            "tumour_probability": tumour,
            "tumor_probability": tumour,  # old key: goes in 0.2
            "in_distribution": self.in_distribution,
            "ood": None if self.ood is None else self.ood.to_dict(),
            # no heatmap is shown over a flagged image: nothing to describe, no peak to point at
            "cam_method": self.cam_method if mri else None,
            "cam_layer": self.cam_layer if mri else None,
            "heatmap_by": (self.heatmap_by or self.model) if mri else None,
            "cam_peak": self.cam_peak if mri else None,
            "temperature": round(self.temperature, 4),  # the heatmap model's; an ensemble's members each have their own
            "image_size": list(self.image.size),
            "latency_ms": round(self.latency_ms, 1),
            # The segmenter's outline, in the image's frame (after EXIF orientation): a 0/255 PNG at the image's size,
            # its box [x0, y0, x1, y1] in 0-1 (null when empty), its share of the image. All null without an outline.
            "tumour_mask": None if self.outline is None else mask_data_url(self.outline.mask),
            "tumour_box": None if self.outline is None or self.outline.empty else list(self.outline.box),
            "tumour_area": None if self.outline is None else round(self.outline.area, 6),
            "outlined_by": self.outlined_by or None,
            "cam_in_tumour": self.cam_in_tumour,
        }
