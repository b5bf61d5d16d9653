"""The machine: how many CPU cores this process may really use (torch set up to use exactly those), what the CPU
computes natively (bf16) and how the speed scripts name it, and which device a run uses.

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


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 in hardware (the avx512_bf16 or amx_bf16 flag; Linux): elsewhere torch
    emulates it, slower than float32. False where the flags cannot be read, and where torch dispatches below its
    AVX-512 kernels (``ATEN_CPU_CAPABILITY=avx2``, with ``ONEDNN_MAX_CPU_ISA=AVX2`` for oneDNN's convolutions: a host
    held to AVX2, docs/serving.md)."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def warn_if_bf16_emulated(device: torch.device | str) -> bool:
    """Log a warning when bfloat16 autocast is about to run on a CPU that emulates it (no avx512_bf16 or AMX): there
    the one encoder's forward (multitask_lite0) took 18x as long as in float32 (docs/serving.md, "Hosts differ").
    Returns whether it warned."""
    if torch.device(device).type != "cpu" or native_bf16():
        return False
    _logger.warning(
        "bf16 autocast on a CPU that emulates bfloat16 (%s): many times slower than float32; pass --amp none",
        describe_cpu(),
    )
    return True


def describe_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU as a speed figure must name it: the vector kernels torch dispatches to here ("AVX512", "AVX2", ...)
    and whether bfloat16 is native. Hosts of one cloud differ in both: this project's 2-core machine was an
    avx512_bf16 EPYC in most sessions and an AVX2 one without bf16 in another, where a request cost 1.4-1.6 times the CPU and
    bf16 autocast ran 18x slower than float32 (docs/serving.md, "Hosts differ"). Two avx512_bf16 hosts differed too, a
    request costing one 1.5 times the other's CPU, so the CPU's family and model follow where Linux names them, as in
    "AVX512, bf16 native, AMD family 26 model 2" (family 26 is AMD's Zen 5)."""
    described = f"{torch.backends.cpu.get_cpu_capability()}, bf16 {'native' if native_bf16(cpuinfo) else 'emulated'}"
    generation = cpu_generation(cpuinfo)
    return f"{described}, {generation}" if generation else described


def cpu_generation(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first CPU's vendor, family and model from ``cpuinfo`` ("AMD family 26 model 2"); None where Linux does not
    give all three (another OS, or an ARM CPU's other fields). A virtual machine's "model name" often hides the rest."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    vendor, family, model = fields.get("vendor_id"), fields.get("cpu family"), fields.get("model")
    if not (vendor and family and model):
        return None
    vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(vendor, vendor)
    return f"{vendor} family {family} model {model}"


def pick_device(name: str, zerogpu: bool = False) -> torch.device:
    """``name`` ("auto", "cpu", "cuda", "cuda:N") as a torch device: "auto" is CUDA when torch sees a GPU (or on
    ZeroGPU, ``zerogpu``, where one appears only inside a decorated call), else the CPU. ValueError naming ``name``
    when it asks for a GPU that torch does not see (outside ZeroGPU). Training and serving both choose here."""
    name = name.lower()
    if name == "auto":
        name = "cuda" if zerogpu or torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r}: choose auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not zerogpu:
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


CPU_EVAL_BATCH = 4  # a CPU evaluates fastest per image in small batches, whose activations stay in its caches
GPU_EVAL_BATCH = 64


def eval_batch(device: torch.device | str, gpu: int = GPU_EVAL_BATCH) -> int:
    """How many images a pass over a data set takes at once on ``device``: 4 on a CPU, ``gpu`` on a GPU (64 unless the
    caller has its own, as training's validation does). On 2 Zen 4 cores (2026-12-08) Lite0 scored 816 validation
    slices in 8.5 s at 4 against 17.0 s at 64, and the multi-task model in 10.5 s against 24.5 s (train.evaluate;
    the same logits to the bit)."""
    return CPU_EVAL_BATCH if torch.device(device).type == "cpu" else gpu


def configure_torch_threads(workers: int = 1) -> int:
    """Set torch's (and OpenCV's) threads to :func:`available_cpus` shared by ``workers`` threads that each run
    models at once (``BRAIN_MRI_THREADS`` overrides), denormals flushed.

    The app's two batch workers on 2 cores get a thread each: Lite0's request then takes 70 ms of CPU
    instead of 110 ms with two threads that wait on each other (scripts/bench_app.py), and under load the
    workers keep both cores busy. Call it once at start-up, before any model runs. Returns the thread count.
    """
    threads = torch_threads() or max(1, available_cpus() // workers)
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
