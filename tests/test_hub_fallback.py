"""The Hub unreachable or silent: discovery falls back to the local checkpoints within seconds and says why."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from shipped import SHIPPED

from brainmri.models.catalog import discover
from brainmri.models.registry import APP_DEFAULT
from brainmri.serving import Predictor


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
    assert [v for _, v in picker.choices] == [v for _, v in dropdown.choices]  # Compare offers what Classify offers
