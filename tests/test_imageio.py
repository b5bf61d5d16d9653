"""Decoding: every format gives the same slice back, to training as to the app; every broken upload a ValueError naming the
problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image
from upload_samples import PATIENT_NAME, PYDICOM_FILES, bad_uploads, encode, grey, valid_uploads

from brainmri.data.imageio import IMAGE_SUFFIXES, MAX_SIDE, load_image, scale_to_uint8
from brainmri.data.records import load_records


@pytest.fixture(scope="module")
def slice_image(data_dir: Path) -> Image.Image:
    """A real non-square-safe Testing slice, as RGB."""
    path = sorted((data_dir / "Testing" / "meningioma").glob("*.jpg"))[0]
    return Image.open(path).convert("RGB")


def _stretched(image: Image.Image) -> np.ndarray:
    return scale_to_uint8(grey(image))


@pytest.mark.parametrize("kind", list(valid_uploads(Image.new("L", (64, 64)))))
def test_valid_format_decodes_to_the_same_slice(slice_image: Image.Image, kind: str):
    name, data = valid_uploads(slice_image)[kind]
    out = load_image(data, name)
    assert out.mode == "RGB"
    assert out.size == slice_image.size
    got = grey(out).astype(np.float32)
    # 16-bit and windowed DICOM are stretched min..max, the others keep their grey levels.
    stretched = kind in {"png_16bit", "tiff_16bit", "dicom_no_window", "dicom_voi_lut"}
    want = (_stretched(slice_image) if stretched else grey(slice_image)).astype(np.float32)
    if kind == "png_rgba":  # the transparent border becomes black
        want[:8], want[-8:], want[:, :8], want[:, -8:] = 0, 0, 0, 0
    tolerance = 3.0 if "jpeg" in kind else 1.0
    assert np.abs(got - want).mean() <= tolerance, kind


def test_training_and_serving_decode_every_format_to_the_same_pixels(slice_image: Image.Image, tmp_path: Path):
    """One decoder: a data folder's image reaches training (ImageRecords.open) as the same pixels the app's upload
    path (load_image) gives, so the OOD thresholds fitted on the one apply to the other."""
    root = make_image_folder(tmp_path / "data", per_class=1, splits=("Training",))
    written = {}
    for kind, (name, data) in valid_uploads(slice_image).items():
        path = root / "Training" / "glioma" / (f"{kind}_{name}" if Path(name).suffix else f"{kind}_{name}.dcm")
        path.write_bytes(data)
        written[str(path)] = kind
    assert {Path(p).suffix.lower() for p in written} <= IMAGE_SUFFIXES
    records = load_records(root, "train")
    seen = set()
    for i, source in enumerate(records.sources):
        if source in written:
            seen.add(written[source])
            assert np.array_equal(np.asarray(records.open(i)), np.asarray(load_image(source))), written[source]
    assert seen == set(written.values())  # every accepted format was listed as training data, and compared


def test_real_slices_decode_the_same_for_training_and_serving(data_dir: Path):
    records = load_records(data_dir, "test")
    for i in range(0, len(records), len(records) // 40):
        assert np.array_equal(np.asarray(records.open(i)), np.asarray(load_image(records.sources[i]))), records.name(i)


def test_path_and_bytes_agree(slice_image: Image.Image, tmp_path: Path):
    name, data = valid_uploads(slice_image)["dicom"]
    path = tmp_path / name
    path.write_bytes(data)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(data, name)))


def test_exif_orientation_is_applied(slice_image: Image.Image):
    wide = slice_image.crop((0, 0, slice_image.width, slice_image.height // 2))  # non-square, so a rotation shows
    name, data = "wide.jpg", valid_uploads(wide)["exif_rotated_jpeg"][1]
    out = load_image(data, name)
    assert out.size == wide.size
    assert np.abs(grey(out).astype(float) - grey(wide)).mean() < 3


def test_large_image_is_downscaled(slice_image: Image.Image):
    big = slice_image.resize((5000, 3000))
    out = load_image(encode(big, "JPEG", quality=80), "big.jpg")
    assert max(out.size) == MAX_SIDE
    assert abs(out.width / out.height - 5000 / 3000) < 0.01


@pytest.mark.parametrize("kind", list(bad_uploads(Image.new("L", (64, 64)))))
def test_bad_upload_gets_a_clear_error(slice_image: Image.Image, kind: str):
    name, data, words = bad_uploads(slice_image)[kind]
    with pytest.raises(ValueError, match=words) as err:
        load_image(data, name)
    assert name in str(err.value)  # the message names the file the user sent


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ValueError, match=r"^file not found: nope\.png$"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize(("error", "words"), [(FileNotFoundError, "file not found: gone.jpg"), (PermissionError, "cannot read gone.jpg")])
def test_a_file_that_fails_as_it_is_read_is_named(tmp_path: Path, monkeypatch, error: type[OSError], words: str):
    """Deleted (another request with the same bytes finished first) or unreadable after the checks: still a ValueError."""
    path = tmp_path / "gone.jpg"
    path.write_bytes(b"jpeg bytes")
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(error(2, "No such file or directory")))
    with pytest.raises(ValueError, match=words):
        load_image(path)


def test_oversized_file_is_refused_before_decoding():
    with pytest.raises(ValueError, match="limit"):
        load_image(b"\xff" * (65 * 2**20), "huge.jpg")


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "examples_ybr_color.dcm"])
def test_pydicom_bundled_scans_decode(name: str):
    out = load_image(PYDICOM_FILES / name)
    assert out.mode == "RGB" and min(out.size) >= 48
    assert np.asarray(out).std() > 5  # windowed to a visible image, not a flat one


def test_dicom_patient_data_is_never_parsed(slice_image: Image.Image, monkeypatch):
    import pydicom

    _, data = valid_uploads(slice_image)["dicom"]
    assert PATIENT_NAME.encode() in data  # planted...
    read = []
    real_dcmread = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: read.append(real_dcmread(*a, **k)) or read[-1])
    out = load_image(data, "slice.dcm")
    assert len(read) == 1 and "PixelData" in read[0]
    assert "PatientName" not in read[0] and "PatientID" not in read[0]  # ...but never read
    assert not out.info and not out.getexif()  # and nothing of the dataset travels with the pixels


def test_scale_to_uint8_handles_flat_and_nan():
    assert scale_to_uint8(np.full((4, 4), 7.0)).max() == 0
    assert scale_to_uint8(np.array([[np.nan, 0.0], [1.0, 2.0]])).tolist() == [[0, 0], [128, 255]]
