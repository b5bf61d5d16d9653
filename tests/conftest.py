"""Shared fixtures: the real data folder (from ../shared) and small synthetic folders."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("BRAIN_MRI_DATA", ROOT.parent / "shared" / "data" / "brain-tumor-mri"))
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]

# Two threads, as in CI and on a free CPU Space; BRAIN_MRI_TEST_THREADS=1 where other jobs share the cores.
torch.set_num_threads(int(os.environ.get("BRAIN_MRI_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "Testing").is_dir():
        pytest.fail(f"the real dataset is missing at {DATA} (set BRAIN_MRI_DATA)")
    return DATA


def synthetic_image(seed: int, size: int = 64) -> Image.Image:
    """A greyscale blob on black, different for each seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    img = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size * 0.2) ** 2)) + rng.normal(0, 25, (size, size))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)).convert("RGB")


def make_image_folder(root: Path, per_class: int = 3, size: int = 64, splits=("Training", "Testing")) -> Path:
    """DATA/{Training,Testing}/{class}/*.jpg of distinct synthetic images."""
    seed = 0
    for split in splits:
        for c in CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                synthetic_image(seed, size).save(folder / f"img_{i}.png")
                seed += 1
    return root


@pytest.fixture
def synthetic_data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(scope="module")
def client():
    """The app launched in-process on a free loopback port, and a gradio_client for it."""
    from gradio_client import Client

    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.demo.close()
