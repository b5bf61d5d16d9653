"""Benchmark the app on this machine: predict + Grad-CAM latency, start to first answer, model switch.

    python scripts/bench_app.py                 # every available model, 40 Testing images each
    python scripts/bench_app.py --images 100 --json bench.json

Prints figures, asserts nothing. The start-up figure launches ``python app.py`` offline
(HF_HUB_OFFLINE=1) on a free port and times until ``/predict`` has answered once. Wall times
depend on what else the machine runs (the 1-min load average is printed with them); the CPU
time per request (all threads) does not.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainmri.app import display  # noqa: E402
from brainmri.app.dataview import example_files, local_root  # noqa: E402
from brainmri.cli import exit_code, write_json  # noqa: E402
from brainmri.data.imageio import load_image  # noqa: E402
from brainmri.models.catalog import discover  # noqa: E402
from brainmri.models.segmenters import SEGMENTER_DEFAULT  # noqa: E402
from brainmri.rendering import data_url, overlay  # noqa: E402
from brainmri.runtime import available_cpus, configure_torch_threads, describe_cpu  # noqa: E402
from brainmri.serving import Predictor  # noqa: E402
from brainmri.settings import batch_workers, default_data  # noqa: E402

_logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched_app() -> Iterator[str]:
    """``python app.py`` offline on a free loopback port, as a Space runs it; yields its URL once it answers HTTP."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("app.py exited during start-up") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def start_to_first_answer(image: Path) -> dict:
    """Seconds from spawning ``python app.py`` to the server answering HTTP, and to the first /predict answer."""
    from gradio_client import Client, handle_file

    start = time.perf_counter()
    with launched_app() as url:
        up = time.perf_counter() - start
        details = Client(url, verbose=False).predict(handle_file(str(image)), api_name="/predict")[2]
        first = time.perf_counter() - start
    return {"server_up_s": round(up, 2), "first_answer_s": round(first, 2), "model": details["model"]}


def testing_paths(count: int, per_class: int) -> list[Path]:
    """The first ``count`` of ``per_class`` Testing images a class, the classes taking turns, from the data folder
    (``BRAIN_MRI_DATA``); a ValueError naming it when there is none."""
    root = local_root(default_data())
    if root is None:
        raise ValueError(f"no data folder at {default_data()} (set BRAIN_MRI_DATA)")
    return [p for p, _ in example_files(root, per_class=per_class)][:count]


def one_request(predictor: Predictor, name: str, path: Path) -> tuple[float, float, float]:
    """One whole request as the app serves it (decode, predict, the heatmap's overlay and the outline drawn, PNG data
    URLs of both): its wall ms, its CPU ms over all threads (what it costs, busy machine or not), and the passes' ms."""
    start, start_cpu = time.perf_counter(), time.process_time()
    image = load_image(path)
    result = predictor.predict(image, name)
    data_url(overlay(image, result.cam))  # what the app sends: the heatmap inline
    result.details()  # with the outline's mask as a PNG data URL
    display.with_outline(image, None if result.outline is None else result.outline.mask, True)
    return (time.perf_counter() - start) * 1000, (time.process_time() - start_cpu) * 1000, result.latency_ms


def latency(predictor: Predictor, name: str, images: list, warmup: int = 3) -> dict:
    """Median ms of predict + Grad-CAM (+ OOD, + the tumour outline), and of the whole request (decode, predict, overlay,
    the outline drawn, PNG data URLs of the heatmap and of the mask in the details)."""
    predictor.model(name)  # load outside the timing
    for path in images[:warmup]:
        predictor.predict(load_image(path), name)
    core, full, cpu = [], [], []
    for path in images:
        whole, cpu_time, model_time = one_request(predictor, name, path)
        full.append(whole)
        cpu.append(cpu_time)
        core.append(model_time)
    return {
        "predict_gradcam_median_ms": round(statistics.median(core), 1),
        "predict_gradcam_p90_ms": round(sorted(core)[int(0.9 * (len(core) - 1))], 1),
        "request_median_ms": round(statistics.median(full), 1),
        "request_cpu_median_ms": round(statistics.median(cpu), 1),
        "n": len(images),
    }


def switch_time(predictor: Predictor, names: list[str], image_path: Path, rounds: int = 10) -> float:
    """Median seconds to answer with another, already loaded, model (the dropdown's switch)."""
    image = load_image(image_path)
    for name in names:
        predictor.predict(image, name)
    times = []
    for r in range(rounds):
        name = names[r % len(names)]
        start = time.perf_counter()
        predictor.predict(image, name)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="Testing images per model")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--models", nargs="+", help="only these models (default: every available one)")
    parser.add_argument("--segmenter", default=SEGMENTER_DEFAULT, help=f"the outline's model (default: the app's, {SEGMENTER_DEFAULT})")
    args = parser.parse_args()

    def run() -> None:
        threads = configure_torch_threads(batch_workers())  # as the app: the cores shared by its batch workers
        images = testing_paths(args.images + 3, max(1, args.images // 4) + 1)
        predictor = Predictor(discover(hub=False), segmenter=args.segmenter)
        names = args.models or predictor.available
        print(f"tumour outline: {predictor.segmenter or 'none (no shipped segmenter)'}")
        load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        machine = platform.processor() or platform.machine()
        cpu = describe_cpu()
        print(f"machine: {machine} ({cpu}), {available_cpus()} usable cores, torch threads {threads}, 1-min load average {load_avg:.1f}")
        figures = {"cores": available_cpus(), "cpu": cpu, "load_average_1min": round(load_avg, 2), "models": {}}
        for name in names:
            figures["models"][name] = latency(predictor, name, images)
            m = figures["models"][name]
            print(
                f"{name:24s} predict+heatmap median {m['predict_gradcam_median_ms']:7.1f} ms (p90 {m['predict_gradcam_p90_ms']:.1f}),"
                f" whole request {m['request_median_ms']:.1f} ms (CPU time {m['request_cpu_median_ms']:.1f} ms), n={m['n']}"
            )
        if len(names) > 1:
            figures["switch_s"] = switch_time(predictor, names, images[0])
            print(f"switch to an already-loaded model and answer: median {figures['switch_s']:.3f} s")
        figures["startup"] = start_to_first_answer(images[0])
        s = figures["startup"]
        print(f"app start to first answer: {s['first_answer_s']:.1f} s (server up at {s['server_up_s']:.1f} s, model {s['model']})")
        write_json(args.json, figures)

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
