"""The serving path on CUDA against the CPU's: same class, probabilities within 1e-3, heatmap peaks within a few pixels, the same outline.

    python scripts/cuda_check.py --n 16                  # on a machine with a GPU: CPU vs CUDA, latency per request on CUDA
    python scripts/cuda_check.py --device cpu --n 4      # the rehearsal anywhere: CPU vs CPU (tests/test_cuda_check.py)
    python scripts/cuda_check.py --data data/brain-tumor-mri --out results.json   # a carried copy of the data, the report saved

Each of ``--n`` real Testing images (the first of each class in turn) goes through two Predictors built alike,
one on the CPU and one on ``--device``, one request at a time as the app serves it (the model, its heatmap, the
OOD judge's verdict, and the segmenter's tumour outline). A heatmap's peak counts as the same when it lies within
``--peak-px`` pixels of the CPU's, or when the CPU's heatmap at the other peak is within 1% of its own maximum (two
near-equal maxima, either one fair). Two outlines count as the same when both are absent, or both present with a
Dice of at least ``--outline-dice`` (two empty masks agree). Prints one line per image and a summary; exits 1 when
an image disagrees. ``--out`` writes the report with ``python``, ``torch``, ``device``, ``n``, ``passed`` and the
latency per request (results/cuda_check.json, issue 28).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from brainmri.cli import add_data_argument, exit_code, setup_logging, write_json  # noqa: E402
from brainmri.data.imageio import load_image  # noqa: E402
from brainmri.data.records import load_records  # noqa: E402
from brainmri.models.catalog import discover  # noqa: E402
from brainmri.models.registry import APP_DEFAULT  # noqa: E402
from brainmri.segmentation import mask_overlap  # noqa: E402
from brainmri.serving import Prediction, Predictor  # noqa: E402
from brainmri.settings import outline_bf16_as  # noqa: E402

_logger = logging.getLogger("cuda_check")

TIE = 0.01  # a peak elsewhere is still fair when the reference heatmap there is within this of its maximum


@dataclass
class Agreement:
    """How one image's answer on the device compares with the CPU's."""

    image: str
    cpu_class: str
    device_class: str
    max_prob_diff: float
    peak_px: float  # distance between the two heatmaps' peaks, in the image's pixels
    peak_tie: bool  # the device's peak is a near-maximum of the CPU's heatmap too
    same_verdict: bool  # the same OOD verdict (in distribution or not)
    device_ms: float
    outline_dice: float | None = None  # the two outlines' Dice (1.0 when both are empty); None when neither has one
    outline_missing: str = ""  # which side alone has an outline ("cpu" or "device"), else ""

    def problems(self, atol: float, peak_px: float, outline_dice: float = 0.98) -> list[str]:
        """What disagrees beyond the tolerances; empty when the image agrees."""
        found = []
        if self.cpu_class != self.device_class:
            found.append(f"class {self.device_class} on the device, {self.cpu_class} on the CPU")
        if self.max_prob_diff > atol:
            found.append(f"probabilities differ by {self.max_prob_diff:.2e} > {atol:g}")
        if self.peak_px > peak_px and not self.peak_tie:
            found.append(f"heatmap peaks {self.peak_px:.1f} px apart > {peak_px:g}")
        if not self.same_verdict:
            found.append("a different OOD verdict")
        if self.outline_missing:
            found.append(f"an outline on the {self.outline_missing} alone")
        elif self.outline_dice is not None and self.outline_dice < outline_dice:
            found.append(f"outlines at Dice {self.outline_dice:.3f} < {outline_dice:g}")
        return found


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks of one shape; 1.0 when both are empty (the outline's own scores)."""
    return float(mask_overlap(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0][0])


