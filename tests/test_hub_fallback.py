"""The Hub unreachable or silent: discovery falls back to the local checkpoints within seconds and says why; the
segmenter is found the same way, from its local folder, else from the Hub (here: the Hub cache, offline)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from shipped import SHIPPED

from brainmri.models.catalog import checkpoint_folder, discover, discover_segmenter
from brainmri.models.registry import APP_DEFAULT, DEFAULT_CLASSIFIER, ENSEMBLES
from brainmri.models.segmenters import SEGMENTER_DEFAULT, get_segmenter_spec
from brainmri.serving import Predictor
from brainmri.settings import checkpoint_dir


@pytest.fixture
def silent_hub(monkeypatch):
    """A loopback server that accepts connections and never answers, as the Hub endpoint."""
    import huggingface_hub.constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # keep it open, say nothing
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    yield url
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def refused_hub(monkeypatch):
    """A loopback port nobody listens on: connections are refused at once."""
    import huggingface_hub.constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    return url


@pytest.mark.parametrize("hub", ["silent_hub", "refused_hub"])
def test_falls_back_to_local_checkpoints_within_seconds(request, hub: str):
    assert all(discover(hub=False)[n].available for n in SHIPPED), "shipped checkpoints missing"
    request.getfixturevalue(hub)
    start = time.monotonic()
    sources = discover(hub=True, timeout=1.0)
    elapsed = time.monotonic() - start
    assert elapsed < 8, f"discovery took {elapsed:.1f} s with the Hub {hub}"
    assert all(sources[n].where == "local" for n in SHIPPED)
    hub_only = [s for s in sources.values() if not s.available]
    assert hub_only and all("not reachable" in s.reason for s in hub_only), [s.reason for s in hub_only]
    predictor = Predictor(sources)  # what the app shows: the local models served, the others listed with the reason
    assert predictor.default_model == APP_DEFAULT
    assert all("not reachable" in r for r in predictor.unavailable.values())


def test_the_app_says_the_hub_was_not_reachable(silent_hub, monkeypatch):
    assert all(discover(hub=False)[n].available for n in SHIPPED), "shipped checkpoints missing"
    import app

    monkeypatch.setattr(app, "_hub_sources", lambda: discover(hub=True, timeout=1.0))
    start = time.monotonic()
    dropdown, note, picker = app.refresh_models()
    assert time.monotonic() - start < 8
    assert set(SHIPPED) <= set(app.PREDICTOR.available)
    assert "not reachable" in note
    singles = [v for _, v in dropdown.choices if v not in ENSEMBLES]
    assert [v for _, v in picker.choices] == singles  # Compare offers what Classify offers, an ensemble as its members


@pytest.mark.parametrize("hub", ["silent_hub", "refused_hub"])
def test_the_segmenter_falls_back_like_the_classifiers(request, hub: str, tmp_path: Path, monkeypatch):
    assert discover_segmenter(hub=False).where == "local", "shipped segmenter missing"
    sources = discover(hub=False)
    request.getfixturevalue(hub)
    start = time.monotonic()
    assert discover_segmenter(hub=True, timeout=1.0).where == "local"  # the shipped folder: the Hub is not asked
    monkeypatch.setenv("BRAIN_MRI_CHECKPOINTS", str(tmp_path))  # a deployment without the segmenter's folder
    source = discover_segmenter(hub=True, timeout=1.0)
    assert time.monotonic() - start < 8, f"segmenter discovery took too long with the Hub {hub}"
    assert not source.available and "not reachable" in source.reason, source.reason
    assert source.location == get_segmenter_spec(SEGMENTER_DEFAULT).hub_repo_id
    predictor = Predictor(sources, segmenter=source)  # no outline, and nothing else changes
    assert predictor.segmenter is None and predictor.segmentation_model() is None
    assert predictor.default_model == DEFAULT_CLASSIFIER  # the default ensemble needs the segmenter's forward
    assert "has no segmenter" in predictor.unavailable[APP_DEFAULT]


def test_the_segmenter_without_a_folder_says_why(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BRAIN_MRI_CHECKPOINTS", str(tmp_path))
    assert "Hub lookup disabled" in discover_segmenter(hub=False).reason
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert "not in the Hub cache" in discover_segmenter(hub=True).reason


def offline_hub_cache(tmp_path: Path, monkeypatch, repo: str, source: Path, names: list[str]) -> Path:
    """Offline, with no local checkpoints: a Hub cache holding ``names`` of ``source`` as ``repo``'s snapshot."""
    cache = tmp_path / "hub"
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in names:
        shutil.copyfile(source / name, snapshot / name)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("BRAIN_MRI_CHECKPOINTS", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    return snapshot


def test_the_segmenter_is_served_from_the_hub_when_it_has_no_folder(tmp_path: Path, monkeypatch):
    """Its Hub repo, as the Hub cache holds it after a download: found, fetched with checkpoint_folder, outlining."""
    shipped = checkpoint_dir() / SEGMENTER_DEFAULT
    assert discover_segmenter(hub=False).where == "local", "shipped segmenter missing"
    sources = discover(hub=False)
    repo = get_segmenter_spec(SEGMENTER_DEFAULT).hub_repo_id
    snapshot = offline_hub_cache(tmp_path, monkeypatch, repo, shipped, [p.name for p in shipped.iterdir() if p.is_file()])
    source = discover_segmenter(hub=True)
    assert (source.where, source.location) == ("hub", repo)
    assert checkpoint_folder(source).resolve() == snapshot.resolve()
    predictor = Predictor(sources, segmenter=source)
    assert predictor.segmenter == SEGMENTER_DEFAULT
    assert predictor.segmentation_model().input_size == get_segmenter_spec(SEGMENTER_DEFAULT).input_size


def test_a_hub_cache_holding_only_what_timm_downloads_is_not_a_checkpoint(tmp_path: Path, monkeypatch):
    """Loading the card's ``timm.create_model("hf-hub:...")`` caches config.json and the weights alone: offline, that
    is not the checkpoint (no manifest, so no verification, temperature or OOD statistics to serve it with)."""
    shipped = checkpoint_dir() / SEGMENTER_DEFAULT
    repo = get_segmenter_spec(SEGMENTER_DEFAULT).hub_repo_id
    snapshot = offline_hub_cache(tmp_path, monkeypatch, repo, shipped, ["config.json", "model.safetensors"])
    source = discover_segmenter(hub=True)
    assert not source.available and "not in the Hub cache" in source.reason
    shutil.copyfile(shipped / "manifest.json", snapshot / "manifest.json")
    assert discover_segmenter(hub=True).where == "hub"  # the whole checkpoint, as checkpoint_folder downloads it
