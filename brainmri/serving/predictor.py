"""One request's way through the models this deployment serves (brainmri.serving.served): the serving package's
front door.

    predictor = Predictor()
    result = predictor.predict(load_image("scan.dcm"), "tf_efficientnet_lite0")
    result.details()  # JSON-ready

Models load lazily into the model cache (brainmri.serving.cache). Each loaded model carries a lock
held for the whole forward/backward: Grad-CAM hooks on a shared module would see another thread's
forward, so two passes never run one model at the same time. Different models run in parallel.
Requests for one model that arrive together can run as one batch (``max_batch``, brainmri.serving.batching).

A batch's model passes all run in :meth:`Predictor.run_passes`, the one GPU entry point: under ZeroGPU
it is the ``@spaces.GPU`` task (brainmri.serving.zerogpu), so one batch holds one lent GPU for all
its passes; anywhere else it is a plain call on the serving device (brainmri.serving.device).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future

import torch
from PIL import Image

from brainmri.data.imageio import pixel_key
from brainmri.explain import CAM_METHODS, DEFAULT_METHOD
from brainmri.models.catalog import ModelSource
from brainmri.models.registry import EnsembleSpec
from brainmri.models.segmenters import SEGMENTER_DEFAULT
from brainmri.serving.batching import MicroBatcher
from brainmri.serving.classify import plain_pass, run_model_batch
from brainmri.serving.judge import judge_batch
from brainmri.serving.loading import LoadedModel
from brainmri.serving.overlap import in_turn, running, spare_core
from brainmri.serving.result import Prediction
from brainmri.serving.segment import LoadedSegmenter, draws_own_outline, segment_and_classify, segment_batch
from brainmri.serving.served import ServedModels
from brainmri.serving.zerogpu import gpu_seconds, gpu_task

_logger = logging.getLogger(__name__)


class Predictor(ServedModels):
    """The models this deployment can serve (:class:`~brainmri.serving.served.ServedModels`), and a request's way
    through them.

    Whether an image looks like a brain MRI is a property of the image, so one model judges
    it for all: the default's classifier (an ensemble's explainer) where it ships OOD statistics
    (:meth:`~brainmri.serving.served.ServedModels.ood_judge`), whose 1280 features separate MRI slices
    from other pictures far better than a small CNN's 64 (docs/app.md, the out-of-distribution check).
    A model's own statistics are used when the judge has none, or with ``ood_model=None``.

    Args:
        sources: registry name -> where its weights are (``catalog.discover()`` by default).
        cache_mb: memory bound of the loaded models' tensors, in MiB (default: ``brainmri.settings.model_cache_mb()``).
        ood_model: the model whose OOD statistics judge every image; "default" for the default model.
        max_batch: most requests run through a model together (brainmri.serving.batching); 1 runs each alone.
        max_wait_s: how long the first request of a batch waits for others to join.
        workers: batches of one model that run at once, each through its own copy of the model (with
            ``max_batch`` > 1). Hooks on a shared module would see every forward through it, so one copy
            serves one batch at a time.
        device: where models load and run ("cpu", "cuda", "cuda:N", "auto"); None for ``BRAIN_MRI_DEVICE``.
        segmenter: the tumour segmentation model that outlines every in-distribution image: a registry
            ``SEGMENTERS`` name (found by ``catalog.discover_segmenter``: its local folder, else its Hub repo), or
            where it is (a ``ModelSource``); None for none. Without its weights there is no outline, and nothing
            else changes.
        overlap: run a request's independent passes side by side where the CPU has a spare core
            (brainmri.serving.overlap); False runs them one after another (the benchmarks' comparison).
    """

    def __init__(
        self,
        sources: dict[str, ModelSource] | None = None,
        cache_mb: float | None = None,
        ood_model: str | None = "default",
        max_batch: int = 1,
        max_wait_s: float = 0.005,
        workers: int = 1,
        device: torch.device | str | None = None,
        segmenter: str | ModelSource | None = SEGMENTER_DEFAULT,
        overlap: bool = True,
    ):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        super().__init__(sources, cache_mb, ood_model, device, segmenter)
        self.max_batch, self.max_wait_s, self.workers = max_batch, max_wait_s, workers
        self.overlap = overlap
        self._batchers: dict[tuple[str, str, bool], MicroBatcher] = {}  # (model, method, outline) -> its batcher
        self._batchers_lock = threading.Lock()
        self.run_passes_on_gpu = gpu_task(self.run_passes, duration=gpu_seconds)  # the same method off ZeroGPU
        _PREDICTORS.add(self)

    def predict(self, image: Image.Image, model_name: str | None = None, method: str = DEFAULT_METHOD, outline: bool = True) -> Prediction:
        """Run one model (the default one when ``model_name`` is empty) on an RGB image, judged by ``ood_model``, and
        outlined by the segmenter (unless ``outline`` is False: Compare asks for heatmaps only).

        With ``max_batch`` > 1, requests for the same model and method that arrive together (within
        ``max_wait_s``) run as one batch; each still gets its own answer, and its own errors.
        """
        self.check_request([image], model_name, method, outline=outline)
        name = model_name or self.default_model
        if self.max_batch <= 1:
            return self.predict_many([image], name, method, outline=outline)[0]
        return self._batcher(name, method, outline).submit(image)

    def check_request(
        self, images: Sequence[Image.Image], model_name: str | None, method: str, copy: int = 0, outline: bool = True
    ) -> LoadedModel:
        """The request's model, loaded, once its inputs are known good, with the OOD judge and (for an outline or an
        ensemble's second opinion) the segmenter it needs; else ValueError naming the problem.

        Runs before the GPU entry point, so that what cannot load fails here: on ZeroGPU an error raised inside
        the decorated call reaches the visitor as a bare "ZeroGPU worker error", after their quota was spent on it
        (brainmri.serving.zerogpu)."""
        if not images:
            raise ValueError("no image given")
        for image in images:
            if not isinstance(image, Image.Image):
                raise ValueError(f"expected a decoded image (PIL), got {type(image).__name__}")
            if image.mode != "RGB" or 0 in image.size:
                raise ValueError(f"expected an RGB image with pixels, got mode {image.mode} of {image.width} x {image.height}")
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose one of: {', '.join(CAM_METHODS)}")
        loaded = self.model(model_name, copy)
        if self.ood_model:
            self.model(self.ood_model, copy)
        spec = self.ensemble(model_name or self.default_model)
        if spec is not None:  # its second opinion: the segmenter's class head, in the same class order
            segmenter = self.segmentation_model(copy)
            if segmenter is None or segmenter.labels != loaded.labels:
                raise ValueError(f"{spec.name}: {spec.outliner} cannot give a second opinion on {loaded.name}'s classes")
        elif outline:
            self.segmentation_model(copy)
        return loaded

    def warm(self) -> None:
        """Load the default model, the OOD judge and the segmenter in every batch worker's copy, before the first
        request needs them.

        A default that cannot load is logged and left to fail on its own requests, as it would without warming. A judge
        that cannot load hands the check to the next model with OOD statistics (:meth:`_warm_judge`); a segmenter that
        cannot load leaves the outline out. Under ZeroGPU this runs in the app's process, so every GPU worker forked
        from it starts with them."""
        for copy in range(self.workers if self.max_batch > 1 else 1):
            if self.default_model:
                try:
                    self.model(self.default_model, copy)
                except ValueError as e:
                    _logger.warning("could not load %s at start-up: %s", self.default_model, e)
            if self.ood_model:
                self._warm_judge(copy)
            try:
                self.segmentation_model(copy)
            except ValueError as e:
                _logger.warning("could not load the segmenter %s at start-up, so no outlines: %s", self.segmenter, e)
                self.use_segmenter(None)

    def _warm_judge(self, copy: int) -> None:
        """Load the OOD judge, or the next local model with OOD statistics when it cannot load, or its statistics are
        not its weights' (brainmri.ood.load_stats refuses them). When none can, the judge stays: every request then
        fails naming why (check_request), and no upload is answered unjudged."""
        for name in [self.ood_model, *(n for n in self.ood_judges() if n != self.ood_model)]:
            try:
                loaded = self.model(name, copy)
            except ValueError as e:
                _logger.error("could not load the OOD judge %s at start-up: %s", name, e)
                continue
            if loaded.ood is None:
                _logger.error("the OOD judge %s has no statistics for its weights: another judges, if one can", name)
                continue
            if name != self.ood_model:
                _logger.warning("%s judges every upload instead of %s", name, self.ood_model)
                self.ood_model = name
            return

    def predict_many(
        self,
        images: Sequence[Image.Image],
        model_name: str | None = None,
        method: str = DEFAULT_METHOD,
        copy: int = 0,
        outline: bool = True,
    ) -> list[Prediction]:
        """One model on several images as one batch, each judged by ``ood_model`` (one more batched pass).

        Identical images in the batch (a class clicking one example at once) are computed once: each request still
        gets its own Prediction, and nothing outlives the batch. ``copy``: the copies of the models to use."""
        self.check_request(images, model_name, method, copy, outline)
        first: dict[str, int] = {}  # pixel_key -> index of its first occurrence
        keys = [pixel_key(im) for im in images]
        unique = [first.setdefault(key, i) for i, key in enumerate(keys)]
        if len(first) < len(images):
            distinct = self.predict_many([images[i] for i in first.values()], model_name, method, copy, outline)
            by_first = dict(zip(first.values(), distinct))
            return [dataclasses.replace(by_first[j], image=images[i]) for i, j in enumerate(unique)]
        return self.run_passes_on_gpu(list(images), model_name, method, copy, outline)

    def run_passes(
        self, images: list[Image.Image], model_name: str | None, method: str, copy: int = 0, outline: bool = True
    ) -> list[Prediction]:
        """Every model pass one batch needs, on the serving device: the GPU entry point (ZeroGPU's task).

        1. classify: ``model_name``'s probabilities and heatmap (brainmri.serving.classify);
        2. judge: the OOD verdict of ``ood_model``, when that is another model (brainmri.serving.judge);
        3. outline: the segmenter's tumour mask of each image that looks like a brain MRI (brainmri.serving.segment),
           unless a multi-task model's forward drew it already: the classifier's in step 1, or the judge's in step 2
           when the judge is the segmenter.
        Where the CPU has a spare core, 2 and 3 run beside 1 (brainmri.serving.overlap).
        For an ensemble (registry ``ENSEMBLES``) step 3 comes first and for every image: its forward's class head is the
        second opinion that step 1 averages with its classifier's, and whose mean's class the heatmap explains.
        """
        ensemble = self.ensemble(model_name or self.default_model)  # its second opinion checked by check_request
        loaded = self.model(model_name, copy)
        judge = self.model(self.ood_model, copy) if self.ood_model else None
        judge = None if judge is loaded else judge  # the classifier judges in its own pass
        segmenter = self.segmentation_model(copy) if outline or ensemble else None
        start = time.perf_counter()  # after loading: a model's first request would count its load (1.2 s for Lite1)
        with running() as requests:  # counted till the end: a request that comes meanwhile finds this core taken
            side = (
                self.side_passes(loaded, judge, segmenter, images, ensemble) if self.overlap and spare_core(loaded.device, requests) else {}
            )
            second = side.get("second")  # an ensemble's: a future of its SecondOpinion (outlines and class probabilities)
            if ensemble is not None and second is None:  # one pass after another: this one first, for the backward
                second = Future()
                second.set_result(segment_and_classify(segmenter, images))
            results = run_model_batch(loaded, images, method, side.get("plain"), second)
            if ensemble is not None:
                for result, found in zip(results, second.result().outlines):
                    result.model, result.heatmap_by = ensemble.name, loaded.name
                    result.outline, result.outlined_by = found, segmenter.name
            if judge is not None:
                verdicts, drawn = side["judge"].result() if "judge" in side else judge_batch(judge, images)
                for result, verdict in zip(results, verdicts):
                    if verdict is not None:
                        result.ood = verdict
                if drawn is not None and self.ood_model == self.segmenter:  # the judge is the segmenter: its pass outlined
                    for result, found in zip(results, drawn):
                        if result.outline is None:
                            result.outline, result.outlined_by = found, self.ood_model
            for result in results:  # a multi-task model outlined in its own forward: kept for an MRI slice only
                if not (outline and result.in_distribution):
                    result.outline, result.outlined_by = None, ""
            wanting = [i for i, r in enumerate(results) if r.in_distribution and r.outline is None]
            if segmenter is not None and outline and ensemble is None and wanting:
                if "outline" in side:
                    found = [side["outline"].result()[i] for i in wanting]
                else:
                    found = segment_batch(segmenter, [results[i].image for i in wanting])
                for i, outlined in zip(wanting, found):
                    results[i].outline, results[i].outlined_by = outlined, segmenter.name
        latency = (time.perf_counter() - start) * 1000  # every pass of the batch, whichever thread ran it
        for result in results:
            result.latency_ms = latency
        return results

    def side_passes(
        self,
        loaded: LoadedModel,
        judge: LoadedModel | None,
        segmenter: LoadedSegmenter | None,
        images: list[Image.Image],
        ensemble: EnsembleSpec | None = None,
    ) -> dict[str, Future]:
        """The passes :meth:`run_passes` hands to the spare core, started there one after another
        (brainmri.serving.overlap), by name: "plain", a Lite's input-size forward, whose class the heatmap's backward
        waits for; "judge", the OOD judge's pass; "outline", drawn ahead of the verdict (run_passes keeps it for
        in-distribution slices only), unless the classifier's or the judge's forward draws it. For an ``ensemble``,
        "second" instead of "outline": the outline's forward with its class head (:func:`segment_and_classify`), before
        the judge, as the heatmap's backward waits for it; and no "plain", which runs in the request's thread before the
        heatmap's forward (:func:`run_model_batch`): the backward waits for the second opinion anyway, so there it
        delays nothing, and the second opinion comes sooner."""
        drawn_elsewhere = draws_own_outline(loaded.model) or (judge is not None and self.ood_model == self.segmenter)
        plain = (plain_pass, (loaded, images)) if loaded.twin is not None else None
        verdict = (judge_batch, (judge, images)) if judge is not None else None
        if ensemble is not None:
            passes = {"second": (segment_and_classify, (segmenter, images)), "judge": verdict}
        else:
            outlined = (segment_batch, (segmenter, images)) if segmenter is not None and not drawn_elsewhere else None
            passes = {"plain": plain, "judge": verdict, "outline": outlined}
        wanted = {name: work for name, work in passes.items() if work is not None}
        return dict(zip(wanted, in_turn(*wanted.values()))) if wanted else {}

    def renew_after_fork(self) -> None:
        """In a forked child (a ZeroGPU worker): fresh locks, and no batchers, whose threads did not survive the fork."""
        self.cache.renew_locks()
        self.segmenters.renew_locks()
        self._batchers = {}
        self._batchers_lock = threading.Lock()

    def _batcher(self, name: str, method: str, outline: bool = True) -> MicroBatcher:
        with self._batchers_lock:
            key = (name, method, outline)
            if key not in self._batchers:
                runners = [
                    functools.partial(self.predict_many, model_name=name, method=method, copy=i, outline=outline)
                    for i in range(self.workers)
                ]
                self._batchers[key] = MicroBatcher(runners, self.max_batch, self.max_wait_s, name=f"{name}-{method}")
            return self._batchers[key]


_PREDICTORS: weakref.WeakSet[Predictor] = weakref.WeakSet()  # renewed in every forked child


def _renew_all_after_fork() -> None:
    for predictor in list(_PREDICTORS):
        predictor.renew_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_all_after_fork)
