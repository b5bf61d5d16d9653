"""Uploads do not outlive their request and are never logged: the temp folders and the logs are searched after real calls."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmri.uploads import discard_upload, gradio_cache_dir


def files_containing(needle: bytes, roots: list[Path], skip: Path) -> list[Path]:
    """Every file under ``roots`` (not under ``skip``, where the test keeps its own copy) whose bytes contain ``needle``."""
    found = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            if Path(dirpath).resolve().is_relative_to(skip):
                continue
            for n in names:
                path = Path(dirpath) / n
                try:
                    if path.is_file() and path.stat().st_size < 50 * 2**20 and needle in path.read_bytes():
                        found.append(path)
                except OSError:
                    pass  # another process's file vanished or is unreadable: not ours
    return found


def test_no_upload_remains_and_none_is_logged(client, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    own = Path(tempfile.mkdtemp(prefix="hygiene-")).resolve()
    try:
        check_no_trace(client, own, caplog, capfd)
    finally:
        shutil.rmtree(own)


def check_no_trace(client, own: Path, caplog, capfd) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    secret = f"patient-{uuid.uuid4().hex}"
    noise = np.random.default_rng(uuid.uuid4().int).integers(0, 256, (96, 96), dtype=np.uint8)  # unique bytes, findable anywhere
    good, bad = own / f"{secret}.png", own / f"{secret}-bad.png"
    Image.fromarray(noise).save(good)
    bad.write_bytes(b"not an image " + noise.tobytes())
    for model in ("simple_cnn_7", "tf_efficientnet_lite0"):
        assert client.predict(handle_file(str(good)), model, api_name="/predict")[2]["model"] == model
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(bad)), api_name="/predict")

    roots = sorted({gradio_cache_dir(), Path(tempfile.gettempdir()).resolve()})
    for needle in (good.read_bytes()[-4096:], noise.tobytes()[:4096]):
        assert files_containing(needle, roots, skip=own) == [], "an upload outlived its request"
    leftovers = [p for r in roots for p in r.rglob(f"*{secret}*") if not p.resolve().is_relative_to(own)]
    assert leftovers == []
    out, err = capfd.readouterr()
    assert secret not in caplog.text + out + err, "an upload's name reached the logs"


def test_discard_upload_touches_only_gradio_cache(tmp_path: Path):
    outside = tmp_path / "mine.png"
    outside.write_bytes(b"x")
    discard_upload(outside)
    assert outside.exists()
    folder = gradio_cache_dir() / f"test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    (folder / "up.png").write_bytes(b"x")
    discard_upload(folder / "up.png")
    assert not folder.exists()
    discard_upload(None)
