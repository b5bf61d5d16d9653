"""Load test of the app's /predict API through gradio_client: nothing lost, nothing mixed up, p50/p95 latency.

    python scripts/load_test.py                                  # launch in-process, 24 clients x 3 requests
    python scripts/load_test.py --concurrency-limit 1 2 4        # one run per queue concurrency limit (the sweep)
    python scripts/load_test.py --url http://127.0.0.1:7860/     # an app already running on loopback
    python scripts/load_test.py --mode identical                 # every client sends the same image at once

In ``--mode distinct`` every request sends a distinct image (a real Testing slice resized to its own
width), so each answer can be checked against the direct ``Predictor.predict`` result for that
image: the same image size, class and probabilities. In ``--mode identical`` every request sends
the same file at once, as a class clicking one example does: Gradio files identical uploads under
one path, which the app must not delete while another request still needs it. Bounded by count (clients x requests) and by ``--time-limit``
seconds; requests refused because the queue is full (``--max-size``) are counted, not lost.
Loopback only: any other URL is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainmri.catalog import discover  # noqa: E402
from brainmri.cli import add_data_argument, setup_logging  # noqa: E402
from brainmri.data import load_records  # noqa: E402
from brainmri.imageio import load_image  # noqa: E402
from brainmri.predict import Predictor  # noqa: E402
from brainmri.settings import default_data  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MODES = ("distinct", "identical")


@dataclass
class Outcome:
    """What came back for every request of one run."""

    sent: int = 0
    answered: int = 0
    mixed_up: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    queue_full: int = 0
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)) if lat else (lambda q: None)
        return {
            "sent": self.sent,
            "answered": self.answered,
            "mixed_up": len(self.mixed_up),
            "errors": len(self.errors),
            "queue_full": self.queue_full,
            "p50_s": round(statistics.median(lat), 3) if lat else None,
            "p95_s": pct(0.95),
            "max_s": round(lat[-1], 3) if lat else None,
            "wall_s": round(self.wall_s, 1),
            "throughput_rps": round(self.answered / self.wall_s, 2) if self.wall_s else None,
            "errors_by_kind": dict(Counter(e.split(": ")[1] if ": " in e else e for e in self.errors)),
        }


def make_images(n: int, folder: Path, data: str | Path | None = None, height: int = 128) -> list[Path]:
    """``n`` distinct PNGs: Testing slices of ``data`` (default: ``brainmri.settings.default_data()``) cycling through
    the classes, image i resized to width ``height + i``."""
    per_class = list(load_records(default_data() if data is None else data, "test").paths_by_class().values())
    paths = []
    for i in range(n):
        files = per_class[i % len(per_class)]
        src = files[(i // len(per_class)) % len(files)]
        with Image.open(src) as im:
            out = folder / f"load_{i:04d}.png"
            im.convert("L").resize((height + i, height)).save(out)
        paths.append(out)
    return paths


def expected_details(paths: list[Path], model: str | None) -> dict[str, dict]:
    """The direct (in-process, no server) details for every image, keyed by path."""
    predictor = Predictor(discover(hub=False))
    return {str(p): predictor.predict(load_image(p), model).details() for p in paths}


def same_answer(got: dict, want: dict, tol: float = 1e-3) -> bool:
    return (
        got.get("image_size") == want["image_size"]
        and got.get("top_class") == want["top_class"]
        and all(abs((got.get("probabilities") or {}).get(k, float("inf")) - v) <= tol for k, v in want["probabilities"].items())
    )


def run_load(url: str, jobs: list[list[Path]], expected: dict[str, dict], model: str | None, time_limit: float) -> Outcome:
    """One thread and one gradio_client.Client per entry of ``jobs``, each sending its images one after another."""
    from gradio_client import Client, handle_file

    out = Outcome()
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def client_loop(paths: list[Path]) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # noqa: BLE001  (a client that cannot connect loses all its requests: counted as errors)
            with lock:
                out.sent += len(paths)
                out.errors += [f"{p.name}: client could not connect: {type(e).__name__}: {str(e)[:200]}" for p in paths]
            return
        for path in paths:
            if time.monotonic() > deadline:
                return
            with lock:
                out.sent += 1
            start = time.perf_counter()
            try:
                details = client.predict(handle_file(str(path)), model or "", api_name="/predict")[2]
            except Exception as e:  # noqa: BLE001  (every failure is counted and reported, none is fatal)
                with lock:
                    if "queue is full" in str(e).lower():  # refused at the door: the bound on memory working
                        out.queue_full += 1
                    else:
                        out.errors.append(f"{path.name}: {type(e).__name__}: {str(e)[:200]}")
                continue
            elapsed = time.perf_counter() - start
            with lock:
                out.answered += 1
                out.latencies.append(elapsed)
                if not same_answer(details, expected[str(path)]):
                    out.mixed_up.append(f"{path.name}: got {details.get('image_size')} {details.get('top_class')}")

    threads = [threading.Thread(target=client_loop, args=(paths,), daemon=True) for paths in jobs]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 30)
    out.wall_s = time.perf_counter() - start
    return out


def launch_app(concurrency_limit: int, max_size: int):
    """The app in this process on a free loopback port, with the given queue settings; returns (demo, url)."""
    import socket

    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = app.demo._queue
    restore = (queue.max_size, queue.default_concurrency_limit)  # the app's own settings, put back by close_app
    app.demo.queue(max_size=max_size, default_concurrency_limit=concurrency_limit)
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return (app.demo, restore), f"http://127.0.0.1:{port}/"


def close_app(launched) -> None:
    demo, (max_size, limit) = launched
    demo.close()
    demo.queue(max_size=max_size, default_concurrency_limit=limit)


def load_test(
    clients: int = 24,
    requests: int = 3,
    concurrency_limit: int = 1,
    max_size: int = 64,
    model: str | None = None,
    time_limit: float = 300.0,
    url: str | None = None,
    data: str | Path | None = None,
    mode: str = "distinct",
) -> dict:
    """One run: ``clients`` concurrent clients x ``requests`` images each, all distinct or all the same file
    (``mode``). Returns the summary, with the machine's load average and this process's peak RSS."""
    if url is not None and urlparse(url).hostname not in LOOPBACK:
        raise ValueError(f"{url} is not a loopback address: the load test only runs against 127.0.0.1")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    with tempfile.TemporaryDirectory(prefix="brainmri-load-") as tmp:
        paths = make_images(clients * requests if mode == "distinct" else 1, Path(tmp), data)
        expected = expected_details(paths, model)
        paths = paths if mode == "distinct" else paths * (clients * requests)
        jobs = [paths[i::clients] for i in range(clients)]
        launched = None
        if url is None:
            launched, url = launch_app(concurrency_limit, max_size)
        try:
            out = run_load(url, jobs, expected, model, time_limit)
        finally:
            if launched is not None:
                close_app(launched)
    return {
        "mode": mode,
        "clients": clients,
        "requests_per_client": requests,
        "concurrency_limit": concurrency_limit,
        "max_size": max_size,
        **out.summary(),
        "examples": (out.mixed_up + out.errors)[:5],
        "load_average_1m": round(os.getloadavg()[0], 2),
        # The app runs in this process when no --url is given: its peak resident memory (Linux reports KiB).
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=24, help="concurrent gradio_client clients")
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--mode", choices=MODES, default="distinct", help="each request its own image, or all the same file")
    parser.add_argument("--concurrency-limit", type=int, nargs="+", default=[1], help="queue default_concurrency_limit(s) to try")
    parser.add_argument("--max-size", type=int, default=64, help="queue max_size: requests beyond it are refused, bounding memory")
    parser.add_argument("--model", default=None, help="default: the app's default model")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per run; requests not started by then are not sent")
    parser.add_argument("--url", default=None, help="an app already running on loopback (then --concurrency-limit is the app's own)")
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    runs = []
    for limit in args.concurrency_limit if args.url is None else [0]:
        r = load_test(args.clients, args.requests, limit, args.max_size, args.model, args.time_limit, args.url, args.data, args.mode)
        runs.append(r)
        print(
            f"{args.mode}, limit {limit}: sent {r['sent']}, answered {r['answered']}, mixed up {r['mixed_up']}, errors {r['errors']}"
            f" {r['errors_by_kind'] or ''}, queue full {r['queue_full']}; p50 {r['p50_s']} s, p95 {r['p95_s']} s,"
            f" {r['throughput_rps']} answered/s; load average {r['load_average_1m']}, peak RSS {r['peak_rss_mib']} MiB",
            flush=True,
        )
    if len(runs) > 1:
        best = min((r for r in runs if r["p95_s"] is not None), key=lambda r: r["p95_s"])
        print(f"lowest p95: concurrency limit {best['concurrency_limit']} ({best['p95_s']} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(runs, indent=2) + "\n")
    ok = all(r["answered"] + r["queue_full"] == r["sent"] and not r["mixed_up"] and not r["errors"] for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
