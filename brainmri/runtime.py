"""How many CPU cores this process may really use, and torch set up to use exactly those.

A container often reports the host's cores (``os.cpu_count()``) while its CPU affinity
or its cgroup quota allows far fewer: a free 2-vCPU Space is one. Torch's default of one
thread per reported core then oversubscribes the real ones and slows every request.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from brainmri.settings import torch_threads

_logger = logging.getLogger(__name__)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 cpu.max, else v1 cfs quota/period), or None if unlimited."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota_file, period_file = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
    if quota_file.is_file() and period_file.is_file():
        quota, period = int(quota_file.read_text()), int(period_file.read_text())
        if quota > 0 and period > 0:
            return quota / period
    return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: CPU affinity, capped by the cgroup quota (rounded up), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota = _cgroup_quota(cgroup_root)
    except (OSError, ValueError):  # an unreadable or odd cgroup file: affinity alone decides
        quota = None
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def configure_torch_threads() -> int:
    """Set torch's (and OpenCV's) threads to :func:`available_cpus` (``BRAIN_MRI_THREADS`` overrides), denormals flushed.

    Call it once at start-up, before any model runs. Returns the thread count.
    """
    threads = torch_threads() or available_cpus()
    # Denormal floats are up to 100x slower on x86, and trained small CNNs produce them (simple_cnn_7: 290 -> 9 ms).
    # Set before torch starts its worker threads, which copy this thread's floating-point mode when created.
    torch.set_flush_denormal(True)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        _logger.info("torch uses %d threads", threads)
    try:  # OpenCV (under pytorch_grad_cam's resizing) sizes its own pool by the reported cores too
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:
        pass
    return threads
