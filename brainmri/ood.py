"""Out-of-distribution check: does an upload look like the brain MRI slices a model was trained on?

Three tests, any of which flags an image:

1. colour: MRI slices are greyscale; an image whose channels differ more than any
   training image's by a margin is a photo or a colour scan.
2. contrast: a (nearly) uniform image is blank, whatever the model says about it.
3. features: the Mahalanobis distance of the model's pooled penultimate features to the
   nearest training-class mean, with one covariance shared by the classes (Lee et al.,
   2018), above a high percentile of the *validation* images' distances.

The statistics are fitted per checkpoint on the same train/validation split as training
(seed and val_fraction from its train_config.json) and stored beside it as
``ood.safetensors`` + ``ood.json``, added to its sha256 manifest:

    python -m brainmri.ood fit checkpoints/tf_efficientnet_lite0 --data ../shared/data/brain-tumor-mri
    python -m brainmri.ood measure checkpoints/tf_efficientnet_lite0 --data ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from brainmri.checkpoint import MANIFEST, WEIGHTS, label_names, load_checkpoint
from brainmri.cli import exit_code
from brainmri.data import data_config, eval_transform, load_records, sha256
from brainmri.runtime import configure_torch_threads
from brainmri.split import checkpoint_split

_logger = logging.getLogger(__name__)

OOD_TENSORS = "ood.safetensors"
OOD_CONFIG = "ood.json"
DEFAULT_PERCENTILE = 99.0  # of validation distances: about 1% of real slices flagged by design
NOT_MRI = "does not look like a brain MRI"


@dataclass
class OODResult:
    """The verdict on one image, with the numbers behind it."""

    in_distribution: bool
    reasons: list[str]
    distance: float | None  # Mahalanobis distance to the nearest class mean
    threshold: float | None
    colourfulness: float
    contrast: float
    checked_by: str = ""  # the model whose features and statistics gave the verdict

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class OODStats:
    """Fitted statistics of one checkpoint; ``precision`` is the inverse shared covariance."""

    means: torch.Tensor  # (C, D)
    precision: torch.Tensor  # (D, D)
    threshold: float  # distance above which an image is flagged
    colour_threshold: float
    contrast_threshold: float
    meta: dict  # percentile, counts, the weights' sha256 the stats were fitted on

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B,) Mahalanobis distance to the nearest class mean."""
        diff = features.double()[:, None, :] - self.means.double()[None]  # (B, C, D)
        d2 = torch.einsum("bcd,de,bce->bc", diff, self.precision.double(), diff)
        return d2.clamp_min(0).min(dim=1).values.sqrt().float()

    def check(self, image: Image.Image, features: torch.Tensor) -> OODResult:
        """Verdict on one RGB image and its (1, D) features."""
        colour, contrast = colourfulness(image), grey_contrast(image)
        distance = float(self.distance(features)[0])
        reasons = []
        if colour > self.colour_threshold:
            reasons.append(f"it is in colour (colourfulness {colour:.1f} > {self.colour_threshold:.1f}); MRI slices are greyscale")
        if contrast < self.contrast_threshold:
            reasons.append(f"it is almost uniform (contrast {contrast:.1f} < {self.contrast_threshold:.1f})")
        if distance > self.threshold:
            reasons.append(f"its features are far from every training class (distance {distance:.1f} > {self.threshold:.1f})")
        return OODResult(not reasons, reasons, distance, self.threshold, colour, contrast)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        save_file({"means": self.means.float().contiguous(), "precision": self.precision.float().contiguous()}, folder / OOD_TENSORS)
        config = {
            "threshold": self.threshold,
            "colour_threshold": self.colour_threshold,
            "contrast_threshold": self.contrast_threshold,
            **self.meta,
            # Checked at load even if a later write_manifest drops these files from the manifest.
            "tensors_sha256": sha256((folder / OOD_TENSORS).read_bytes()),
        }
        (folder / OOD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        _add_to_manifest(folder, [OOD_TENSORS, OOD_CONFIG])


def _add_to_manifest(folder: Path, names: list[str]) -> None:
    """Record the sha256 of extra files in the checkpoint's manifest, which load_checkpoint verifies."""
    path = folder / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.update({name: sha256((folder / name).read_bytes()) for name in names})
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def load_stats(folder: str | Path) -> OODStats | None:
    """The folder's OOD statistics; None (with a warning) when absent or fitted on other weights.

    ValueError when the tensors do not match the sha256 recorded beside them.
    """
    folder = Path(folder)
    if not (folder / OOD_CONFIG).is_file() or not (folder / OOD_TENSORS).is_file():
        # Expected for all but the model that judges uploads (brainmri.predict.Predictor's ood_model).
        _logger.info("%s has no OOD statistics (fit them with: python -m brainmri.ood fit %s)", folder, folder)
        return None
    config = json.loads((folder / OOD_CONFIG).read_text())
    if config.get("weights_sha256") != sha256((folder / WEIGHTS).read_bytes()):
        _logger.warning("%s: OOD statistics were fitted on other weights; refit with python -m brainmri.ood fit", folder)
        return None
    if config.pop("tensors_sha256", None) != sha256((folder / OOD_TENSORS).read_bytes()):
        raise ValueError(f"{folder / OOD_TENSORS} does not match its sha256 in {OOD_CONFIG}")
    tensors = load_file(folder / OOD_TENSORS)
    thresholds = {k: float(config.pop(k)) for k in ("threshold", "colour_threshold", "contrast_threshold")}
    return OODStats(tensors["means"], tensors["precision"], **thresholds, meta=config)


# ---------------------------------------------------------------- image measures


def _small_array(image: Image.Image, side: int = 128) -> np.ndarray:
    im = image.convert("RGB")
    if max(im.size) > side:
        im = im.copy()
        im.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def colourfulness(image: Image.Image) -> float:
    """Mean over pixels of max - min across R, G, B: 0 for greyscale."""
    a = _small_array(image)
    return float((a.max(axis=2) - a.min(axis=2)).mean())


def grey_contrast(image: Image.Image) -> float:
    """Standard deviation of the grey levels (0-255)."""
    return float(_small_array(image).mean(axis=2).std())


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D): the pooled penultimate features, the classifier's input."""
    return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)


