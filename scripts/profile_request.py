"""Where one request's time goes, phase by phase, for one model: decode, preprocessing, the passes, the pictures, JSON,
and Gradio's share of an HTTP round trip.

    HF_HUB_OFFLINE=1 python scripts/profile_request.py --model multitask_lite0
    HF_HUB_OFFLINE=1 python scripts/profile_request.py --model tf_efficientnet_lite0 --images 40 --json profile.json

Each phase is timed on its own over the same Testing images (median ms, one torch thread: the app's share of a core
per batch worker), by calling the very functions the serving path calls. The passes:
- ``forward``: the classifier's forward without autograd (for a multi-task model its decoder runs in it, and
  ``decoder`` times that part alone);
- ``forward + backward (heatmap)``: LayerCAM's forward and backward, which give a request its class too; the
  backward's share is the difference (a model whose heatmap runs at a larger size runs the plain forward as well);
- ``OOD judge``: the judge's own forward, when the judge is another model;
- ``separate outline``: the segmenter's forward, when the classifier draws no outline itself.
``whole predict()`` is timed twice: with the request's independent passes one after another, and as served, beside
each other on the spare core (brainmri.serving.overlap). ``Gradio`` is the median HTTP round trip of ``/predict``
(upload, queue, handler, the heatmap saved as a file, JSON) through ``gradio_client`` to ``python app.py`` on
loopback, minus the median of the same handler called in process. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_app import launched_app  # noqa: E402  (scripts/, this script's folder)

from brainmri.app.dataview import example_files, local_root  # noqa: E402
from brainmri.cli import exit_code, write_json  # noqa: E402
from brainmri.data.imageio import load_image  # noqa: E402
from brainmri.explain import DEFAULT_METHOD, cam_to_image_size  # noqa: E402
from brainmri.models.catalog import discover  # noqa: E402
from brainmri.models.multitask import MultiTaskClassifier  # noqa: E402
from brainmri.ood import pooled_features  # noqa: E402
from brainmri.rendering import DEFAULT_OPACITY, data_url, overlay  # noqa: E402
from brainmri.runtime import configure_torch_threads, describe_cpu  # noqa: E402
from brainmri.segmentation import mask_data_url  # noqa: E402
from brainmri.serving import Predictor  # noqa: E402
from brainmri.serving.classify import heatmaps, own_size_pass  # noqa: E402
from brainmri.serving.device import place_batch  # noqa: E402
from brainmri.serving.segment import segment_batch  # noqa: E402
from brainmri.settings import batch_workers, default_data  # noqa: E402

_logger = logging.getLogger(__name__)


def median_ms(work: Callable[[object], object], items: list, warmup: int = 2) -> float:
    for item in items[:warmup]:
        work(item)
    times = []
    for item in items:
        start = time.perf_counter()
        work(item)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def interleaved_median_ms(ways: dict[str, Callable[[object], object]], items: list, warmup: int = 2) -> dict[str, float]:
    """Median ms of each way over the same items, the ways taking turns item by item (in turn reversed every other
    item), so that a machine slowing down or speeding up during the run weighs on each alike."""
    for item in items[:warmup]:
        for work in ways.values():
            work(item)
    times: dict[str, list[float]] = {name: [] for name in ways}
    for i, item in enumerate(items):
        for name in list(ways)[:: 1 if i % 2 else -1]:
            start = time.perf_counter()
            ways[name](item)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def in_process(predictor: Predictor, name: str, paths: list[Path]) -> dict[str, float]:
    """Each phase of a request, timed alone in this process (ms, medians)."""
    loaded = predictor.model(name)
    if loaded.layercam is not None:  # its sessions are begun in the background as the model loads: no phase shares the cores with that
        loaded.layercam.sessions(loaded.cam_size or loaded.cfg["input_size"][-1])
    images = [load_image(p) for p in paths]
    batches = [place_batch([loaded.transform(im)], loaded.device) for im in images]
    model = loaded.model
    phases = {
        "decode (file to RGB, upload limits)": median_ms(load_image, paths),
        "preprocess (resize, normalise)": median_ms(lambda im: place_batch([loaded.transform(im)], loaded.device), images),
    }
    with torch.inference_mode():
        phases[f"forward ({batches[0].shape[-1]} px)"] = median_ms(lambda x: pooled_features(loaded.plain_model, x), batches)
        if isinstance(model, MultiTaskClassifier):
            stages = {id(x): model.net.features(x)[1] for x in batches}
            # decoded after the forward, for the slices the gate lets through (MultiTaskClassifier.decode_last)
            phases["outline's decoder (a slice the gate lets through)"] = median_ms(lambda x: model.net.segment(x, stages[id(x)]), batches)
    # A model whose heatmap runs at another size (registry cam_size) takes its heatmap pass there (brainmri.serving.classify).
    cam_batches = [place_batch([(loaded.cam_transform or loaded.transform)(im)], loaded.device) for im in images]
    side = cam_batches[0].shape[-1]
    if loaded.cam_transform is not None:  # as served: LayerCAM in ONNX Runtime where written out (brainmri.serving.cam_onnx)
        explain = lambda x: heatmaps(loaded, x, DEFAULT_METHOD, lambda: [0])  # noqa: E731  (the class explained costs the same)
    else:  # the heatmap's forward gives the class too: explained as served, its predicted one
        explain = lambda x: own_size_pass(loaded, x, DEFAULT_METHOD)  # noqa: E731
    phases[f"forward + backward (heatmap, {side} px)"] = median_ms(explain, cam_batches)
    if isinstance(model, MultiTaskClassifier):
        model.forget_last()  # what the last timed pass kept for its outline, which no request reads here
    if predictor.ood_model and predictor.ood_model != loaded.name:  # an ensemble's classifier judges in its own pass
        judge = predictor.model(predictor.ood_model)
        judged = [place_batch([judge.transform(im)], judge.device) for im in images]
        with torch.inference_mode():
            phases[f"OOD judge ({predictor.ood_model})"] = median_ms(lambda x: pooled_features(judge.plain_model, x), judged)
    segmenter = predictor.segmentation_model()
    if segmenter is not None and not isinstance(model, MultiTaskClassifier):
        phases[f"separate outline ({predictor.segmenter})"] = median_ms(lambda im: segment_batch(segmenter, [im]), images)
    results = [predictor.predict(im, name) for im in images]
    phases["heatmap to the image's frame"] = median_ms(lambda r: cam_to_image_size(r.cam, r.image.size, loaded.cfg), results)
    phases["heatmap overlay as PNG"] = median_ms(lambda r: data_url(overlay(r.image, r.cam, DEFAULT_OPACITY)), results)
    phases["outline mask as PNG"] = median_ms(lambda r: r.outline is not None and mask_data_url(r.outline.mask), results)
    phases["details JSON (mask included)"] = median_ms(lambda r: json.dumps(r.details()), results)
    if loaded.ood is not None:
        with torch.inference_mode():
            features = [pooled_features(model, x) for x in batches]
        pairs = list(zip(images, features))
        phases["OOD verdict (image measures, distance)"] = median_ms(lambda pair: loaded.ood.check(*pair), pairs)
    in_turn = Predictor(predictor.sources, overlap=False, segmenter=predictor.segmenter_source)
    ways = {
        "whole predict(), passes one after another": lambda im: in_turn.predict(im, name),
        "whole predict() (passes, outline, OOD)": lambda im: predictor.predict(im, name),
    }
    return phases | interleaved_median_ms(ways, images)


def over_http(name: str, paths: list[Path]) -> float:
    """Median ms of ``/predict`` through gradio_client to ``python app.py`` on loopback."""
    from gradio_client import Client, handle_file

    with launched_app() as url:
        client = Client(url, verbose=False)
        return median_ms(lambda p: client.predict(handle_file(str(p)), name, api_name="/predict"), paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="registry name (default: the app's default)")
    parser.add_argument("--images", type=int, default=40, help="Testing images")
    parser.add_argument("--no-http", action="store_true", help="skip the round trip through app.py")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    def run() -> None:
        configure_torch_threads(batch_workers())  # as the app: one thread a batch worker on 2 cores
        root = local_root(default_data())
        if root is None:
            raise ValueError(f"no data folder at {default_data()} (set BRAIN_MRI_DATA)")
        paths = [p for p, _ in example_files(root, per_class=args.images // 4 + 1)][: args.images]
        predictor = Predictor(discover(hub=False))
        name = args.model or predictor.default_model
        phases = in_process(predictor, name, paths)
        import app  # the handler the HTTP route runs, in this process

        handler = median_ms(lambda p: app.predict(str(p), name), paths)
        phases["API handler in process (predict + overlay + details)"] = handler
        if not args.no_http:
            http = over_http(name, paths)
            phases["HTTP round trip (gradio_client, loopback)"] = http
            phases["  of which Gradio (round trip minus handler)"] = http - handler
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{name}, {len(paths)} Testing images, one torch thread, {describe_cpu()}, 1-min load average {load:.1f}; median ms:")
        for phase, ms in phases.items():
            print(f"  {phase:58s} {ms:8.1f}")
        if args.json:
            figures = {"model": name, "cpu": describe_cpu(), "load_average_1min": load, "median_ms": phases}
            write_json(args.json, figures)

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
