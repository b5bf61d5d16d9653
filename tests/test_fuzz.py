"""Fuzzing the upload path: random and mutated bytes in every accepted format decode or fail with a clear ValueError.

Bounded: a few hundred hypothesis cases on the decoder (seconds), and a handful through the running app.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from conftest import synthetic_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from upload_samples import PYDICOM_FILES, valid_uploads

from brainmri.data.imageio import load_image

# kind -> (file name, bytes): every accepted format, plus real DICOM files from pydicom's test set (MR, CT, RLE).
UPLOADS = valid_uploads(synthetic_image(0, 96)) | {
    n: (n, (PYDICOM_FILES / n).read_bytes()) for n in ["MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm"]
}
SEEDS = {kind: data for kind, (_, data) in UPLOADS.items()}
NAMES = {kind: name for kind, (name, _) in UPLOADS.items()}
FUZZ = settings(
    max_examples=int(os.environ.get("BRAIN_MRI_FUZZ_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize="BRAIN_MRI_FUZZ_EXAMPLES" not in os.environ,  # CI: the same cases every run; set the variable to explore
)


def mutate(data: bytes, edits: list[tuple[int, int]], cut: float | None, insert: bytes) -> bytes:
    """Overwrite bytes at (relative position, value), insert a chunk, and maybe truncate."""
    out = bytearray(data)
    for pos, value in edits:
        out[int(pos / 2**16 * (len(out) - 1))] = value
    if insert:
        at = len(out) // 3
        out[at:at] = insert
    if cut is not None:
        out = out[: int(len(out) * cut)]
    return bytes(out)


def check(data: bytes, name: str) -> None:
    """The contract: an RGB image, or a ValueError with a message that names the file, never anything else."""
    try:
        image = load_image(data, name)
    except ValueError as e:
        assert name in str(e) and "Traceback" not in str(e), str(e)
        return
    assert isinstance(image, Image.Image) and image.mode == "RGB" and min(image.size) > 0


@FUZZ
@given(data=st.binary(max_size=4096), name=st.sampled_from(["upload", "scan.dcm", "x.png"]))
def test_random_bytes(data: bytes, name: str):
    check(data, name)


@FUZZ
@given(
    kind=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=12),
    # a fraction in thousandths: integer strategies, since a library in the suite sets flush-to-zero,
    # which makes hypothesis refuse float strategies
    cut=st.none() | st.integers(0, 1000).map(lambda k: k / 1000),
    insert=st.binary(max_size=64),
)
def test_mutated_valid_files(kind: str, edits, cut, insert):
    check(mutate(SEEDS[kind], edits, cut, insert), NAMES[kind])


def test_every_seed_format_decodes():
    for kind, data in SEEDS.items():
        assert load_image(data, NAMES[kind]).mode == "RGB", kind


def test_mutated_uploads_through_the_app(client, tmp_path: Path):
    """Eight mutated uploads: each is an answer or a clean error without a traceback, and the server keeps serving."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    rng = random.Random(0)
    kinds = sorted(SEEDS)
    for i in range(8):
        kind = kinds[i % len(kinds)]
        edits = [(rng.randrange(2**16), rng.randrange(256)) for _ in range(rng.randrange(1, 20))]
        data = mutate(SEEDS[kind], edits, rng.choice([None, rng.random()]), rng.randbytes(rng.randrange(16)))
        path = tmp_path / f"fuzz_{i}_{NAMES[kind]}"
        path.write_bytes(data)
        try:
            details = client.predict(handle_file(str(path)), "simple_cnn_7", api_name="/predict")[2]
            assert details["model"] == "simple_cnn_7"
        except AppError as e:
            assert str(e) and "Traceback" not in str(e) and 'File "' not in str(e), str(e)
    good = tmp_path / "good.png"
    good.write_bytes(SEEDS["png_grey"])
    assert client.predict(handle_file(str(good)), "simple_cnn_7", api_name="/predict")[2]["model"] == "simple_cnn_7"
