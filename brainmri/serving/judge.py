"""The OOD judge's batched pass: does each image look like a brain MRI, by one model's features and statistics.

Whether an image looks like a brain MRI is a property of the image, so one model judges it for all
(brainmri.serving.predictor.Predictor's ``ood_model``); this is its pass when it is not the model asked for. A
multi-task judge (brainmri.models.multitask) outlines the tumour in that same forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from brainmri.ood import OODResult, pooled_features
from brainmri.segmentation import Outline
from brainmri.serving.device import place_batch
from brainmri.serving.loading import LoadedModel
from brainmri.serving.segment import own_outlines


def ood_check_batch(loaded: LoadedModel, images: Sequence[Image.Image]) -> list[OODResult | None]:
    """``loaded``'s OOD verdicts on ``images`` from one inference forward; Nones without statistics."""
    return judge_batch(loaded, images)[0]


def judge_batch(loaded: LoadedModel, images: Sequence[Image.Image]) -> tuple[list[OODResult | None], list[Outline] | None]:
    """``loaded``'s OOD verdicts on ``images`` from one inference forward (Nones without statistics, and no
    forward), and the outlines that forward drew when ``loaded`` is a multi-task model (else None)."""
    if loaded.ood is None:
        return [None] * len(images), None
    x = place_batch([loaded.transform(image) for image in images], loaded.device)
    with loaded.lock, torch.inference_mode():  # the lock: another request's Grad-CAM hooks must not see this forward
        features = pooled_features(loaded.plain_model, x).cpu()
        outlines = own_outlines(loaded.model, list(images), loaded.outline_rule)
    results = []
    for i, image in enumerate(images):
        result = loaded.ood.check(image, features[i : i + 1])
        result.checked_by = loaded.name
        results.append(result)
    return results, outlines
