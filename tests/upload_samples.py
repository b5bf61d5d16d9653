"""Uploads made in memory from a real slice: every format the app takes, and broken files.

Each valid builder encodes the same greyscale slice, so a model's answer should not change
with the format; each broken one is paired with words its error message must contain.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

PATIENT_NAME = "Doe^Jane"  # planted in every DICOM made here: it must never come back out
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png16(image: Image.Image) -> bytes:
    """16-bit greyscale PNG holding the 8-bit values times 257 (full 16-bit range)."""
    arr = grey(image).astype(np.uint16) * 257
    return encode(Image.fromarray(arr), "PNG")


def rgba_png(image: Image.Image) -> bytes:
    """RGBA PNG: the slice, fully opaque except a transparent 8-pixel border."""
    rgba = image.convert("RGBA")
    alpha = np.full((image.height, image.width), 255, dtype=np.uint8)
    alpha[:8], alpha[-8:], alpha[:, :8], alpha[:, -8:] = 0, 0, 0, 0
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG")


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """A JPEG stored rotated by 90 degrees with EXIF orientation 6 saying so: viewers show the original."""
    stored = image.transpose(Image.Transpose.ROTATE_90)  # orientation 6 = rotate 270 (i.e. 90 clockwise) to display
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def mpo_jpeg(image: Image.Image) -> bytes:
    """A multi-picture JPEG, as phone cameras write: Pillow calls it MPO; its first picture is the slice."""
    return encode(image, "MPO", quality=95, save_all=True, append_images=[image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])


def dicom(image: Image.Image, monochrome1: bool = False, window: bool = True, voi_lut: bool = False) -> bytes:
    """An MR DICOM of the slice: 16-bit stored values with a rescale, a window mapping back to 0-255, a patient name.
    ``voi_lut``: no window but a VOI LUT, indexed by the rescaled values (0..510), giving back the slice's grey levels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    g = grey(image).astype(np.uint16)
    stored = g * 4 + 100  # rescale slope 0.5, intercept -50 -> real values 2 g
    if monochrome1:
        stored = (4 * 255 + 200) - stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT_NAME, "SECRET-ID-42", "MR"
    ds.Rows, ds.Columns = g.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -50
    if window:  # real values 0..510 (2 g) -> window [0, 510]
        ds.WindowCenter, ds.WindowWidth = 255, 510
    if voi_lut:  # the table maps real value v (0..510) to v // 2: read at the stored values, it would saturate
        item = Dataset()
        item.add_new(0x00283002, "US", [511, 0, 16])  # LUT Descriptor: entries, first value mapped, bits
        item.add_new(0x00283006, "US", [v // 2 for v in range(511)])  # LUT Data
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def valid_uploads(image: Image.Image) -> dict[str, tuple[str, bytes]]:
    """name -> (file name, bytes), each a lossless or near-lossless encoding of ``image``."""
    g = image.convert("L")
    return {
        "jpeg": ("slice.jpg", encode(image, "JPEG", quality=95)),
        "png_grey": ("slice.png", encode(g, "PNG")),
        "png_rgb": ("slice.png", encode(image.convert("RGB"), "PNG")),
        "png_16bit": ("slice16.png", png16(image)),
        "png_rgba": ("slice_rgba.png", rgba_png(image)),
        "png_palette": ("slice_p.png", encode(g.convert("P"), "PNG")),
        "webp": ("slice.webp", encode(image, "WEBP", lossless=True)),
        "bmp": ("slice.bmp", encode(image.convert("RGB"), "BMP")),
        "tiff": ("slice.tif", encode(g, "TIFF")),
        "tiff_16bit": ("slice16.tif", encode(Image.fromarray(grey(image).astype(np.uint16) * 257), "TIFF")),
        "gif": ("slice.gif", encode(g, "GIF")),
        "exif_rotated_jpeg": ("rotated.jpg", exif_rotated_jpeg(image)),
        "dicom": ("slice.dcm", dicom(image)),
        "dicom_monochrome1": ("slice_m1.dcm", dicom(image, monochrome1=True)),
        "dicom_no_window": ("slice_nowindow", dicom(image, window=False)),  # no suffix: known by its DICM magic
        "dicom_voi_lut": ("slice_lut.dcm", dicom(image, window=False, voi_lut=True)),
        "jpeg_mpo": ("phone.jpg", mpo_jpeg(image)),
    }


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    data = bytearray(encode(Image.new("L", (64, 64)), "PNG"))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def bad_uploads(image: Image.Image) -> dict[str, tuple[str, bytes, str]]:
    """name -> (file name, bytes, words the error must contain)."""
    jpeg = encode(image, "JPEG", quality=95)
    png = encode(image.convert("L"), "PNG")
    return {
        "empty": ("empty.jpg", b"", "empty"),
        "text": ("notes.txt", b"patient notes, not an image\n" * 20, "not an image"),
        "truncated_jpeg": ("cut.jpg", jpeg[: len(jpeg) // 2], "truncated"),
        "truncated_png": ("cut.png", png[: len(png) // 2], "truncated"),
        "too_small": ("tiny.png", encode(Image.new("L", (16, 16), 128), "PNG"), "too small"),
        "bomb": ("bomb.png", _png_with_size(100_000, 100_000), "decompression bomb"),
        "sliver": ("sliver.png", _png_with_size(48, 50_000), "too long and thin"),  # within the pixels, far from a scan's shape
        "dicom_without_pixels": ("plan.dcm", (PYDICOM_FILES / "rtplan.dcm").read_bytes(), "no pixel data"),
        "truncated_dicom": ("cut.dcm", (PYDICOM_FILES / "MR_truncated.dcm").read_bytes(), "truncated"),
        "garbage_dicom": ("junk.dcm", b"\x00" * 128 + b"DICM" + b"\xff" * 200, "DICOM"),
        "ppm": ("slice.ppm", encode(image.convert("RGB"), "PPM"), "not a format this app reads"),  # PIL reads it; we do not
    }
