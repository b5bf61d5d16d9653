"""The one decoder: every image format we take, to one RGB 8-bit PIL image, for training and serving alike.

JPEG, PNG (8 and 16 bit, greyscale, palette, RGBA), WebP, BMP, TIFF (first page), GIF (first frame)
and DICOM (pydicom, with the modality rescale and the file's own window). EXIF orientation
is honoured, and anything that is not a usable image is a ``ValueError`` that names the problem.
:func:`decode_image` is what training, evaluation, the OOD fit and the app all decode with (so the OOD thresholds
are fitted on the pixels they are applied to); :func:`load_image` wraps it with the upload limits: huge images are
refused before they are decoded (decompression bombs), tiny ones refused, large ones downscaled.
Nothing is written to disk or logged: a DICOM file's patient metadata is read only as far as pydicom must to
reach the pixels, then dropped.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refused above this many pixels: a small file that decodes to gigabytes is an attack, not a scan.
MAX_PIXELS = 50_000_000
# Decoded images are downscaled to at most this side; the models see 128-390 px (Lite2's heatmap the largest).
MAX_SIDE = 2048
# Smaller than this on either side is not a scan (MR slices are 64 px and up).
MIN_SIDE = 48
# Longer than this many times its width (or the reverse) is not a scan: a 48 x 50,000 sliver of a few KB would pass
# the limits above, then be resized to 224 px across and so hundreds of MB long for each pass that reads it.
MAX_ASPECT = 10
# Refused above this many bytes, before any decoding.
MAX_BYTES = 64 * 1024 * 1024

# The one list of accepted formats: PIL's name for each -> (short name, what is read). The upload label and the
# "not an image this app can read" message come from here, and other formats PIL could open (ICO, PPM, PSD...) are refused.
PIL_FORMATS = {
    "JPEG": ("JPEG", "JPEG"),
    "PNG": ("PNG", "PNG (8/16-bit, greyscale, palette, RGBA)"),
    "WEBP": ("WebP", "WebP"),
    "BMP": ("BMP", "BMP"),
    "TIFF": ("TIFF", "TIFF (first page)"),
    "GIF": ("GIF", "GIF (first frame)"),
}
# Pillow's own name for a format this app reads under another: phone cameras write multi-picture JPEGs, which
# Pillow calls MPO and opens at their first picture, a plain JPEG.
PIL_ALIASES = {"MPO": "JPEG"}
DICOM_SUFFIXES = {".dcm", ".dicom"}  # DICOM files often have no suffix, so they are known by content too
# The suffixes a data folder's images may have: the accepted formats' own (DICOM without a suffix is an upload only).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", *DICOM_SUFFIXES}


def accepted_formats(detailed: bool = True) -> str:
    """The accepted formats in words: detailed for error messages, short for the upload widget."""
    dicom = f" ({', '.join(sorted(DICOM_SUFFIXES))}, or any name with DICOM's DICM header)" if detailed else ""
    return ", ".join(d if detailed else short for short, d in PIL_FORMATS.values()) + " or DICOM" + dicom


def decode_image(data: bytes, name: str = "image", check: Callable[[int, int, str], None] | None = None) -> Image.Image:
    """Decode image bytes in any accepted format to an RGB uint8 PIL image: the one decoder.

    Args:
        data: the file's bytes.
        name: the file name, for messages and for recognising ``.dcm``.
        check: called with (width, height, name) once the header gives the size, before the pixels are decoded;
            :func:`load_image` passes the upload limits here.
    Raises:
        ValueError: naming the problem (empty, not an image, truncated...).
    """
    if not data:
        raise ValueError(f"{name} is empty (0 bytes)")
    return _decode_dicom(data, name, check) if is_dicom(data, name) else _decode_pil(data, name, check)


def load_image(source: bytes | str | Path, name: str | None = None) -> Image.Image:
    """Decode an upload (bytes or a file path): :func:`decode_image` within the upload limits.

    The limits: at most ``MAX_BYTES`` read, at most ``MAX_PIXELS``, at least ``MIN_SIDE`` a side and at most
    ``MAX_ASPECT``:1 checked from the header before decoding, and the result downscaled to at most ``MAX_SIDE`` a side.

    Args:
        source: the file's bytes, or its path.
        name: the file name, for messages and for recognising ``.dcm``; defaults to the path's name.
    Returns:
        An RGB image of at most ``MAX_SIDE`` pixels a side.
    Raises:
        ValueError: naming the problem (empty, not an image, truncated, too small, too large...).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.name
        try:  # one read: a file deleted or unreadable between a check and the read is a clear error, not a traceback
            if not path.is_file():
                raise FileNotFoundError
            if path.stat().st_size > MAX_BYTES:
                raise ValueError(f"{name} is {path.stat().st_size / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB")
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"file not found: {name}") from None
        except OSError as e:
            raise ValueError(f"cannot read {name} ({e.strerror or type(e).__name__})") from None
    else:
        data = bytes(source)
    name = name or "image"
    if len(data) > MAX_BYTES:
        raise ValueError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB")
    image = decode_image(data, name, check=_check_size)
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image


def pixel_key(image: Image.Image) -> str:
    """Which picture this is: its mode, size and a digest of its pixels (one file decoded twice gives one key)."""
    return f"{image.mode}{image.size}:" + hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()


