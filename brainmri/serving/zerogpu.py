"""ZeroGPU: the ``spaces`` package's ``@spaces.GPU`` on the serving path's GPU entry point, a no-op anywhere else.

On a ZeroGPU Space the app's process holds no GPU. A function decorated with ``spaces.GPU`` runs in a worker
process forked from the app's, with a GPU lent for the call's duration; its arguments and its result cross
between the two processes pickled, and the worker is reused by the next call while it stays idle. Off ZeroGPU
(``SPACES_ZERO_GPU`` unset), ``spaces.GPU`` returns the function itself, and :func:`gpu_task` does the same
when ``spaces`` is not installed at all, so the CPU path and a researcher's own GPU run the plain function.

``spaces`` must be imported before torch initialises CUDA; nothing in brainmri initialises CUDA at import,
and this module is imported with ``brainmri.serving``, before any model loads (docs/space.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from brainmri.settings import on_zerogpu

try:  # optional: a Space installs it (requirements.txt); the app runs without it
    import spaces
except ImportError:
    spaces = None

_logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)


def gpu_task(fn: F) -> F:
    """``fn`` as a ZeroGPU task (``spaces.GPU(fn)``); ``fn`` itself off ZeroGPU or without ``spaces``.

    Everything ``fn`` takes and returns must pickle (images, names, ``Prediction``): on ZeroGPU it runs in
    another process."""
    if spaces is None:
        if on_zerogpu():
            raise ValueError("SPACES_ZERO_GPU is set but the spaces package is not installed: pip install -r requirements.txt")
        return fn
    return spaces.GPU(fn)
