"""Load test of the app's /predict API: nothing lost, nothing mixed up, answers per second, p50/p95 latency, memory.

    python scripts/load_test.py                                  # python app.py apart; 24 clients x 3 distinct images
    python scripts/load_test.py --mode identical                 # every client sends the same image at once
    python scripts/load_test.py --requests 21 --rounds 3         # 3 x 504 requests to one server, its memory after each
    python scripts/load_test.py --concurrency-limit 1 2 8        # one run per queue concurrency limit (0: the app's own)
    python scripts/load_test.py --client gradio                  # through gradio_client (heavier on the load generator)
    python scripts/load_test.py --url http://127.0.0.1:7860/     # an app already running on loopback
    python scripts/load_test.py --warm-up 0                      # no untimed request per client first (before 2026-12-06)
    python scripts/load_test.py --fresh-clients                  # clients built inside the timed run (before 2026-12-07)

The app runs as ``python app.py`` in its own process (``--server process``, as on a Space), so its CPU
time per answer and its resident memory (now and peak) are its own; ``--server inprocess`` launches
it inside this process (the tests do; the clients then share its interpreter). The clients speak
Gradio's REST API over httpx (``--client http``: upload, ``/call/predict``, its event stream: the
same queue and handler as gradio_client at a fraction of the load generator's CPU, which shares the
2 cores with the server), or use gradio_client (``--client gradio``).

In ``--mode distinct`` every request sends a distinct image (a real Testing slice resized to its own
width), so each answer can be checked against the direct ``Predictor.predict`` result for that
image: the same image size, class and probabilities. In ``--mode identical`` every request sends
the same file at once, as a class clicking one example does: Gradio files identical uploads under
one path, which the app must not delete while another request still needs it. Bounded by count
(clients x requests) and by ``--time-limit`` seconds; requests refused because the queue is full
(``--max-size``, in-process only; the app's own bound is 64) are counted, not lost. Loopback only:
any other URL is refused.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling load_clients, however it is loaded

from load_clients import CLIENTS, GradioClient, HttpClient, close_app, launch_app, launch_process, process_usage  # noqa: E402

from brainmri.cli import add_data_argument, exit_code, setup_logging, write_json  # noqa: E402
from brainmri.data.imageio import load_image  # noqa: E402
from brainmri.data.records import load_records  # noqa: E402
from brainmri.models.catalog import discover  # noqa: E402
from brainmri.runtime import describe_cpu  # noqa: E402
from brainmri.serving import Predictor  # noqa: E402
from brainmri.settings import default_data  # noqa: E402

_logger = logging.getLogger(__name__)
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

    def add(self, other: Outcome) -> None:
        """Fold another run (a later round) into this one."""
        self.sent += other.sent
        self.answered += other.answered
        self.queue_full += other.queue_full
        self.mixed_up += other.mixed_up
        self.errors += other.errors
        self.latencies += other.latencies
        self.wall_s += other.wall_s

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


def make_images(n: int, folder: Path, data: str | Path | None = None, height: int = 128, prefix: str = "load") -> list[Path]:
    """``n`` distinct PNGs: Testing slices of ``data`` (default: ``brainmri.settings.default_data()``) cycling through
    the classes, image i resized to width ``height + i``."""
    per_class = list(load_records(default_data() if data is None else data, "test").paths_by_class().values())
    paths = []
    for i in range(n):
        files = per_class[i % len(per_class)]
        src = files[(i // len(per_class)) % len(files)]
        with Image.open(src) as im:
            out = folder / f"{prefix}_{i:04d}.png"
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
        and (got.get("probabilities") is None) == (want["probabilities"] is None)  # null over a slice judged not an MRI
        and all(abs((got.get("probabilities") or {}).get(k, float("inf")) - v) <= tol for k, v in (want["probabilities"] or {}).items())
    )


def connect(url: str, n: int, client_kind: str = "http") -> list[HttpClient | GradioClient | Exception]:
    """``n`` clients of ``url``; one that cannot be built is its exception, and every request it would send an error."""
    clients = []
    for _ in range(n):
        try:
            clients.append(CLIENTS[client_kind](url))
        except Exception as e:  # noqa: BLE001  (a client that cannot connect loses all its requests: counted as errors)
            clients.append(e)
    return clients


def run_load(
    url: str,
    jobs: list[list[Path]],
    expected: dict[str, dict],
    model: str | None,
    time_limit: float,
    client_kind: str = "http",
    clients: list | None = None,
) -> Outcome:
    """One thread per entry of ``jobs``, each sending its images one after another through its own client.

    ``clients``: one a job, built before the clock starts (:func:`connect`). None: each thread builds its own inside
    the timed run, as every run did before 2026-12-07 (``--fresh-clients``); an httpx client costs ~20 ms of CPU to
    build, 0.5 s for 24, spent on the two cores the server shares, as its first requests arrive."""
    out = Outcome()
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def client_loop(paths: list[Path], client) -> None:
        if client is None:  # fresh: built here, closed when done
            (client,) = connect(url, 1, client_kind)
            try:
                send(paths, client)
            finally:
                if not isinstance(client, Exception):
                    client.close()
        else:
            send(paths, client)

    def send(paths: list[Path], client) -> None:
        if isinstance(client, Exception):
            with lock:
                out.sent += len(paths)
                out.errors += [f"{p.name}: client could not connect: {type(client).__name__}: {str(client)[:200]}" for p in paths]
            return
        for path in paths:
            if time.monotonic() > deadline:
                return
            with lock:
                out.sent += 1
            start = time.perf_counter()
            try:
                details = client.predict(path, model or "")
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

    clients = clients or [None] * len(jobs)
    if len(clients) != len(jobs):
        raise ValueError(f"{len(clients)} clients for {len(jobs)} jobs: one each")
    threads = [threading.Thread(target=client_loop, args=(paths, client), daemon=True) for paths, client in zip(jobs, clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 30)
    out.wall_s = time.perf_counter() - start
    return out


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
    server: str = "inprocess",
    client: str = "http",
    rounds: int = 1,
    warm_up: int = 1,
    fresh_clients: bool = False,
) -> dict:
    """One run: ``clients`` concurrent clients x ``requests`` images each, all distinct or all the same file
    (``mode``), against the app in this process, in its own process (``server="process"``) or at ``url``;
    ``rounds`` times over against the same server. Returns the summary of all rounds, with the machine's load
    average, the server's CPU per answer and its memory (after start-up and after each round), and the load
    generator's CPU per request.

    ``warm_up`` requests per client go first, untimed and uncounted, on images of their own (96 px high, so distinct
    from the timed ones): a model other than the server's default is loaded by its first requests, one copy per batch
    worker, and without them that loading fell inside the timed run and the server's CPU an answer. The clients are
    built once, before the warm-up, and serve every round, as a visitor's browser keeps its connection;
    ``fresh_clients``: the warm-up's and each round's threads build their own inside the run (:func:`run_load`), as
    before 2026-12-07."""
    if url is not None and urlparse(url).hostname not in LOOPBACK:
        raise ValueError(f"{url} is not a loopback address: the load test only runs against 127.0.0.1")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    with tempfile.TemporaryDirectory(prefix="brainmri-load-") as tmp:
        paths = make_images(clients * requests if mode == "distinct" else 1, Path(tmp), data)
        warm_paths = make_images(clients * warm_up, Path(tmp), data, height=96, prefix="warm")
        expected = expected_details(paths + warm_paths, model)
        paths = paths if mode == "distinct" else paths * (clients * requests)
        jobs = [paths[i::clients] for i in range(clients)]
        launched, proc = None, None
        if url is None and server == "process":
            proc, url = launch_process(concurrency_limit)
        elif url is None:
            launched, url = launch_app(concurrency_limit, max_size)
        kept = [] if fresh_clients else connect(url, clients, client)  # fresh: every run builds its own, as before
        try:
            warmed = run_load(url, [warm_paths[i::clients] for i in range(clients)], expected, model, time_limit, client, kept)
            before, own_before = process_usage(proc.pid) if proc else None, time.process_time()
            out, rss_by_round = Outcome(), []
            for _ in range(rounds):
                out.add(run_load(url, jobs, expected, model, time_limit, client, kept))
                if proc is not None:
                    rss_by_round.append(process_usage(proc.pid)["rss_mib"])
            after, own_cpu = process_usage(proc.pid) if proc else None, time.process_time() - own_before
        finally:
            for c in kept:
                if not isinstance(c, Exception):
                    c.close()
            if launched is not None:
                close_app(launched)
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    served = {}
    if proc is not None:  # the server alone: its CPU per answer, its memory now and at its peak
        cpu = after["cpu_s"] - before["cpu_s"]
        served = {"server_cpu_ms_per_answer": round(1000 * cpu / max(out.answered, 1), 1), "server_rss_mib": after["rss_mib"]}
        served["server_peak_rss_mib"] = after["peak_rss_mib"]
        served["server_start_rss_mib"], served["server_rss_by_round_mib"] = before["rss_mib"], rss_by_round
    return {
        "mode": mode,
        "clients": clients,
        "requests_per_client": requests,
        "rounds": rounds,
        "concurrency_limit": concurrency_limit,
        "max_size": max_size,
        **out.summary(),
        "examples": (out.mixed_up + out.errors)[:5],
        "warm_up": {"sent": warmed.sent, "answered": warmed.answered, "failed": (warmed.mixed_up + warmed.errors)[:5]},
        "server": "url" if launched is None and proc is None else server,
        "client": client,
        "fresh_clients": fresh_clients,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu": describe_cpu(),
        **served,
        "client_cpu_ms_per_request": round(1000 * own_cpu / max(out.sent, 1), 1),
        # In-process, the app shares this process: its peak resident memory (Linux reports KiB) is the app's and the clients'.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=24, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--mode", choices=MODES, default="distinct", help="each request its own image, or all the same file")
    parser.add_argument("--concurrency-limit", type=int, nargs="+", default=[0], help="queue concurrency limit(s) to try; 0: the app's own")
    parser.add_argument("--max-size", type=int, default=64, help="queue max_size: requests beyond it are refused, bounding memory")
    parser.add_argument("--model", default=None, help="default: the app's default model")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per run; requests not started by then are not sent")
    parser.add_argument("--server", choices=("process", "inprocess"), default="process", help="python app.py apart, or in this process")
    parser.add_argument("--client", choices=tuple(CLIENTS), default="http", help="Gradio's REST API over httpx, or gradio_client")
    parser.add_argument("--url", default=None, help="an app already running on loopback (then --concurrency-limit is the app's own)")
    parser.add_argument("--rounds", type=int, default=1, help="runs against the same server; its memory is printed after each")
    parser.add_argument("--warm-up", type=int, default=1, help="untimed requests per client first, on images of their own (0: none)")
    parser.add_argument(
        "--fresh-clients", action="store_true", help="each round's clients built inside its timed run (every run before 2026-12-07)"
    )
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    ok: list[bool] = []

    def run() -> None:
        runs = []
        for limit in args.concurrency_limit if args.url is None else [0]:
            r = load_test(
                args.clients, args.requests, limit, args.max_size, args.model, args.time_limit, args.url, args.data, args.mode,
                args.server, args.client, args.rounds, args.warm_up, args.fresh_clients,
            )  # fmt: skip
            runs.append(r)
            memory = (
                f"server RSS {r['server_rss_mib']} MiB (peak {r['server_peak_rss_mib']}),"
                f" server CPU {r['server_cpu_ms_per_answer']} ms/answer"
                if "server_rss_mib" in r
                else f"peak RSS {r['peak_rss_mib']} MiB (app and clients)"
            )
            print(
                f"{args.mode}, limit {limit}, {r['client']} clients: sent {r['sent']}, answered {r['answered']}, mixed up {r['mixed_up']},"
                f" errors {r['errors']} {r['errors_by_kind'] or ''}, queue full {r['queue_full']}; p50 {r['p50_s']} s, p95 {r['p95_s']} s,"
                f" {r['throughput_rps']} answered/s{' (fresh clients)' if r['fresh_clients'] else ''};"
                f" {r['cpu']}, load average {r['load_average_1m']}; {memory};"
                f" load generator CPU {r['client_cpu_ms_per_request']} ms/request",
                flush=True,
            )
            if args.rounds > 1 and "server_rss_by_round_mib" in r:
                per_round = ", ".join(f"{m} MiB" for m in r["server_rss_by_round_mib"])
                print(
                    f"server RSS after start-up {r['server_start_rss_mib']} MiB;"
                    f" after each round of {r['sent'] // args.rounds}: {per_round}"
                )
        if len(runs) > 1:
            best = min((r for r in runs if r["p95_s"] is not None), key=lambda r: r["p95_s"])
            print(f"lowest p95: concurrency limit {best['concurrency_limit']} ({best['p95_s']} s)")
        write_json(args.out, runs)
        failed = [r["mixed_up"] or r["errors"] or r["warm_up"]["failed"] for r in runs]
        clean = [r["answered"] + r["queue_full"] == r["sent"] and not f for r, f in zip(runs, failed)]
        ok.append(all(clean))

    return exit_code(run, _logger) or (0 if all(ok) else 1)


if __name__ == "__main__":
    raise SystemExit(main())