def peak_pixel(cam: np.ndarray) -> tuple[int, int]:
    """(row, column) of the heatmap's maximum."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(y), int(x)


def compare(name: str, cpu: Prediction, device: Prediction) -> Agreement:
    """The device's answer on one image against the CPU's."""
    if cpu.cam.shape != device.cam.shape:
        raise ValueError(f"{name}: heatmaps of different shapes, {cpu.cam.shape} and {device.cam.shape}")
    diff = max(abs(cpu.probabilities[k] - device.probabilities[k]) for k in cpu.probabilities)
    (y0, x0), (y1, x1) = peak_pixel(cpu.cam), peak_pixel(device.cam)
    tie = bool(cpu.cam[y1, x1] >= cpu.cam.max() - TIE)
    distance = float(np.hypot(y1 - y0, x1 - x0))
    agreement = Agreement(name, cpu.top_class, device.top_class, diff, distance, tie, cpu.in_distribution == device.in_distribution, 0.0)
    if (cpu.outline is None) != (device.outline is None):
        agreement.outline_missing = "cpu" if device.outline is None else "device"
    elif cpu.outline is not None:
        agreement.outline_dice = mask_dice(cpu.outline.mask, device.outline.mask)
    return agreement


def testing_images(data: str, n: int) -> list[tuple[str, Image.Image]]:
    """``n`` real Testing images, the first of each class in turn, as (file name, RGB image)."""
    by_class = load_records(data, "test").paths_by_class()
    chosen: list[Path] = []
    for i in range(n):
        files = list(by_class.values())[i % len(by_class)]
        chosen.append(files[i // len(by_class)])
    return [(p.name, load_image(p)) for p in chosen]  # decoded as an upload is


def timed(predictor: Predictor, image: Image.Image, model: str) -> tuple[Prediction, float]:
    start = time.perf_counter()
    result = predictor.predict(image, model)  # its arrays come back on the CPU: the GPU's work is done when it returns
    return result, (time.perf_counter() - start) * 1000


def run(data: str, n: int, device: str, model: str) -> tuple[list[Agreement], dict]:
    """Both paths on ``n`` images; the agreements and a summary of latencies in ms."""
    with float32_outlines():
        return _run(data, n, device, model)


@contextlib.contextmanager
def float32_outlines() -> Iterator[None]:
    """The CPU outlines in bfloat16 where it computes it natively (BRAIN_MRI_OUTLINE_BF16, docs/serving.md), CUDA in
    float32: while the check runs, the reference outlines in float32 too, so that both paths do the same arithmetic.
    (The first lease compared bf16 with float32: Dice 0.970-0.984 on seven of 31 outlines, which are the bf16-vs-float32
    figures of the same images on this project's CPU to within 0.003; docs/gpu_lease.md.)"""
    with outline_bf16_as(False):
        yield


def _run(data: str, n: int, device: str, model: str) -> tuple[list[Agreement], dict]:
    sources = discover(hub=False)
    cpu, other = Predictor(sources, device="cpu"), Predictor(sources, device=device)
    images = testing_images(data, n)
    for predictor in (cpu, other):  # load and warm up (cuDNN picks its kernels on the first pass)
        predictor.warm()
        predictor.predict(images[0][1], model)
    agreements, cpu_ms = [], []
    for name, image in images:
        reference, ms_cpu = timed(cpu, image, model)
        answer, ms_device = timed(other, image, model)
        agreement = compare(name, reference, answer)
        agreement.device_ms = ms_device
        agreements.append(agreement)
        cpu_ms.append(ms_cpu)
    device_ms = [a.device_ms for a in agreements]
    dice = [a.outline_dice for a in agreements if a.outline_dice is not None]
    summary = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "model": model,
        "segmenter": other.segmenter,  # the model that drew the outlines; None: served without one
        "outline_precision": "float32",  # on both sides (run's first lines)
        "device": str(other.model(model).device),
        "gpu": torch.cuda.get_device_name() if other.model(model).device.type == "cuda" else None,
        "n": n,
        "outlined": len(dice),  # images both sides outlined (in distribution); an empty outline counts
        "min_outline_dice": min(dice) if dice else None,
        "cpu_ms_median": statistics.median(cpu_ms),
        "device_ms_median": statistics.median(device_ms),
        "device_ms_max": max(device_ms),
        "max_prob_diff": max(a.max_prob_diff for a in agreements),
        "max_peak_px": max(a.peak_px for a in agreements),
    }
    return agreements, summary


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="how many Testing images (default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU: cuda, cuda:N, or cpu to rehearse")
    parser.add_argument("--model", default=APP_DEFAULT, help="a registry model or ensemble with local weights (default: %(default)s)")
    add_data_argument(parser)
    parser.add_argument("--atol", type=float, default=1e-3, help="largest difference allowed in a probability")
    parser.add_argument("--peak-px", type=float, default=4.0, help="largest distance allowed between heatmap peaks, in pixels")
    parser.add_argument("--outline-dice", type=float, default=0.98, help="smallest Dice allowed between the two outlines")
    parser.add_argument("--out", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    failed: list[bool] = []

    def check() -> None:
        agreements, summary = run(args.data, args.n, args.device, args.model)
        for a in agreements:
            problems = a.problems(args.atol, args.peak_px, args.outline_dice)
            failed.append(bool(problems))
            verdict = "; ".join(problems) or "same"
            dice = "   -" if a.outline_dice is None else f"{a.outline_dice:.3f}"
            print(
                f"{a.image:>24}  {a.cpu_class:>10}  dp {a.max_prob_diff:.1e}  peak {a.peak_px:4.1f} px  outline {dice}  "
                f"{a.device_ms:7.1f} ms  {verdict}"
            )
        print(
            f"{summary['n']} images, {args.model}: CPU {summary['cpu_ms_median']:.1f} ms, {summary['device']} "
            f"{summary['device_ms_median']:.1f} ms a request (median; max {summary['device_ms_max']:.1f}); "
            f"largest probability difference {summary['max_prob_diff']:.1e}, peaks at most {summary['max_peak_px']:.1f} px apart; "
            f"{summary['outlined']} outlined by {summary['segmenter']} (smallest Dice {summary['min_outline_dice']}); "
            f"{sum(failed)} disagree"
        )
        if summary["segmenter"] is None:  # the outline is part of the serving path: a check without it proves less
            print("no segmenter was available, so no outline was compared: failed")
            failed.append(True)
        summary["passed"] = not any(failed)
        if args.out:
            report = {**summary, "tolerances": {"atol": args.atol, "peak_px": args.peak_px, "outline_dice": args.outline_dice}}
            report["images"] = [asdict(a) for a in agreements]
            write_json(args.out, report)

    return exit_code(check, _logger) or (1 if any(failed) else 0)


if __name__ == "__main__":
    sys.exit(main())
