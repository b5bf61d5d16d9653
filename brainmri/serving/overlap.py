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

Each pass here runs in a thread of its own: torch releases the GIL inside its operators, so two passes use two
cores. The answers are the same numbers as one pass after another (tests/test_overlap.py); under load every core
is busy anyway and a request costs the same CPU time, only spread over more threads.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import torch
from torch import nn

from brainmri.runtime import available_cpus

T = TypeVar("T")


def spare_core(device: torch.device) -> bool:
    """Whether a pass handed to another thread finds a core of its own: on the CPU, with more usable cores than
    the torch threads a pass uses. Never on a GPU, whose passes queue on one device."""
    return device.type == "cpu" and available_cpus() > torch.get_num_threads()


def alongside(work: Callable[..., T], *args) -> Future[T]:
    """Start ``work(*args)`` in a thread of its own; its result (or its exception) comes from the returned future.

    A thread a pass, not a pool: a pool shared by the batch workers would queue one request's passes behind
    another's, and a pass never waits on another pass of this module."""
    future: Future[T] = Future()
    threads = torch.get_num_threads()

    def run() -> None:
        torch.set_num_threads(threads)  # as the caller: a new thread would take torch's default otherwise
        try:
            future.set_result(work(*args))
        except BaseException as e:  # handed to the caller's .result()
            future.set_exception(e)

    threading.Thread(target=run, name=f"brainmri-{getattr(work, '__name__', 'pass')}", daemon=True).start()
    return future


def shared_weights_copy(model: nn.Module) -> nn.Module:
    """Another module tree over the same parameter and buffer tensors: no memory for weights, but hooks of its own.

    Grad-CAM's hooks on ``model`` see every forward through its modules; a forward through the copy, in another
    thread at the same time, passes none of them."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)
