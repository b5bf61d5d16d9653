"""The classifier's batched pass: probabilities (temperature-calibrated), heatmap and the model's own OOD verdict
of each image, from one forward and one backward over the batch, on the model's device; and, for a multi-task model
(brainmri.models.multitask), the tumour outline its decoder drew in that same forward."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np
import torch
from PIL import Image

from brainmri.calibration import calibrated_probs
from brainmri.eval.ensemble import mean_probs
from brainmri.explain import DEFAULT_METHOD, cam_to_image_size, gradcam_batch
from brainmri.ood import KeepFeatures, logits_and_features
from brainmri.serving.device import place_batch
from brainmri.serving.loading import LoadedModel
from brainmri.serving.result import Prediction
from brainmri.serving.segment import own_outlines
from brainmri.vocabulary import any_tumour_probability


def plain_pass(loaded: LoadedModel, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """The input-size forward without autograd: (B, C) logits and (B, D) pooled features, through
    ``loaded.plain_model``, which another thread may run while the heatmap's hooks sit on ``loaded.model``."""
    x = place_batch([loaded.transform(image) for image in images], loaded.device)
    with torch.no_grad():
        return logits_and_features(loaded.plain_model, x)


def heatmaps(loaded: LoadedModel, x: torch.Tensor, method: str, classes: Callable[[], Sequence[int]]) -> np.ndarray:
    """(B, H, W) each image's heatmap at ``x``'s size for its class in ``classes()`` (read once the forward is done):
    LayerCAM in ONNX Runtime where the model has it (brainmri.serving.cam_onnx), else through autograd."""
    if method == "LayerCAM" and loaded.layercam is not None:
        cams = loaded.layercam(x, classes)
        if cams is not None:
            return cams
    return gradcam_batch(loaded.model, loaded.cam_layers(method), x, method, classes)[0]


def own_size_pass(
    loaded: LoadedModel, x: torch.Tensor, method: str, second: Future | None = None
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The heatmap's pass at the input size, which also classifies: (B, H, W) heatmaps for the answered class, (B, C)
    logits and (B, D) OOD features of ``x`` (B, 3, H, W). LayerCAM in ONNX Runtime where the model has it
    (brainmri.serving.cam_onnx), else autograd; a multi-task model keeps that forward's stages for its outline either way."""
    runner = loaded.layercam if method == "LayerCAM" else None
    done = runner.forward(x) if runner is not None else None
    if done is not None:
        cams = runner.backward(done, answered_probs(loaded, done.logits, second).argmax(1).tolist())
        if cams is not None:
            return cams, done.logits, done.pooled
    kept = KeepFeatures(loaded.model)
    targets = None if second is None else [AnsweredClass(loaded, second, i) for i in range(len(x))]
    cams, logits = gradcam_batch(kept, loaded.cam_layers(method), x, method, targets)
    return cams, logits, kept.features


def answered_probs(loaded: LoadedModel, logits: torch.Tensor, second: Future | None = None) -> torch.Tensor:
    """(B, C) the probabilities answered on the CPU: the model's calibrated ones or, for an ensemble, their mean with
    the second opinion's (``second``: a future of a ``brainmri.serving.segment.SecondOpinion``)."""
    probs = calibrated_probs(logits.detach().float().cpu(), loaded.temperature)
    return probs if second is None else mean_probs([probs, second.result().probabilities])


class AnsweredClass:
    """A Grad-CAM target: the class an ensemble answers for image ``index``, from the heatmap's own forward's logits
    (for a model with no other input size) and the second opinion."""

    def __init__(self, loaded: LoadedModel, second: Future, index: int):
        self.loaded, self.second, self.index = loaded, second, index

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:  # (C,) one image's logits
        own = calibrated_probs(model_output.detach().float().cpu(), self.loaded.temperature)
        return model_output[int(mean_probs([own, self.second.result().probabilities[self.index]]).argmax())]


def run_model_batch(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    method: str = DEFAULT_METHOD,
    plain: Future | None = None,
    second: Future | None = None,
) -> list[Prediction]:
    """Probabilities (temperature-calibrated), heatmap and OOD verdict of each RGB image, from one forward and one
    backward pass over all of them; each image's answer is the one it gets alone (tests/test_batching.py).

    A model whose heatmap runs at another size (``cam_size``) takes one more forward: the class and its
    probabilities come from the input size it was trained at, the heatmap explains that class at ``cam_size``.
    ``plain``: that forward already running in another thread (:func:`plain_pass`, brainmri.serving.overlap); the
    heatmap's forward starts at once and its backward reads the class when it gets there. The answers are the same.
    ``second``: an ensemble's second opinion (a future of a ``SecondOpinion``, brainmri.serving.segment); the answer
    is then the mean of the two (brainmri.eval.ensemble), and the heatmap explains the mean's class.
    """
    start = time.perf_counter()
    x_cam = None
    if loaded.cam_transform is not None:  # outside the lock, which guards the model passes alone
        x_cam = place_batch([loaded.cam_transform(image) for image in images], loaded.device)
    with loaded.lock:
        if x_cam is None:  # the heatmap's forward gives the logits and the OOD features
            x = place_batch([loaded.transform(image) for image in images], loaded.device)
            cams, logits, pooled = own_size_pass(loaded, x, method, second)
        elif plain is not None:  # the input-size forward runs beside the cam_size one
            classes = lambda: answered_probs(loaded, plain.result()[0], second).argmax(1).tolist()  # noqa: E731
            cams = heatmaps(loaded, x_cam, method, classes)
            logits, pooled = plain.result()
        else:  # the input-size forward gives them, the cam_size one the heatmap; its backward waits for ``second``
            logits, pooled = plain_pass(loaded, images)
            classes = lambda: answered_probs(loaded, logits, second).argmax(1).tolist()  # noqa: E731
            cams = heatmaps(loaded, x_cam, method, classes)
        # a model with a decoder outlined in the forward that classified
        outlines = own_outlines(loaded.model, list(images), loaded.outline_rule)
    probs = answered_probs(loaded, logits, second).tolist()
    results = predictions(loaded, images, probs, pooled.cpu(), cams, method)  # the OOD statistics live on the CPU
    latency = (time.perf_counter() - start) * 1000  # every image of the batch waited for all of it
    for i, result in enumerate(results):
        result.latency_ms = latency
        if outlines is not None:
            result.outline, result.outlined_by = outlines[i], loaded.name
    return results


def predictions(
    loaded: LoadedModel, images: Sequence[Image.Image], probs: list[list[float]], pooled: torch.Tensor, cams: np.ndarray, method: str
) -> list[Prediction]:
    """Each image's :class:`Prediction` from the batch's answers: ``probs`` (B, C) calibrated probabilities,
    ``pooled`` (B, D) the OOD features on the CPU, ``cams`` (B, h, w) heatmaps, mapped back onto each image's frame."""
    results = []
    for i, image in enumerate(images):
        probabilities = dict(zip(loaded.labels, probs[i]))
        ood = None
        if loaded.ood is not None:
            ood = loaded.ood.check(image, pooled[i : i + 1])
            ood.checked_by = loaded.name
        results.append(
            Prediction(
                model=loaded.name,
                image=image,
                probabilities=probabilities,
                top_class=max(probabilities, key=probabilities.get),
                tumour_probability=any_tumour_probability(probabilities),
                ood=ood,
                cam=cam_to_image_size(cams[i], image.size, loaded.cfg),
                cam_method=method,
                temperature=loaded.temperature,
                latency_ms=0.0,  # the batch's, set once it is done
                cam_layer=loaded.cam_layer_name(method),
                device=str(loaded.device),
            )
        )
    return results
