"""A request's independent passes run side by side on the CPU's spare cores.

On a 2-vCPU Space each batch worker runs its passes with one torch thread (brainmri.runtime), so a lone request
leaves a core idle while it runs pass after pass. Several passes of a request do not need each other's results
until the end (brainmri.serving.predictor.Predictor.run_passes):

- the tumour outline (the segmenter's forward), started ahead of the OOD verdict and kept for in-distribution
  slices only;
- the OOD judge's forward, when the judge is another model;
- for a model whose heatmap runs at a larger size (``cam_size``), the plain forward at the input size that gives
  the class: the heatmap's forward starts at once, and its backward reads the class when it gets there
  (:class:`brainmri.explain.DeferredClass`).

Those passes run one after another in one thread beside the request's (:func:`in_turn`): torch releases the GIL
inside its operators, so the two threads use two cores. The answers are the same numbers as one pass after
another (tests/test_overlap.py); under load every core is busy anyway and a request costs the same CPU time,
only spread over two threads.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from brainmri.runtime import available_cpus

_running = 0  # requests running their passes in this process now (:func:`running`)
_running_lock = threading.Lock()


@contextmanager
def running() -> Iterator[int]:
    """Count a request's passes as running while inside; yields how many run now, this one included."""
    global _running
    with _running_lock:
        _running += 1
        now = _running
    try:
        yield now
    finally:
        with _running_lock:
            _running -= 1


def spare_core(device: torch.device, requests: int = 1) -> bool:
    """Whether a side thread would find a core of its own: on the CPU, with more usable cores than the torch threads
    of the ``requests`` running now. Under load each request already has its core, and a side thread would only
    add switching; never on a GPU, whose passes queue on one device."""
    return device.type == "cpu" and usable_cores() > requests * torch.get_num_threads()


@functools.cache
def usable_cores() -> int:
    """:func:`~brainmri.runtime.available_cpus`, read once: it reads the cgroup's files, and every request asks."""
    return available_cpus()


def in_turn(*passes: tuple[Callable[..., Any], tuple]) -> list[Future]:
    """Run ``passes`` (``(work, args)`` each) one after another in one thread beside the caller's, in the order
    given; a future for each result, or for its exception (the later passes still run).

    One side thread for all of a request's passes: with two, three threads would share the two cores and the
    GIL (measured: Lite0's request 76 ms against 64 with one). A thread a request, not a pool: a pool shared by
    the batch workers would queue one request's passes behind another's."""
    futures: list[Future] = [Future() for _ in passes]
    threads = torch.get_num_threads()

    def run() -> None:
        torch.set_num_threads(threads)  # as the caller: a new thread would take torch's default otherwise
        for (work, args), future in zip(passes, futures):
            try:
                future.set_result(work(*args))
            except BaseException as e:  # handed to the caller's .result()
                future.set_exception(e)

    threading.Thread(target=run, name="brainmri-side-passes", daemon=True).start()
    return futures


def shared_weights_copy(model: nn.Module) -> nn.Module:
    """Another module tree over the same parameter and buffer tensors: no memory for weights, but hooks of its own.

    Grad-CAM's hooks on ``model`` see every forward through its modules; a forward through the copy, in another
    thread at the same time, passes none of them."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)
