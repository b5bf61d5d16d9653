"""ZeroGPU: the ``spaces`` package's ``@spaces.GPU`` on the serving path's GPU entry point, a no-op anywhere else.

On a ZeroGPU Space the app's process holds no GPU. A function decorated with ``spaces.GPU`` runs in a worker
process forked from the app's, with a GPU lent for the call's duration; its arguments and its result cross
between the two processes pickled, and the worker is reused by the next call while it stays idle. Off ZeroGPU
(``SPACES_ZERO_GPU`` unset), ``spaces.GPU`` returns the function itself, and :func:`gpu_task` does the same
when ``spaces`` is not installed at all, so the CPU path and a researcher's own GPU run the plain function.

ZeroGPU's rules (hub-docs spaces-zerogpu.md; gradio issue #12792; autotrain-advanced issue #727), and where each is kept:

1. ``spaces`` is imported before torch: the first import of app.py (tests/test_space_stack.py).
2. Inputs are checked before the decorated call (``Predictor.check_request``): an exception inside it reaches the
   visitor as a bare "ZeroGPU worker error" and has spent their quota.
3. Results cross the process boundary pickled: plain data only (numpy, PIL, floats). A CUDA tensor in a result
   hangs the call, so :func:`host_only` refuses any tensor not on the CPU, inside the worker, with a message.
4. Each call asks for a duration (:func:`gpu_seconds`, from the batch's size): the default 60 s is checked against
   the visitor's quota (2 minutes a day without an account), and shorter requests are scheduled first.
5. No ``torch.compile`` (tests/test_space_stack.py).

``spaces`` must be imported before torch initialises CUDA; nothing in brainmri initialises CUDA at import,
and this module is imported with ``brainmri.serving``, before any model loads (docs/space.md).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from brainmri.settings import on_zerogpu

try:  # optional: a Space installs it (requirements.txt); the app runs without it
    import spaces
except ImportError:
    spaces = None

_logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)
T = TypeVar("T")

# The GPU time one call asks for, in seconds. A request's passes take well under a second on a GPU, but a fresh
# worker first copies the loaded models to its GPU; the lease's CUDA check (scripts/cuda_check.py) measures both.
FIRST_S = 10  # a worker's start-up and the first image's passes
PER_IMAGE_S = 1  # each further image of a batch (BRAIN_MRI_MAX_BATCH)
MAX_S = 60  # spaces' default, and never more: past it the call is queued behind shorter ones


def gpu_seconds(images: Sequence[object], *args: object, **kwargs: object) -> int:
    """The duration to ask ZeroGPU for a batch of ``images`` (the decorated function's own arguments)."""
    return min(MAX_S, FIRST_S + PER_IMAGE_S * max(0, len(images) - 1))


def host_only(value: T, where: str = "result") -> T:
    """``value`` itself when it holds no tensor off the CPU (through lists, tuples, dicts and dataclasses); else a
    TypeError naming where the tensor is, since a CUDA tensor pickled back from a ZeroGPU worker hangs the call."""
    import torch  # here, not at import: spaces must come first

    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise TypeError(f"{where} is a tensor on {value.device}: a ZeroGPU task must return CPU data (numpy, PIL, .cpu())")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            host_only(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            host_only(item, f"{where}[{key!r}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            host_only(getattr(value, field.name), f"{where}.{field.name}")
    return value


def _returning_host_data(fn: F) -> F:
    @functools.wraps(fn)
    def task(*args, **kwargs):
        return host_only(fn(*args, **kwargs), f"{getattr(fn, '__name__', 'task')}()")

    return task


def gpu_task(fn: F, duration: Callable[..., int] | int | None = gpu_seconds) -> F:
    """``fn`` as a ZeroGPU task (``spaces.GPU(fn, duration=duration)``, its result checked by :func:`host_only`);
    ``fn`` itself off ZeroGPU or without ``spaces``.

    Everything ``fn`` takes and returns must pickle (images, names, ``Prediction``): on ZeroGPU it runs in
    another process. ``duration``: seconds, or a function of ``fn``'s arguments giving them (:func:`gpu_seconds`)."""
    if spaces is None:
        if on_zerogpu():
            raise ValueError("SPACES_ZERO_GPU is set but the spaces package is not installed: pip install -r requirements.txt")
        return fn
    if not on_zerogpu():
        return spaces.GPU(fn)  # fn itself
    return spaces.GPU(_returning_host_data(fn), duration=duration)
