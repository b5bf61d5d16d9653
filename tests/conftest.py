"""Shared fixtures: the real data folder (from ../shared), small synthetic folders, a tiny checkpoint, and the app
launched in-process with a gradio_client for it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brainmri.settings import default_data

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]

# Two threads, as in CI and on a free CPU Space; BRAIN_MRI_TEST_THREADS=1 where other jobs share the cores.
TEST_THREADS = int(os.environ.get("BRAIN_MRI_TEST_THREADS", "2"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _test_threads() -> None:
    """Each test starts with TEST_THREADS: a launched app sets one thread per batch worker for the whole process,
    which left the full-dataset evaluations after it at half speed."""
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session", autouse=True)
def _splits_cut_once() -> Iterator[None]:
    """Each split, thumbnail set and unseen subset is computed once a session (seconds each on the real data, and the
    shipped checkpoints share one split), keyed by what it was computed from; decoded data sets are not kept."""
    from brainmri.data.cache import open_cache

    with open_cache(kinds=("thumbnails", "split", "unseen")):
        yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real dataset, where every command's --data defaults to (brainmri.settings.default_data)."""
    data = Path(default_data())
    if not (data / "Testing").is_dir():
        pytest.fail(f"the real dataset is missing at {data} (set BRAIN_MRI_DATA)")
    return data


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


def write_checkpoint(folder: Path, name: str = "simple_cnn_7", labels: list[str] = CLASSES, seed: int = 0) -> Path:
    """An untrained registry model saved as a checkpoint folder, its registry name recorded as training does:
    the files without the training."""
    from brainmri.models import registry
    from brainmri.models.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = registry.create_model(name, num_classes=len(labels))
    return save_checkpoint(model, folder, labels, extra={"registry_name": name})


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A fresh untrained simple_cnn_7 checkpoint folder (about 10 ms to write), the test's own to alter or break."""
    return write_checkpoint(tmp_path / "simple_cnn_7")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    """The app, with its shipped checkpoints, launched in-process on a free loopback port.

    Module scope, not session: scripts/load_test.py (tests/test_load.py) and the browser tests launch the
    same ``app.demo`` with their own settings, so it must be closed between modules.
    """
    from shipped import require_shipped

    require_shipped()
    import app

    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)  # as python app.py does
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def client(app_url: str):
    """A gradio_client for the launched app."""
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture
def tf32_on():
    """TF32 allowed, as a GPU training run leaves it; the flags put back after (torch's flag objects defy monkeypatch)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
