"""Do the heatmaps look at the brain? The share of the app's heatmap (LayerCAM) mass inside a simple brain mask, per model.

    python -m reports.cam_sanity [--data DATA] [--limit-per-class N] [--models a b] [--out results/cam_sanity.json]
    python -m reports.cam_sanity --models simple_cnn_7 --update   # a retrained model: its entry replaced, the rest kept

For every shipped model and every Testing image (or a seeded subset of ``N`` per class), the
heatmap comes from the app's own path (``Predictor.predict``: LayerCAM through ONNX Runtime where written out,
brainmri.serving.cam_onnx, else ``brainmri.explain``),
and the brain mask is an intensity threshold: Otsu on the greyscale slice, holes filled, largest
connected component kept. The share is ``cam[mask].sum() / cam.sum()``. A uniform heatmap would
score the mask's area fraction, reported alongside as the chance level. A model whose mean share
is under 0.5 is flagged "attention mostly outside the brain".
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from brainmri.cli import add_data_argument, exit_code, setup_logging, write_json
from brainmri.data.imageio import load_image
from brainmri.data.records import load_records
from brainmri.explain import DEFAULT_METHOD
from brainmri.models.catalog import discover
from brainmri.models.checkpoint import CAM_SANITY, results_dir
from brainmri.serving import Predictor

_logger = logging.getLogger(__name__)

OUTSIDE_THRESHOLD = 0.5  # mean in-brain share under this: "attention mostly outside the brain"


def brain_mask(image: Image.Image) -> np.ndarray:
    """(H, W) bool: Otsu threshold on the greyscale image, holes filled, the largest connected component."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    grey = np.asarray(image.convert("L"), dtype=np.float32)
    if grey.max() <= grey.min():
        return np.zeros(grey.shape, dtype=bool)
    mask = ndimage.binary_fill_holes(grey > threshold_otsu(grey))
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def in_mask_share(cam: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the heatmap's mass inside the mask; NaN for an all-zero heatmap."""
    if cam.shape != mask.shape:
        raise ValueError(f"heatmap is {cam.shape}, mask {mask.shape}")
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else float("nan")


def test_files(data: Path, limit_per_class: int | None, seed: int = 0) -> list[tuple[Path, str]]:
    """Testing images as (path, class); a seeded random subset of ``limit_per_class`` per class if given."""
    out = []
    for name, files in load_records(data, "test").paths_by_class().items():
        if limit_per_class:
            files = sorted(random.Random(seed).sample(files, min(limit_per_class, len(files))))
        out += [(f, name) for f in files]
    return out


def summarise(values: list[float]) -> dict:
    values = [v for v in values if v == v]  # drop NaN (all-zero heatmaps)
    return (
        {"n": len(values), "mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4)}
        if values
        else {"n": 0}
    )


def model_report(predictor: Predictor, name: str, files: list[tuple[Path, str]]) -> dict:
    shares: dict[str, list[float]] = {}
    areas: list[float] = []
    for path, cls in tqdm(files, desc=name, leave=False):
        image = load_image(path)
        mask = brain_mask(image)
        shares.setdefault(cls, []).append(in_mask_share(predictor.predict(image, name).cam, mask))
        areas.append(float(mask.mean()))
    everything = [s for v in shares.values() for s in v]
    overall = summarise(everything)
    return {
        **overall,
        "mask_area_mean": round(statistics.fmean(areas), 4),  # the share a uniform heatmap would get
        "per_class": {c: summarise(v) for c, v in shares.items()},
        "verdict": "attention mostly outside the brain"
        if overall.get("mean", 0) < OUTSIDE_THRESHOLD
        else "attention mostly inside the brain",
    }


def cam_sanity_markdown(path: Path | None = None) -> str:
    """The report as a table, one row per model (docs/heatmaps.md; written by ``python -m reports.results --docs``)."""
    path = results_dir() / CAM_SANITY if path is None else path
    if not path.is_file():
        return "The check has not run yet.\n"
    models = json.loads(path.read_text())["models"]
    classes = sorted({c for r in models.values() for c in r.get("per_class", {})})
    lines = ["| model | mean | median | " + " | ".join(classes) + " |", "|---|" + "---:|" * (2 + len(classes))]
    for name, r in models.items():
        per_class = [f"{r['per_class'][c]['mean']:.3f}" if c in r.get("per_class", {}) else "" for c in classes]
        lines.append(f"| {name} | {r['mean']:.3f} | {r['median']:.3f} | " + " | ".join(per_class) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--limit-per-class", type=int, default=None, help="seeded random subset per class (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit-per-class draw")
    parser.add_argument("--models", nargs="*", default=None, help="default: every available local checkpoint")
    parser.add_argument("--out", type=Path, default=results_dir() / CAM_SANITY, help="the report (default: %(default)s)")
    parser.add_argument(
        "--update", action="store_true", help="replace these models' entries in the report at --out and keep the others' (retrained models)"
    )
    args = parser.parse_args(argv)

    def run() -> None:
        predictor = Predictor(discover(hub=False), segmenter=None)  # the heatmap alone: no outline to draw
        models = args.models or predictor.available
        files = test_files(args.data, args.limit_per_class, args.seed)
        report = {
            "split": "Testing",
            "images": len(files),
            "subset": f"seeded ({args.seed}) {args.limit_per_class} per class" if args.limit_per_class else "all",
            "mask": "Otsu threshold on greyscale, holes filled, largest component",
            "cam": f"{DEFAULT_METHOD}, each model's served heatmap (the app's path)",
            "models": {name: model_report(predictor, name, files) for name in models},
        }
        if args.update and args.out.is_file():
            kept = json.loads(args.out.read_text())
            settings = ("split", "images", "subset", "mask", "cam")
            if any(kept.get(k) != report[k] for k in settings):
                raise ValueError(f"{args.out} was made with other settings ({', '.join(settings)}): rerun every model instead of --update")
            report["models"] = {**kept["models"], **report["models"]}  # the others' entries, in their order
        write_json(args.out, report)
        for name, r in report["models"].items():
            if name not in models:
                continue
            print(
                f"{name}: mean in-brain share {r['mean']:.3f} (median {r['median']:.3f},"
                f" chance {r['mask_area_mean']:.3f}) -> {r['verdict']}"
            )
        print(f"wrote {args.out}")

    return exit_code(run, _logger)


if __name__ == "__main__":
    raise SystemExit(main())
