"""Pictures that are not brain MRI slices, all made or bundled offline: what ``python -m train.ood measure``
checks the OOD statistics against (12 synthetic, 22 photos and drawings, 15 other scans).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from brainmri.data.imageio import load_image


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

    for name in _SKIMAGE_PHOTOS:
        yield "photo", f"skimage {name}", load_image(_skimage_file(name))
    for name, arr in zip(["china", "flower"], load_sample_images().images):
        yield "photo", f"sklearn {name}", Image.fromarray(arr)
    yield "photo", "matplotlib grace_hopper", load_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")


def _other_scans() -> Iterator[tuple[str, str, Image.Image]]:
    import pydicom

    for name in _SKIMAGE_SCANS:
        yield "other scan", f"skimage {name}", load_image(_skimage_file(name))
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    for name in _DICOM_SCANS:
        yield "other scan", f"DICOM {name}", load_image(folder / name)