def is_dicom(data: bytes, name: str = "") -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble; bare datasets are known by suffix."""
    return data[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_SUFFIXES


def _check_size(width: int, height: int, name: str) -> None:
    """The upload limits on a decoded size: not a decompression bomb, not too small or too thin to be a scan."""
    if width * height > MAX_PIXELS:
        raise ValueError(
            f"{name} is {width} x {height} = {width * height / 1e6:.0f} megapixels, over the limit of {MAX_PIXELS / 1e6:.0f}:"
            " refused as a possible decompression bomb"
        )
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"{name} is {width} x {height} pixels, too small to be a scan (at least {MIN_SIDE} a side)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ValueError(f"{name} is {width} x {height} pixels, too long and thin to be a scan (at most {MAX_ASPECT}:1)")


def _decode_pil(data: bytes, name: str, check: Callable[[int, int, str], None] | None) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError:
        raise ValueError(f"{name} is too large to decode: refused as a possible decompression bomb") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"{name} is not an image this app can read ({accepted_formats()})") from None
    with im:
        if PIL_ALIASES.get(im.format, im.format) not in PIL_FORMATS:
            raise ValueError(f"{name} is a {im.format} file, not a format this app reads ({accepted_formats()})")
        if check:
            check(*im.size, name)
        # JPEG can decode straight at 1/2, 1/4 or 1/8 scale: big photos never reach full size in memory (a no-op
        # below 2 * MAX_SIDE a side, so below that training and the upload wrapper see the same pixels).
        im.draft(None, (MAX_SIDE, MAX_SIDE))
        try:
            im.load()
            # a bad EXIF block or odd pixel data fails here, not in the decoder: the same error, naming the file
            return to_rgb8(ImageOps.exif_transpose(im))
        except Image.DecompressionBombError:
            raise ValueError(f"{name} is too large to decode: refused as a possible decompression bomb") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ValueError(f"{name} is truncated or corrupt ({e})") from None


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB uint8: high bit depths are stretched min to max, transparency goes to black.

    Black, because MR slices are bright anatomy on a black background.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(scale_to_uint8(np.asarray(im, dtype=np.float32))).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def scale_to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map [lo, hi] (default: the array's min and max) linearly to 0..255, clipping outside."""
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return (np.clip((arr - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


# The only DICOM attributes read: the pixels and how to display them. Patient and study data are never parsed.
DICOM_PIXEL_TAGS = [
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelPaddingValue",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor", "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData", "SegmentedBluePaletteColorLookupTableData",
]  # fmt: skip


def _decode_dicom(data: bytes, name: str, check: Callable[[int, int, str], None] | None) -> Image.Image:
    """The middle frame of a DICOM file, through the modality rescale and the file's window, as RGB.

    Only :data:`DICOM_PIXEL_TAGS` are parsed (plus the file meta header naming the transfer
    syntax), so patient data is never even read into memory.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=DICOM_PIXEL_TAGS)
        list(ds)  # pydicom parses elements lazily: parse the few read ones here, where failures are caught
    # Malformed headers raise many types besides these (NotImplementedError for an unknown VR, BytesLengthException...;
    # found by tests/test_fuzz.py): for a parser of untrusted bytes, any failure means "not readable".
    except Exception:  # noqa: BLE001
        raise ValueError(f"{name} is not a readable DICOM file") from None
    if "PixelData" not in ds:
        raise ValueError(f"{name} is a DICOM file without an image (no pixel data)")
    try:
        rows, cols, frames = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: DICOM image size attributes (Rows, Columns, NumberOfFrames) are invalid") from None
    if not rows or not cols:
        raise ValueError(f"{name}: DICOM file has pixel data but no image size (Rows, Columns)")
    if check:
        check(cols, rows, name)
    if rows * cols * frames > 4 * MAX_PIXELS:
        raise ValueError(f"{name} holds {frames} frames of {cols} x {rows}: too large to decode")
    try:
        arr = ds.pixel_array  # YBR colour is converted to RGB by pydicom
    except (NotImplementedError, RuntimeError) as e:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        reason = str(e).strip().splitlines()[-1].strip()  # pydicom lists each plugin's failure; the last says most
        raise ValueError(f"{name}: cannot decode DICOM pixel data compressed as {getattr(syntax, 'name', syntax)} ({reason})") from None
    except (ValueError, EOFError, OSError, AttributeError, KeyError, TypeError) as e:
        raise ValueError(f"{name}: DICOM pixel data is truncated or corrupt ({e})") from None
    try:  # malformed display attributes (a text RescaleSlope, 3 samples on a 2-D array...; found by tests/test_fuzz.py)
        samples = int(ds.get("SamplesPerPixel") or 1)
        if frames > 1:
            arr = arr[frames // 2]
        if samples == 3:
            rgb = arr if arr.dtype == np.uint8 else scale_to_uint8(arr)
            return Image.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB")
        grey = _window(arr, ds, apply_modality_lut, apply_voi_lut)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # 0 is white in MONOCHROME1
            grey = 255 - grey
        return Image.fromarray(grey).convert("RGB")
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        raise ValueError(f"{name}: DICOM display attributes (samples, rescale, window) are invalid ({e})") from None


def _window(arr: np.ndarray, ds, apply_modality_lut, apply_voi_lut) -> np.ndarray:
    """Greyscale DICOM pixels to uint8: modality LUT/rescale, then the first window, else a VOI LUT, else min-max."""
    values = apply_modality_lut(arr, ds).astype(np.float32)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return scale_to_uint8(values, center - width / 2, center + width / 2)
    if "VOILUTSequence" in ds:  # its table is indexed by the rescaled values (PS3.3 C.11.2), whole numbers
        return scale_to_uint8(apply_voi_lut(np.rint(values).astype(np.int64), ds))
    return scale_to_uint8(values)


def _first(value) -> float | None:
    """The first of a multi-valued DICOM number (several windows may be offered), as a float."""
    from pydicom.multival import MultiValue

    if value is None or value == "":
        return None
    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)
