"""The load test's two sides: its clients (a light one of Gradio's REST API, and gradio_client) and the app under test
(in this process, or as ``python app.py`` in its own), with that process's CPU and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class HttpClient:
    """A light client of Gradio's REST API (what the app's "Use via API" page shows for curl): upload the file, start
    /predict, read its server-sent events. The same queue and handler as gradio_client, for a fraction of its CPU, so
    that 24 clients on the machine under test measure the server rather than the load generator."""

    def __init__(self, url: str):
        import httpx

        self.base = url.rstrip("/") + "/gradio_api"
        self.http = httpx.Client(timeout=120)

    def predict(self, path: Path, model: str) -> dict:
        with path.open("rb") as f:
            uploaded = self.http.post(f"{self.base}/upload", files={"files": (path.name, f)})
        uploaded.raise_for_status()
        file = {"path": uploaded.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
        started = self.http.post(f"{self.base}/call/predict", json={"data": [file, model]})
        if started.status_code != 200:  # e.g. the queue is full: Gradio says so in the body
            raise RuntimeError(f"HTTP {started.status_code}: {started.text[:200]}")
        event, data = None, None
        with self.http.stream("GET", f"{self.base}/call/predict/{started.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = json.loads(line.split(":", 1)[1])
                    break
        if event != "complete":
            raise RuntimeError(f"{event}: {data}")
        return data[2]

    def close(self) -> None:
        self.http.close()


class GradioClient:
    """gradio_client, as a user's script would call the app."""

    def __init__(self, url: str):
        from gradio_client import Client

        self.client = Client(url, verbose=False)

    def predict(self, path: Path, model: str) -> dict:
        from gradio_client import handle_file

        return self.client.predict(handle_file(str(path)), model, api_name="/predict")[2]

    def close(self) -> None:
        self.client.close()  # its heartbeat thread too


CLIENTS = {"http": HttpClient, "gradio": GradioClient}


def launch_app(concurrency_limit: int, max_size: int):
    """The app in this process on a free loopback port, with the given queue settings; returns (demo, url)."""
    import socket

    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = app.demo._queue
    restore = (queue.max_size, queue.default_concurrency_limit)  # the app's own settings, put back by close_app
    app.demo.queue(max_size=max_size, default_concurrency_limit=concurrency_limit or restore[1])
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)  # as python app.py does
    return (app.demo, restore), f"http://127.0.0.1:{port}/"


def close_app(launched) -> None:
    demo, (max_size, limit) = launched
    demo.close()
    demo.queue(max_size=max_size, default_concurrency_limit=limit)


def launch_process(concurrency_limit: int) -> tuple[subprocess.Popen, str]:
    """``python app.py`` as its own process, as a Space runs it (its own interpreter and GIL, the app's queue size),
    on a free loopback port; returns (process, url) once it answers."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    if concurrency_limit:
        env["GRADIO_DEFAULT_CONCURRENCY_LIMIT"] = str(concurrency_limit)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode} before answering")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("app.py did not answer within 120 s")


def process_usage(pid: int) -> dict:
    """A process's CPU seconds so far and its resident memory, now and at its peak (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    mib = lambda key: round(int(status[key].split()[0]) / 1024, 1)  # noqa: E731  (kB -> MiB)
    return {"cpu_s": cpu_s, "rss_mib": mib("VmRSS"), "peak_rss_mib": mib("VmHWM")}
