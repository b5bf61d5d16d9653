"""Drawing over a scan, in one place: the heatmap's colours and opacity, the tumour outline's colour, and the PNG
data URLs the app and the API carry pictures in.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageFilter

DEFAULT_OPACITY = 0.45  # of the heatmap over the scan: the app's slider starts here


def colormap_lut(name: str = "jet") -> np.ndarray:
    """A matplotlib colormap as a (256, 3) uint8 table: ``lut[index]`` colours an array of 0-255 indices."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)


_LUT = colormap_lut()


def overlay(image: Image.Image, cam: np.ndarray | None, opacity: float = DEFAULT_OPACITY) -> Image.Image:
    """Blend a colour-mapped heatmap over the image.

    Args:
        cam: (H, W) in [0, 1], the image's size; None shows the image alone.
        opacity: 0 shows the image alone, 1 the heatmap alone.
    """
    if cam is None:
        return image.convert("RGB")
    if cam.shape != (image.height, image.width):
        raise ValueError(f"heatmap is {cam.shape[1]} x {cam.shape[0]}, the image {image.width} x {image.height}")
    opacity = float(np.clip(opacity, 0.0, 1.0))
    heat = _LUT[(np.clip(cam, 0, 1) * 255).astype(np.uint8)].astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((base * (1 - opacity) + heat * opacity + 0.5).astype(np.uint8))


OUTLINE_COLOUR = (0, 255, 170)  # a green that no heatmap colour and no grey of a scan shares


def draw_outline(image: Image.Image, mask: np.ndarray, width: int = 0) -> Image.Image:
    """The image with the mask's border drawn over it: a ring ``width // 2`` px thick just outside the mask (``width``
    defaults to about 1% of the side, at least 2), so the tumour itself stays visible."""
    width = width or max(2, round(min(image.size) / 110))
    inside = Image.fromarray(mask.astype(np.uint8) * 255)
    grown = inside.filter(ImageFilter.MaxFilter(2 * (width // 2) + 1))
    border = np.asarray(grown) > np.asarray(inside)  # the ring just outside the mask: the tumour itself stays visible
    out = np.asarray(image.convert("RGB")).copy()
    out[border] = OUTLINE_COLOUR
    return Image.fromarray(out)


MIME_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
# PNG at zlib level 1: a heatmap encodes ~3x faster than at PIL's default 6 for ~20% more bytes (still lossless).
_SAVE_OPTIONS = {"png": {"compress_level": 1}, "webp": {"lossless": True}}


def data_url(image: Image.Image, fmt: str = "png") -> str:
    """The image encoded as a ``data:image/...;base64,`` URL (PNG by default: lossless)."""
    fmt = fmt.lower().replace("jpg", "jpeg")
    if fmt not in MIME_TYPES:
        raise ValueError(f"cannot inline {fmt!r} images; use one of {sorted(MIME_TYPES)}")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **_SAVE_OPTIONS.get(fmt, {}))
    return f"data:{MIME_TYPES[fmt]};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def decode_data_url(url: str) -> Image.Image:
    """The PIL image in a ``data:image/...;base64,`` URL, as an API client receives the heatmap."""
    header, sep, payload = url.partition(",")
    if not (sep and header.startswith("data:image/") and header.endswith(";base64")):
        raise ValueError(f"not a base64 image data URL: {url[:40]!r}")
    image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    image.load()
    return image
