"""Predict one image with one model: probabilities, a Grad-CAM heatmap and an OOD verdict.

    predictor = Predictor()
    result = predictor.predict(load_image("scan.dcm"), "tf_efficientnet_lite0")
    result.details()  # JSON-ready

Models load lazily and stay in an LRU cache bounded in bytes. Each loaded model carries a
lock held for the whole forward/backward: Grad-CAM hooks on a shared module would see
another thread's forward, so two passes never run one model at the same time (on a
2-core Space they could not run faster concurrently anyway). Different models run in
parallel. Requests for one model that arrive together can run as one batch (``max_batch``,
brainmri.batching): one forward and one backward for all, each image its own answer.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from brainmri.batching import MicroBatcher
from brainmri.calibration import calibrated_probs, load_temperature
from brainmri.catalog import ModelSource, app_default_model, checkpoint_folder, discover
from brainmri.checkpoint import OOD_CONFIG, count_tensors_bytes, label_names, load_checkpoint, read_config
from brainmri.data import data_config, eval_transform
from brainmri.explain import DEFAULT_METHOD, FUSING_METHODS, cam_to_image_size, gradcam_batch, prepare_for_cam
from brainmri.ood import NOT_MRI, OODResult, OODStats, load_stats, pooled_features
from brainmri.registry import cam_layer, get_spec
from brainmri.runtime import fold_batchnorm
from brainmri.settings import model_cache_mb

_logger = logging.getLogger(__name__)

NO_TUMOUR = "notumor"  # the dataset's label for slices without a tumour
CLASS_WORDS = {"glioma": "glioma", "meningioma": "meningioma", "pituitary": "pituitary tumour", NO_TUMOUR: "no tumour"}


def class_words(label: str) -> str:
    """A dataset label as a reader says it ("notumor" -> "no tumour"); an unknown label as it is."""
    return CLASS_WORDS.get(label, label)


@dataclass
class LoadedModel:
    """A model ready to serve, with everything derived from its checkpoint folder."""

    name: str
    folder: Path
    model: nn.Module
    labels: list[str]
    cfg: dict  # preprocessing, from the checkpoint's pretrained_cfg
    layer: nn.Module  # Grad-CAM layer, from the registry
    ood: OODStats | None
    temperature: float  # probabilities are softmax(logits / temperature); 1.0 when uncalibrated
    nbytes: int
    stages: list[nn.Module] = field(default_factory=list)  # shallower layers LayerCAM fuses with ``layer``, from the registry
    cam_size: int | None = None  # side the heatmap pass runs at, when not the input size (registry)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.transform = eval_transform(self.cfg)
        side = self.cfg["input_size"][-1]
        resized = {**self.cfg, "input_size": (3, self.cam_size, self.cam_size)}
        self.cam_transform = eval_transform(resized) if self.cam_size and self.cam_size != side else None
        self.layer_name = self.module_name(self.layer)

    def module_name(self, module: nn.Module) -> str:
        return next((n for n, m in self.model.named_modules() if m is module), type(module).__name__)

    def cam_layers(self, method: str) -> list[nn.Module]:
        """The layers ``method`` weighs: the CAM layer, and the shallower stages when it fuses them."""
        return [self.layer, *(self.stages if method in FUSING_METHODS else [])]

    def cam_layer_name(self, method: str) -> str:
        """Those layers as named in the model, joined by "+" ("bn2", "bn2+blocks.4+blocks.2")."""
        return "+".join(self.module_name(m) for m in self.cam_layers(method))


def load_model(name: str, folder: str | Path) -> LoadedModel:
    """Rebuild a checkpoint for serving: eval mode, batch norm folded, channels_last, no parameter requiring grad."""
    folder = Path(folder)
    model = load_checkpoint(folder)
    registry_name = read_config(folder).get("registry_name", name)
    layer = cam_layer(model, registry_name)
    spec = get_spec(registry_name)
    stages = spec.cam_stages(model)
    fold_batchnorm(model, keep=[layer, *stages])
    prepare_for_cam(model)
    model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPU (oneDNN)
    return LoadedModel(
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
    )


@dataclass
class Prediction:
    """What one model says about one image."""

    model: str
    image: Image.Image  # the decoded RGB image the heatmap belongs to
    probabilities: dict[str, float]
    top_class: str
    tumor_probability: float | None  # 1 - P(notumor)
    ood: OODResult | None  # None when the checkpoint has no OOD statistics
    cam: np.ndarray  # (H, W) float32 in [0, 1], the image's size
    cam_method: str
    temperature: float
    latency_ms: float
    cam_layer: str = ""  # the module(s) the heatmap weighs, as named in the model ("bn2", "features.11", "bn2+blocks.4+blocks.2")

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

    def label_value(self) -> dict[str, float] | str:
        """For ``gr.Label``: the class probabilities, or the OOD verdict instead of a tumour class."""
        return self.probabilities if self.in_distribution else NOT_MRI

    def summary(self) -> str:
        """One plain paragraph of Markdown."""
        by = f" (`{self.model}`, {self.latency_ms:.0f} ms)"
        if not self.in_distribution:
            return f"**This image {NOT_MRI}**: " + "; ".join(self.ood.reasons) + f". No tumour class is given for it{by}."
        p = self.probabilities[self.top_class]
        lines = [f"**Predicted class: {class_words(self.top_class)}** ({p:.1%})."]
        # The tumour-or-not verdict, when it says more than the class line: a tumour class's share of all tumours,
        # or a tumour found likelier than the "no tumour" class in front; never the class line's number again.
        tumour = self.tumor_probability
        if tumour is not None and (self.top_class != NO_TUMOUR or tumour >= 0.5) and round(tumour, 3) != round(p, 3):
            lines.append(f"**Any tumour**: {tumour:.1%}.")  # a tumour class in front implies tumour >= 0.5
        if self.ood is None:
            lines.append("(No out-of-distribution statistics for this model: it cannot tell an MRI from another picture.)")
        return " ".join(lines) + by

    def details(self) -> dict:
        """JSON-ready details, the API's third output."""
        return {
            "model": self.model,
            "prediction": self.prediction,
            "top_class": self.top_class,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "tumor_probability": None if self.tumor_probability is None else round(self.tumor_probability, 6),
            "in_distribution": self.in_distribution,
            "ood": None if self.ood is None else self.ood.to_dict(),
            "cam_method": self.cam_method,
            "cam_layer": self.cam_layer,
            "cam_peak": self.cam_peak,
            "temperature": self.temperature,
            "image_size": list(self.image.size),
            "latency_ms": round(self.latency_ms, 1),
        }


