"""The classifier's batched pass: probabilities (temperature-calibrated), heatmap and the model's own OOD verdict
of each image, from one forward and one backward over the batch, on the model's device; and, for a multi-task model
(brainmri.models.multitask), the tumour outline its decoder drew in that same forward."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from PIL import Image

from brainmri.calibration import calibrated_probs
from brainmri.explain import DEFAULT_METHOD, cam_to_image_size, gradcam_batch
from brainmri.ood import KeepFeatures, logits_and_features
from brainmri.serving.device import place_batch
from brainmri.serving.loading import LoadedModel
from brainmri.serving.overlap import alongside
from brainmri.serving.result import Prediction
from brainmri.serving.segment import own_outlines
from brainmri.vocabulary import any_tumour_probability


def plain_pass(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) logits and (B, D) pooled features of one forward without autograd."""
    with torch.no_grad():
        return logits_and_features(model, x)


def run_model_batch(
    loaded: LoadedModel, images: Sequence[Image.Image], method: str = DEFAULT_METHOD, overlap: bool = False
) -> list[Prediction]:
    """Probabilities (temperature-calibrated), heatmap and OOD verdict of each RGB image, from one forward and one
    backward pass over all of them; each image's answer is the one it gets alone (tests/test_batching.py).

    A model whose heatmap runs at another size (``cam_size``) takes one more forward: the class and its
    probabilities come from the input size it was trained at, the heatmap explains that class at ``cam_size``.
    With ``overlap`` that forward runs in another thread, through ``loaded.twin``, while the heatmap's runs
    (brainmri.serving.overlap); the answers are the same.
    """
    start = time.perf_counter()
    x = place_batch([loaded.transform(image) for image in images], loaded.device)
    x_cam = None
    if loaded.cam_transform is not None:  # outside the lock, which guards the model passes alone
        x_cam = place_batch([loaded.cam_transform(image) for image in images], loaded.device)
    layers = loaded.cam_layers(method)
    with loaded.lock:
        if x_cam is None:  # the heatmap's forward gives the logits and the OOD features
            kept = KeepFeatures(loaded.model)
            cams, logits = gradcam_batch(kept, layers, x, method)
            pooled = kept.features
        elif overlap and loaded.twin is not None:  # the input-size forward beside the cam_size one
            plain = alongside(plain_pass, loaded.twin, x)
            cams, _ = gradcam_batch(loaded.model, layers, x_cam, method, lambda: plain.result()[0].argmax(1).tolist())
            logits, pooled = plain.result()
        else:  # the input-size forward gives them, the cam_size one the heatmap
            logits, pooled = plain_pass(loaded.model, x)
            cams, _ = gradcam_batch(loaded.model, layers, x_cam, method, logits.argmax(1).tolist())
        outlines = own_outlines(loaded.model, list(images))  # a model with a decoder outlined in the forward that classified
    probs = calibrated_probs(logits.cpu(), loaded.temperature).tolist()
    pooled = pooled.cpu()  # the OOD statistics live on the CPU
    results = []
    for i, image in enumerate(images):
        probabilities = dict(zip(loaded.labels, probs[i]))
        top = max(probabilities, key=probabilities.get)
        tumour = any_tumour_probability(probabilities)
        ood = None
        if loaded.ood is not None:
            ood = loaded.ood.check(image, pooled[i : i + 1])
            ood.checked_by = loaded.name
        heat = cam_to_image_size(cams[i], image.size, loaded.cfg)
        result = Prediction(
            loaded.name,
            image,
            probabilities,
            top,
            tumour,
            ood,
            heat,
            method,
            loaded.temperature,
            0.0,
            loaded.cam_layer_name(method),
            str(loaded.device),
        )
        if outlines is not None:
            result.outline, result.outlined_by = outlines[i], loaded.name
        results.append(result)
    latency = (time.perf_counter() - start) * 1000  # every image of the batch waited for all of it
    for result in results:
        result.latency_ms = latency
    return results