# ---------------------------------------------------------------- fitting


@torch.inference_mode()
def extract(model: nn.Module, images: Iterator[Image.Image], total: int, batch_size: int = 64, desc: str = "features") -> dict:
    """Features, probabilities and image measures of RGB images, batched through the eval transform."""
    transform = eval_transform(data_config(model))
    feats, probs, colour, contrast, batch = [], [], [], [], []

    def flush() -> None:
        f = pooled_features(model, torch.stack(batch))
        feats.append(f)
        probs.append(model.get_classifier()(f).softmax(dim=1))
        batch.clear()

    for im in tqdm(images, total=total, desc=desc, leave=False, mininterval=5):
        colour.append(colourfulness(im))
        contrast.append(grey_contrast(im))
        batch.append(transform(im))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {"features": torch.cat(feats), "probs": torch.cat(probs), "colour": np.array(colour), "contrast": np.array(contrast)}


def fit(folder: str | Path, data: str, percentile: float = DEFAULT_PERCENTILE) -> OODStats:
    """Fit class means and a shared covariance on the training part, the thresholds on validation."""
    from sklearn.covariance import LedoitWolf

    folder = Path(folder)
    model = load_checkpoint(folder)
    train, val = checkpoint_split(folder, data)  # exactly the images training fitted and chose on
    if train.class_names != label_names(folder):
        raise ValueError(f"data classes {train.class_names} differ from the checkpoint's {label_names(folder)}")
    tr = extract(model, (train.open(i) for i in range(len(train))), len(train), desc="train features")
    feats, labels = tr["features"].double(), torch.from_numpy(train.labels)
    means = torch.stack([feats[labels == c].mean(dim=0) for c in range(len(train.class_names))])
    # Ledoit-Wolf shrinkage: D (up to 1280) is not small next to N, and the plain estimate is ill-conditioned.
    lw = LedoitWolf().fit((feats - means[labels]).numpy())
    stats = OODStats(means.float(), torch.from_numpy(lw.precision_).float(), 0.0, 0.0, 0.0, {})
    va = extract(model, (val.open(i) for i in range(len(val))), len(val), desc="validation features")
    val_dist = stats.distance(va["features"]).numpy()
    stats.threshold = float(np.percentile(val_dist, percentile))
    # Margins over the training images' own extremes: these two tests should not flag real slices at all.
    stats.colour_threshold = max(4.0, 2.0 * float(tr["colour"].max()))
    stats.contrast_threshold = 0.5 * float(tr["contrast"].min())
    stats.meta = {
        "percentile": percentile,
        "n_train": len(train),
        "n_val": len(val),
        "val_flagged_by_distance": float((val_dist > stats.threshold).mean()),
        "feature_dim": int(feats.shape[1]),
        "shrinkage": float(lw.shrinkage_),
        "weights_sha256": sha256((folder / WEIGHTS).read_bytes()),
        "data": str(data),
    }
    stats.save(folder)
    _logger.info(
        "wrote %s: threshold %.2f at the %.1fth percentile of %d validation distances",
        folder / OOD_CONFIG,
        stats.threshold,
        percentile,
        len(val),
    )
    return stats