@contextmanager
def capture_classifier_input(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the classifier's input, the pooled penultimate features, during a forward (hold the model's lock)."""
    captured: list[torch.Tensor] = []
    handle = model.get_classifier().register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        yield captured
    finally:
        handle.remove()


def run_model_batch(loaded: LoadedModel, images: Sequence[Image.Image], method: str = DEFAULT_METHOD) -> list[Prediction]:
    """Probabilities (temperature-calibrated), heatmap and OOD verdict of each RGB image, from one forward and one
    backward pass over all of them; each image's answer is the one it gets alone (tests/test_batching.py).

    A model whose heatmap runs at another size (``cam_size``) takes one more forward: the class and its
    probabilities come from the input size it was trained at, the heatmap explains that class at ``cam_size``.
    """
    start = time.perf_counter()
    x = torch.stack([loaded.transform(image) for image in images]).contiguous(memory_format=torch.channels_last)
    x_cam = None
    if loaded.cam_transform is not None:  # outside the lock, which guards the model passes alone
        x_cam = torch.stack([loaded.cam_transform(image) for image in images]).contiguous(memory_format=torch.channels_last)
    layers = loaded.cam_layers(method)
    with loaded.lock, capture_classifier_input(loaded.model) as features:  # features[0]: the input-size forward's
        if x_cam is None:
            cams, logits = gradcam_batch(loaded.model, layers, x, method)
        else:
            with torch.no_grad():
                logits = loaded.model(x)
            cams, _ = gradcam_batch(loaded.model, layers, x_cam, method, logits.argmax(1).tolist())
    probs = calibrated_probs(logits, loaded.temperature).tolist()
    results = []
    for i, image in enumerate(images):
        probabilities = dict(zip(loaded.labels, probs[i]))
        top = max(probabilities, key=probabilities.get)
        tumour = 1.0 - probabilities[NO_TUMOUR] if NO_TUMOUR in probabilities else None
        ood = None
        if loaded.ood is not None:
            ood = loaded.ood.check(image, features[0][i : i + 1])
            ood.checked_by = loaded.name
        heat = cam_to_image_size(cams[i], image.size, loaded.cfg)
        results.append(
            Prediction(
                loaded.name, image, probabilities, top, tumour, ood, heat, method, loaded.temperature, 0.0, loaded.cam_layer_name(method)
            )
        )
    latency = (time.perf_counter() - start) * 1000  # every image of the batch waited for all of it
    for result in results:
        result.latency_ms = latency
    return results


def run_model(loaded: LoadedModel, image: Image.Image, method: str = DEFAULT_METHOD) -> Prediction:
    """Probabilities (temperature-calibrated), heatmap and OOD verdict of one RGB image from one forward and one backward pass."""
    return run_model_batch(loaded, [image], method)[0]


def ood_check_batch(loaded: LoadedModel, images: Sequence[Image.Image]) -> list[OODResult | None]:
    """``loaded``'s OOD verdicts on ``images`` from one inference forward; Nones without statistics."""
    if loaded.ood is None:
        return [None] * len(images)
    x = torch.stack([loaded.transform(image) for image in images]).contiguous(memory_format=torch.channels_last)
    with loaded.lock, torch.inference_mode():  # the lock: another request's Grad-CAM hooks must not see this forward
        features = pooled_features(loaded.model, x)
    results = []
    for i, image in enumerate(images):
        result = loaded.ood.check(image, features[i : i + 1])
        result.checked_by = loaded.name
        results.append(result)
    return results


