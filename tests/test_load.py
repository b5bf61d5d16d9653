"""The load test in a bounded form: 24 concurrent clients (REST over httpx, and gradio_client), every answer checked against
its own image."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from shipped import SHIPPED

from brainmri.models.catalog import discover

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import load_test  # noqa: E402

pytestmark = pytest.mark.slow  # each test launches the app (one as `python app.py`) and drives it with 4-24 clients


@pytest.fixture(scope="module", autouse=True)
def shipped():
    assert all(discover(hub=False)[n].available for n in SHIPPED), "shipped checkpoints missing"


def test_24_clients_nothing_lost_nothing_mixed_up(data_dir: Path):
    r = load_test.load_test(clients=24, requests=2, model="simple_cnn_7", time_limit=150, data=data_dir, warm_up=0)  # no timing here
    assert r["sent"] == 48 and r["answered"] == 48, r
    assert r["mixed_up"] == 0 and r["errors"] == 0, r["examples"]
    assert 0 < r["p50_s"] <= r["p95_s"]


def test_identical_uploads_at_once_lose_nothing_and_leave_nothing(data_dir: Path):
    """A class clicking one example at the same moment: Gradio files identical uploads under one path, and the
    request that finishes first must not delete the file the others still need (31 of 72 were lost before)."""
    from brainmri.app.uploads import gradio_cache_dir

    before = set(gradio_cache_dir().rglob("*")) if gradio_cache_dir().is_dir() else set()
    r = load_test.load_test(
        clients=24, requests=2, model="simple_cnn_7", time_limit=150, data=data_dir, mode="identical", client="gradio", warm_up=0
    )  # gradio_client, as when the lost requests were found
    assert r["sent"] == 48 and r["answered"] == 48 and r["errors"] == 0 and r["mixed_up"] == 0, r["examples"]
    left = {p for p in gradio_cache_dir().rglob("*") if p.is_file()} - before
    assert not left, f"uploads left in Gradio's cache: {sorted(map(str, left))[:3]}"


def test_a_full_queue_refuses_rather_than_grows(data_dir: Path):
    """max_size bounds the queue (and so memory): the overflow is refused with a clear error, nothing else is lost."""
    r = load_test.load_test(clients=24, requests=1, model="simple_cnn_7", max_size=4, time_limit=120, data=data_dir, warm_up=0)
    assert r["queue_full"] > 0 and r["errors"] == 0 and r["mixed_up"] == 0, r
    assert r["answered"] + r["queue_full"] == r["sent"] == 24


def test_an_answer_is_the_same_only_with_the_same_class_and_probabilities_or_both_flagged():
    want = {"image_size": [224, 224], "top_class": "glioma", "probabilities": {"glioma": 0.9, "notumor": 0.1}}
    flagged = {"image_size": [224, 224], "top_class": None, "probabilities": None}  # judged not an MRI: no class
    assert load_test.same_answer(dict(want), want) and load_test.same_answer(dict(flagged), flagged)
    assert not load_test.same_answer(flagged, want) and not load_test.same_answer(want, flagged)
    assert not load_test.same_answer({**want, "probabilities": {"glioma": 0.8, "notumor": 0.2}}, want)
    assert not load_test.same_answer({**want, "image_size": [1, 1]}, want)


def test_only_loopback():
    with pytest.raises(ValueError, match="loopback"):
        load_test.load_test(url="http://example.com/")


def test_the_app_in_its_own_process_reports_its_cpu_and_memory(data_dir: Path):
    r = load_test.load_test(clients=4, requests=2, model="simple_cnn_7", time_limit=150, data=data_dir, server="process", rounds=2)
    assert r["answered"] == r["sent"] == 16 and r["errors"] == 0 and r["mixed_up"] == 0, r["examples"]
    assert r["warm_up"] == {"sent": 4, "answered": 4, "failed": []}  # untimed: simple_cnn_7 loaded before the clock
    assert r["server_cpu_ms_per_answer"] > 0 and 0 < r["server_rss_mib"] <= r["server_peak_rss_mib"]
    assert len(r["server_rss_by_round_mib"]) == 2 and r["server_rss_by_round_mib"][-1] == r["server_rss_mib"]
    assert 0 < r["server_start_rss_mib"] <= r["server_peak_rss_mib"]


def test_sessions_are_bounded_so_memory_levels_off(data_dir: Path, monkeypatch):
    """Each REST call opens a Gradio session holding a copy of the page's configuration; Gradio's default keeps 10,000
    of them (the app grew 0.46 MB a request); the app keeps BRAIN_MRI_SESSIONS (brainmri.settings.session_capacity).
    The load test's own server is launched as ``python app.py`` launches it, so it runs with the app's settings."""
    import app

    monkeypatch.setenv("BRAIN_MRI_SESSIONS", "5")
    r = load_test.load_test(clients=12, requests=1, model="simple_cnn_7", time_limit=120, data=data_dir)
    assert r["answered"] == r["sent"] == 12 and r["errors"] == 0, r["examples"]
    # the bound reached the holder the server used (Gradio drops the least recently used session beyond it)
    assert app.demo.state_session_capacity == app.demo.state_holder.capacity == 5


def test_the_clients_are_built_before_the_clock_unless_asked_to_be_fresh(monkeypatch, tmp_path: Path):
    """Building a client costs the load generator CPU on the server's cores: built once by connect, before any run,
    and inside each run only with fresh clients (as before 2026-12-07). A client that cannot be built loses its requests
    as errors."""
    built, closed = [], []

    class Fake:
        def __init__(self, url: str):
            built.append(url)
            if url == "refused":
                raise ConnectionError("no server")

        def predict(self, path: Path, model: str) -> dict:
            return {"image_size": [1, 1], "top_class": path.name}

        def close(self) -> None:
            closed.append(self)

    monkeypatch.setitem(load_test.CLIENTS, "fake", Fake)
    monkeypatch.setattr(load_test, "same_answer", lambda got, want: got["top_class"] == want)
    jobs = [[tmp_path / f"{c}{r}" for r in range(2)] for c in "ab"]
    expected = {str(p): p.name for job in jobs for p in job}
    kept = load_test.connect("u", 2, "fake")
    assert len(built) == 2
    out = load_test.run_load("u", jobs, expected, None, 60, "fake", kept)
    assert (out.answered, out.mixed_up, len(built)) == (4, [], 2)  # no client built in the run
    out = load_test.run_load("u", jobs, expected, None, 60, "fake")  # fresh: one a thread, inside the run, closed after
    assert (out.answered, len(built), len(closed)) == (4, 4, 2)
    with pytest.raises(ValueError, match="1 clients for 2 jobs"):
        load_test.run_load("u", jobs, expected, None, 60, "fake", kept[:1])
    out = load_test.run_load("refused", jobs, expected, None, 60, "fake")
    assert out.answered == 0 and len(out.errors) == 4 and "client could not connect: ConnectionError" in out.errors[0]
