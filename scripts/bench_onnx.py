"""The default's whole request with ONNX Runtime and without, in one process, taking turns image by image: a paired
comparison on which the host's drift weighs alike (docs/serving.md, "ONNX Runtime for the passes that need no
gradient").

    HF_HUB_OFFLINE=1 python scripts/bench_onnx.py --images 64 [--model lite0_and_multitask] [--json FILE]
        [--against heatmap-in-torch]

The model is loaded twice, once with ``BRAIN_MRI_ONNX=0`` and once with ``1`` (the setting is read as a model loads),
with the app's threads; with ``--against heatmap-in-torch`` both with ``1``, the first with its LayerCAM through
autograd as before brainmri.serving.cam_onnx (its ``layercam`` removed), so that the comparison is that change
alone. Each image is answered both ways, in alternating order, after a few untimed requests. Prints each way's median
whole request (``scripts/bench_app.py``'s measure) and CPU time, and on how many images ONNX Runtime answered sooner.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling bench_app, however it is loaded

from bench_app import one_request, testing_paths  # noqa: E402

from brainmri.cli import exit_code, write_json  # noqa: E402
from brainmri.models.catalog import discover  # noqa: E402
from brainmri.models.registry import APP_DEFAULT  # noqa: E402
from brainmri.runtime import available_cpus, configure_torch_threads, describe_cpu  # noqa: E402
from brainmri.serving import Predictor  # noqa: E402
from brainmri.settings import batch_workers, onnx_runtime_as  # noqa: E402

_logger = logging.getLogger(__name__)
WAYS = ("torch", "onnx")


def loaded(way: str, name: str, against: str = "torch") -> Predictor:
    """A predictor with ``name`` loaded in every batch worker's copy, its no-gradient passes in ``way``; the "torch"
    way against "heatmap-in-torch" is ONNX Runtime with the heatmap's LayerCAM through autograd."""
    with onnx_runtime_as(way == "onnx" or against == "heatmap-in-torch"):
        predictor = Predictor(discover(hub=False))
        predictor.warm()
        for copy in range(predictor.workers):
            model = predictor.model(name, copy)
            if way == "torch" and against == "heatmap-in-torch":
                model.layercam = None
    return predictor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="Testing images, each answered both ways")
    parser.add_argument("--model", default=APP_DEFAULT, help="default: %(default)s")
    parser.add_argument("--warm-up", type=int, default=4, help="untimed requests each way first")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--against",
        choices=("torch", "heatmap-in-torch"),
        default="torch",
        help="the other way: every pass in torch (default), or ONNX Runtime with the heatmap's LayerCAM through autograd",
    )
    args = parser.parse_args()

    def run() -> None:
        threads = configure_torch_threads(batch_workers())  # as the app: the cores shared by its batch workers
        paths = testing_paths(args.images + args.warm_up, args.images // 4 + 2)
        images, warm = paths[: args.images], paths[args.images : args.images + args.warm_up]
        predictors = {way: loaded(way, args.model, args.against) for way in WAYS}
        for path in warm:
            for way in WAYS:
                one_request(predictors[way], args.model, path)
        wall: dict[str, list[float]] = {way: [] for way in WAYS}
        cpu: dict[str, list[float]] = {way: [] for way in WAYS}
        for i, path in enumerate(images):
            for way in WAYS if i % 2 == 0 else WAYS[::-1]:  # alternate who goes first
                ms, cpu_ms, _ = one_request(predictors[way], args.model, path)
                wall[way].append(ms)
                cpu[way].append(cpu_ms)
        sooner = sum(o < t for o, t in zip(wall["onnx"], wall["torch"]))
        load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{args.model}, {len(images)} Testing images each way, {describe_cpu()}, {available_cpus()} usable cores,")
        print(f"torch threads {threads}, 1-min load average {load_avg:.1f}; whole request, median ms:")
        figures = {"model": args.model, "n": len(images), "cpu": describe_cpu(), "load_average_1min": round(load_avg, 2)}
        figures["against"] = args.against
        for way in WAYS:
            label = args.against if way == "torch" else way  # the JSON's key too: "torch" or "heatmap-in-torch", "onnx"
            figures[label] = {
                "request_median_ms": round(statistics.median(wall[way]), 1),
                "cpu_median_ms": round(statistics.median(cpu[way]), 1),
            }
            print(f"  {label:16s} {figures[label]['request_median_ms']:7.1f} (CPU time {figures[label]['cpu_median_ms']:.1f})")
        figures["onnx_sooner"] = sooner
        print(f"ONNX Runtime answered sooner on {sooner} of {len(images)} images (against {args.against})")
        write_json(args.json, figures)

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