class ModelCache:
    """Loaded models, least recently used evicted first once their tensors pass ``max_bytes``.

    A model may be loaded more than once (``copy``): each batch worker serves through its own copy,
    and every copy counts against the bound. The newest model always stays, even alone over the bound.
    """

    def __init__(self, max_bytes: float):
        self.max_bytes = max_bytes
        self._models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def __contains__(self, name: str) -> bool:
        return any(n == name for n, _ in self._models)

    def names(self) -> list[str]:
        """The loaded models, each once, least recently used first."""
        return list(dict.fromkeys(n for n, _ in self._models))

    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def get(self, name: str, folder_fn, copy: int = 0) -> LoadedModel:
        """The cached model (that copy of it), or ``load_model(name, folder_fn())`` once even if several threads ask."""
        key = (name, copy)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread loads; the others wait for it and find it cached
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            start = time.perf_counter()
            loaded = load_model(name, folder_fn())
            _logger.info("loaded %s (copy %d) in %.2f s (%.1f MB)", name, copy, time.perf_counter() - start, loaded.nbytes / 2**20)
            with self._lock:
                self._models[key] = loaded
                while len(self._models) > 1 and self.nbytes() > self.max_bytes:
                    evicted, _ = self._models.popitem(last=False)
                    _logger.info("evicted %s (copy %d) from the model cache", *evicted)
            return loaded


