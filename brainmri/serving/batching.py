"""Micro-batching: requests that arrive together for one model run through it as one batch.

Written here rather than with Gradio's ``batch=True`` because a Gradio batch fails as a whole:
one broken upload would fail every request batched with it. Here each request decodes its own
image first (its errors stay its own), then waits at most ``max_wait_s`` for others to join.
One forward and one backward over a batch gives every image its own Grad-CAM (images do not
interact in an eval-mode network), so batching changes the cost per image, not the answers
(``tests/test_batching.py``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

_logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


RunBatch = Callable[[Sequence[T]], list[R]]


class MicroBatcher(Generic[T, R]):
    """Runs ``run_batch`` on items submitted from many threads, up to ``max_batch`` at a time.

    A worker takes the first waiting item, then whatever else arrives within ``max_wait_s``
    (or is already waiting), up to ``max_batch``. ``run_batch`` returns one result per item, in
    order; if it raises, every item of that batch gets the exception. Given one ``run_batch``
    per worker, that many batches run at once, each worker through its own (the app: a copy of
    the model each, so one batch's preparation and finishing overlap another's passes).
    """

    def __init__(self, run_batch: RunBatch | Sequence[RunBatch], max_batch: int = 8, max_wait_s: float = 0.005, name: str = ""):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        runners = list(run_batch) if isinstance(run_batch, Sequence) else [run_batch]
        if not runners:
            raise ValueError("a MicroBatcher needs at least one run_batch")
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: queue.Queue[tuple[T, Future]] = queue.Queue()
        self.batches = 0  # how many batches ran, and how many items in all: their ratio is the mean batch size
        self.items = 0
        self._count_lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._loop, args=(run,), name=f"batcher-{name}-{i}", daemon=True) for i, run in enumerate(runners)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, item: T) -> R:
        """Block until ``item``'s result is ready; re-raise its batch's exception."""
        future: Future = Future()
        self._queue.put((item, future))
        return future.result()

    def _collect(self) -> list[tuple[T, Future]]:
        batch = [self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.perf_counter())))
            except queue.Empty:
                break
        return batch

    def _loop(self, run_batch: RunBatch) -> None:
        while True:
            batch = self._collect()
            try:
                results = run_batch([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except BaseException as e:  # noqa: BLE001  (delivered to every waiting request, which re-raises it)
                for _, future in batch:
                    future.set_exception(e)
                continue
            with self._count_lock:
                self.batches += 1
                self.items += len(batch)
            for (_, future), result in zip(batch, results):
                future.set_result(result)