# ---------------------------------------------------------------- measuring


def reference_outliers() -> Iterator[tuple[str, str, Image.Image]]:
    """(group, name, RGB image) pictures that are not brain MRI slices, all made or bundled offline.

    Groups: "synthetic" (blank, noise, gradients, text, shapes), "photo" (photographs and
    other pictures bundled with scikit-image, scikit-learn and matplotlib) and "other scan"
    (other modalities and body parts: pydicom's bundled DICOM test files, fundus, histology).
    """
    yield from _synthetic()
    yield from _bundled_pictures()
    yield from _other_scans()


def _synthetic() -> Iterator[tuple[str, str, Image.Image]]:
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    size = 256
    for level in (0, 128, 255):
        yield "synthetic", f"blank {level}", Image.new("RGB", (size, size), (level,) * 3)
    yield "synthetic", "uniform noise grey", Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).convert("RGB")
    yield "synthetic", "uniform noise colour", Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    gauss = np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8)
    yield "synthetic", "gaussian noise", Image.fromarray(gauss).convert("RGB")
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.float32), (size, 1))
    yield "synthetic", "horizontal gradient", Image.fromarray(ramp.astype(np.uint8)).convert("RGB")
    yy, xx = np.mgrid[:size, :size]
    radial = 255 * (1 - np.hypot(yy - size / 2, xx - size / 2) / (size / np.sqrt(2)))
    yield "synthetic", "radial gradient", Image.fromarray(radial.astype(np.uint8)).convert("RGB")
    yield "synthetic", "checkerboard", Image.fromarray((((yy // 32 + xx // 32) % 2) * 255).astype(np.uint8)).convert("RGB")
    text = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(text)
    for i in range(12):
        draw.text((8, 8 + i * 20), "The quick brown fox jumps over", fill="black")
    yield "synthetic", "text", text
    shapes = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(shapes)
    for _ in range(8):
        x0, y0 = rng.integers(0, size - 60, 2)
        draw.ellipse((int(x0), int(y0), int(x0) + 60, int(y0) + 60), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    yield "synthetic", "colour shapes", shapes
    disc = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(disc).ellipse((40, 30, 216, 226), fill=(170, 170, 170))
    yield "synthetic", "grey disc on black", disc


_SKIMAGE_PHOTOS = [
    "astronaut", "brick", "camera", "chelsea", "clock_motion", "coffee", "coins", "color", "grass", "gravel",
    "horse", "hubble_deep_field", "logo", "moon", "motorcycle_left", "page", "rocket", "text", "chessboard_GRAY",
]  # fmt: skip
_SKIMAGE_SCANS = ["retina", "microaneurysms", "ihc", "cell", "phantom"]
# pydicom's bundled test files that are images of other modalities or body parts (CT, NM, US, abdominal MR).
_DICOM_SCANS = [
    "CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000.dcm", "JPGExtended.dcm",
    "examples_overlay.dcm", "examples_rgb_color.dcm", "examples_palette.dcm", "examples_ybr_color.dcm", "examples_jpeg2k.dcm",
]  # fmt: skip


def _skimage_file(name: str) -> Path:
    try:
        import skimage
    except ImportError as e:
        raise ImportError("pip install scikit-image for the bundled test pictures") from e
    data = Path(skimage.__file__).parent / "data"
    matches = sorted(data.glob(f"{name}.*"))
    if not matches:
        raise ValueError(f"scikit-image has no bundled picture {name!r}")
    return matches[0]


def _bundled_pictures() -> Iterator[tuple[str, str, Image.Image]]:
    import matplotlib
    from sklearn.datasets import load_sample_images

    from brainmri.imageio import load_image

    for name in _SKIMAGE_PHOTOS:
        yield "photo", f"skimage {name}", load_image(_skimage_file(name))
    for name, arr in zip(["china", "flower"], load_sample_images().images):
        yield "photo", f"sklearn {name}", Image.fromarray(arr)
    yield "photo", "matplotlib grace_hopper", load_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")


def _other_scans() -> Iterator[tuple[str, str, Image.Image]]:
    import pydicom

    from brainmri.imageio import load_image

    for name in _SKIMAGE_SCANS:
        yield "other scan", f"skimage {name}", load_image(_skimage_file(name))
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    for name in _DICOM_SCANS:
        yield "other scan", f"DICOM {name}", load_image(folder / name)


def measure(folder: str | Path, data: str) -> dict:
    """Share of reference outliers flagged and of real Testing slices wrongly flagged, printed and returned."""
    folder = Path(folder)
    stats = load_stats(folder)
    if stats is None:
        raise ValueError(f"{folder} has no OOD statistics for its current weights; run: python -m brainmri.ood fit {folder} --data DATA")
    model = load_checkpoint(folder)
    test = load_records(data, "test")
    te = extract(model, (test.open(i) for i in range(len(test))), len(test), desc="Testing features")
    outliers = list(reference_outliers())
    ou = extract(model, (im for _, _, im in outliers), len(outliers), desc="outlier features")

    def flags(x: dict) -> np.ndarray:
        by_colour = x["colour"] > stats.colour_threshold
        by_contrast = x["contrast"] < stats.contrast_threshold
        by_distance = stats.distance(x["features"]).numpy() > stats.threshold
        return by_colour | by_contrast | by_distance

    test_flags, out_flags = flags(te), flags(ou)
    groups = np.array([g for g, _, _ in outliers])
    result = {
        "model": folder.name,
        "testing_wrongly_flagged": float(test_flags.mean()),
        "testing_n": len(test),
        "testing_accuracy_kept": float((te["probs"].argmax(1).numpy() == test.labels)[~test_flags].mean()),
        "outliers_flagged": float(out_flags.mean()),
        "outliers_n": len(outliers),
        "by_group": {g: {"flagged": float(out_flags[groups == g].mean()), "n": int((groups == g).sum())} for g in dict.fromkeys(groups)},
        "missed": [name for (_, name, _), f in zip(outliers, out_flags) if not f],
        "threshold": stats.threshold,
        "percentile": stats.meta.get("percentile"),
    }
    print(f"OOD check of {folder.name} (threshold {stats.threshold:.2f} = {result['percentile']}th percentile of validation distances)")
    print(f"  real Testing slices wrongly flagged: {result['testing_wrongly_flagged']:.1%} of {len(test)}")
    print(f"  non-MRI pictures flagged:            {result['outliers_flagged']:.1%} of {len(outliers)}")
    for g, r in result["by_group"].items():
        print(f"    {g:12s} {r['flagged']:.1%} of {r['n']}")
    print(f"  missed: {', '.join(result['missed']) or 'none'}")
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("fit", "fit and store the statistics beside the checkpoint"), ("measure", "print flag rates")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("checkpoint", nargs="+", help="checkpoint folder(s)")
        p.add_argument("--data", default="../shared/data/brain-tumor-mri", help="image folder or Hub dataset id")
        if name == "fit":
            p.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE, help="of validation distances")
        else:
            p.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    configure_torch_threads()

    def run() -> None:
        results = []
        for folder in args.checkpoint:
            if args.command == "fit":
                fit(folder, args.data, args.percentile)
            else:
                results.append(measure(folder, args.data))
        if args.command == "measure" and args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