class Predictor:
    """The models this deployment can serve, loaded on demand.

    Whether an image looks like a brain MRI is a property of the image, so one model judges
    it for all: the default (best) model, whose 1280 features separate MRI slices from other
    pictures far better than a small CNN's 64 (README, out-of-distribution check). A model's
    own statistics are used when the judge has none, or with ``ood_model=None``.

    Args:
        sources: registry name -> where its weights are (``catalog.discover()`` by default).
        cache_mb: memory bound of the loaded models' tensors, in MiB (default: ``brainmri.settings.model_cache_mb()``).
        ood_model: the model whose OOD statistics judge every image; "default" for the default model.
        max_batch: most requests run through a model together (brainmri.batching); 1 runs each alone.
        max_wait_s: how long the first request of a batch waits for others to join.
        workers: batches of one model that run at once, each through its own copy of the model (with
            ``max_batch`` > 1). Hooks on a shared module would see every forward through it, so one copy
            serves one batch at a time.
    """

    def __init__(
        self,
        sources: dict[str, ModelSource] | None = None,
        cache_mb: float | None = None,
        ood_model: str | None = "default",
        max_batch: int = 1,
        max_wait_s: float = 0.005,
        workers: int = 1,
    ):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.sources = discover() if sources is None else sources
        self.default_model = app_default_model(self.sources)
        self.ood_model = self.ood_judge() if ood_model == "default" else ood_model
        self.cache = ModelCache((model_cache_mb() if cache_mb is None else cache_mb) * 2**20)
        self.max_batch, self.max_wait_s, self.workers = max_batch, max_wait_s, workers
        self._batchers: dict[tuple[str, str], MicroBatcher] = {}
        self._batchers_lock = threading.Lock()

    def ood_judge(self) -> str | None:
        """The default model when it ships OOD statistics, else the first local model that does (only the
        judge ships them, so choosing a simple CNN as the default must not switch the check off)."""
        local = [n for n in [self.default_model, *self.available] if n and self.sources[n].where == "local"]
        return next((n for n in local if (Path(self.sources[n].location) / OOD_CONFIG).is_file()), self.default_model)

    @property
    def available(self) -> list[str]:
        return [name for name, src in self.sources.items() if src.available]

    @property
    def unavailable(self) -> dict[str, str]:
        return {name: src.reason for name, src in self.sources.items() if not src.available}

    def model(self, name: str | None = None, copy: int = 0) -> LoadedModel:
        """A loaded model (``copy``: which of a batch worker's copies); ValueError naming the problem if it is unknown or unavailable."""
        name = name or self.default_model
        if name is None:
            raise ValueError("no trained model is available: add a checkpoint folder under checkpoints/")
        if name not in self.sources:
            raise ValueError(f"unknown model {name!r}; available: {', '.join(self.available)}")
        source = self.sources[name]
        if not source.available:
            raise ValueError(f"model {name} is not available: {source.reason}")
        return self.cache.get(name, lambda: checkpoint_folder(source), copy)

    def predict(self, image: Image.Image, model_name: str | None = None, method: str = DEFAULT_METHOD) -> Prediction:
        """Run one model (the default one when ``model_name`` is empty) on an RGB image, judged by ``ood_model``.

        With ``max_batch`` > 1, requests for the same model and method that arrive together (within
        ``max_wait_s``) run as one batch; each still gets its own answer, and its own errors.
        """
        loaded = self.model(model_name)
        if self.max_batch <= 1:
            return self.predict_many([image], loaded.name, method)[0]
        return self._batcher(loaded.name, method).submit(image)

    def warm(self) -> None:
        """Load the default model and the OOD judge in every batch worker's copy, before the first request needs them.

        One that cannot load is logged and left to fail on its own requests, as it would without warming."""
        for copy in range(self.workers if self.max_batch > 1 else 1):
            for name in dict.fromkeys(n for n in (self.default_model, self.ood_model) if n):
                try:
                    self.model(name, copy)
                except ValueError as e:
                    _logger.warning("could not load %s at start-up: %s", name, e)

    def predict_many(
        self, images: Sequence[Image.Image], model_name: str | None = None, method: str = DEFAULT_METHOD, copy: int = 0
    ) -> list[Prediction]:
        """One model on several images as one batch, each judged by ``ood_model`` (one more batched pass).

        Identical images in the batch (a class clicking one example at once) are computed once: each request still
        gets its own Prediction, and nothing outlives the batch. ``copy``: the copies of the models to use."""
        first: dict[tuple, int] = {}  # (size, mode, pixels' hash) -> index of its first occurrence
        keys = [(im.size, im.mode, hashlib.blake2b(im.tobytes(), digest_size=16).digest()) for im in images]
        unique = [first.setdefault(key, i) for i, key in enumerate(keys)]
        if len(first) < len(images):
            distinct = self.predict_many([images[i] for i in first.values()], model_name, method, copy)
            by_first = dict(zip(first.values(), distinct))
            return [dataclasses.replace(by_first[j], image=images[i]) for i, j in enumerate(unique)]
        loaded = self.model(model_name, copy)
        results = run_model_batch(loaded, images, method)
        if self.ood_model and self.ood_model != loaded.name:
            start = time.perf_counter()
            verdicts = ood_check_batch(self.model(self.ood_model, copy), images)
            extra = (time.perf_counter() - start) * 1000
            for result, verdict in zip(results, verdicts):
                if verdict is not None:
                    result.ood = verdict
                    result.latency_ms += extra
        return results

    def _batcher(self, name: str, method: str) -> MicroBatcher:
        with self._batchers_lock:
            key = (name, method)
            if key not in self._batchers:
                runners = [functools.partial(self.predict_many, model_name=name, method=method, copy=i) for i in range(self.workers)]
                self._batchers[key] = MicroBatcher(runners, self.max_batch, self.max_wait_s, name=f"{name}-{method}")
            return self._batchers[key]
