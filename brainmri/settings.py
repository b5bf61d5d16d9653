"""Every setting the project reads from the environment, one function each, read when called.

Nothing here is read at import: a function reads its variable each time it is called, so a
test's ``monkeypatch.setenv`` (or a shell's ``export``) takes effect without re-importing
anything. An unset or empty variable means the default. A value that cannot be used is a
ValueError naming the variable and the value.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent  # the repository


def _get(name: str) -> str | None:
    """The variable's value, or None when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def _positive_int(name: str, default: int) -> int:
    value = _get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return number


def _positive_float(name: str, default: float) -> float:
    value = _get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def default_data() -> str:
    """``BRAIN_MRI_DATA``: the dataset every ``--data`` defaults to, a folder with Training/ and Testing/
    or a Hub dataset id. Default: ``../shared/data/brain-tumor-mri`` beside the repository (from the
    repository's root, wherever the command runs)."""
    return _get("BRAIN_MRI_DATA") or str(ROOT.parent / "shared" / "data" / "brain-tumor-mri")


def checkpoint_dir() -> Path:
    """``BRAIN_MRI_CHECKPOINTS``: the folder of checkpoint folders (one per registry name) that the app
    serves and the tools read. Default: ``checkpoints/`` in the repository."""
    return Path(_get("BRAIN_MRI_CHECKPOINTS") or ROOT / "checkpoints")


HUB_NAMESPACE_VARIABLE = "BRAIN_MRI_HUB_NAMESPACE"  # also set on a published Space (ops.push --space)


def hub_namespace() -> str:
    """``BRAIN_MRI_HUB_NAMESPACE``: the Hugging Face Hub user or organisation the checkpoints are pushed
    to and pulled from (``<namespace>/<registry name>``); override it for a fork. Default: ``brain-mri``."""
    return _get(HUB_NAMESPACE_VARIABLE) or "brain-mri"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (huggingface_hub's own variable): true (1, true, yes, on) makes the app look
    for checkpoints on disk only, never on the Hub. Default: false."""
    return (_get("HF_HUB_OFFLINE") or "").lower() in {"1", "true", "yes", "on"}


def default_model() -> str | None:
    """``BRAIN_MRI_DEFAULT_MODEL``: the registry name (a model or an ensemble) the app selects first; its OOD
    statistics (an ensemble's classifier's) judge uploads when it ships them. Default: None, the registry's
    ``APP_DEFAULT`` when it can be served, else its ``DEFAULT_CLASSIFIER``, else the available local model with the
    best validation accuracy."""
    return _get("BRAIN_MRI_DEFAULT_MODEL")


def torch_threads() -> int | None:
    """``BRAIN_MRI_THREADS``: how many threads torch (and OpenCV) use. Default: None, the cores this
    process may really use (``brainmri.runtime.available_cpus``), shared by the app's batch workers."""
    return _positive_int("BRAIN_MRI_THREADS", 0) or None


def model_cache_mb() -> float:
    """``BRAIN_MRI_MODEL_CACHE_MB``: memory bound, in MiB, of the loaded models' tensors the app keeps;
    the least recently used model is dropped beyond it. Default: 1024."""
    return _positive_float("BRAIN_MRI_MODEL_CACHE_MB", 1024.0)


def max_batch() -> int:
    """``BRAIN_MRI_MAX_BATCH``: the most concurrent app requests run through a model together
    (``brainmri.serving.batching``); 1 runs each alone. Default: 8; 1 on ZeroGPU, where each request takes its own
    GPU lease, counted against its own visitor's quota (docs/space.md)."""
    return _positive_int("BRAIN_MRI_MAX_BATCH", 1 if on_zerogpu() else 8)


def batch_workers() -> int:
    """``BRAIN_MRI_WORKERS``: how many batches of one model the app runs at once, each through its own
    copy of the model (``brainmri.serving.Predictor``). Default: 2, so one batch's preparation and
    finishing overlap another's passes on 2 cores (README, "Under load, hostile input, a dead Hub"); 1 on
    ZeroGPU, where requests are not batched."""
    return _positive_int("BRAIN_MRI_WORKERS", 1 if on_zerogpu() else 2)


def serving_device() -> str:
    """``BRAIN_MRI_DEVICE``: where the app's model passes and heatmaps run: ``auto`` (CUDA when torch sees a GPU or
    the Space runs on ZeroGPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` (``brainmri.serving.device``). Default: auto."""
    value = (_get("BRAIN_MRI_DEVICE") or "auto").lower()
    kind, _, index = value.partition(":")
    if value in {"auto", "cpu", "cuda"} or (kind == "cuda" and index.isdigit()):
        return value
    raise ValueError(f"BRAIN_MRI_DEVICE must be auto, cpu, cuda or cuda:N, got {value!r}")


def outline_bf16() -> bool:
    """``BRAIN_MRI_OUTLINE_BF16``: run the tumour outline's U-Net in bfloat16 on a CPU that computes it natively
    (avx512_bf16 or AMX; ``brainmri.runtime.native_bf16``): 36 -> 25 ms a slice, the outline the float32 one's to a
    mean Dice of 0.99 (docs/serving.md). ``0`` keeps float32. Default: 1."""
    value = (_get("BRAIN_MRI_OUTLINE_BF16") or "1").lower()
    if value not in {"0", "1"}:
        raise ValueError(f"BRAIN_MRI_OUTLINE_BF16 must be 0 or 1, got {value!r}")
    return value == "1"


def onnx_runtime() -> bool:
    """``BRAIN_MRI_ONNX``: run the CPU passes that need no gradient (a classifier's plain forward, the OOD judge's, the
    one encoder's encoder, a heatmap's forward below its shallowest stage) through ONNX Runtime
    (brainmri.serving.onnx_passes), where ``onnxruntime`` and ``onnx`` are installed: the same numbers to float
    rounding, in less CPU time (docs/serving.md: on an AVX2 host 14-16 ms less a lone request of the default, and more
    answers a second in each of four load runs). ``0`` keeps torch. Default: 1, by the third rule there."""
    value = (_get("BRAIN_MRI_ONNX") or "1").lower()
    if value not in {"0", "1"}:
        raise ValueError(f"BRAIN_MRI_ONNX must be 0 or 1, got {value!r}")
    return value == "1"


@contextlib.contextmanager
def onnx_runtime_as(on: bool) -> Iterator[None]:
    """``BRAIN_MRI_ONNX`` as ``on`` inside the block, as it was after: models loaded there run their no-gradient passes
    that way (a heatmap sweep whose hooks may sit where ONNX Runtime would run, in torch: reports.cam_localisation;
    both ways in one process: scripts/bench_onnx.py)."""
    with mock.patch.dict(os.environ, {"BRAIN_MRI_ONNX": "1" if on else "0"}):
        yield


@contextlib.contextmanager
def outline_bf16_as(on: bool) -> Iterator[None]:
    """``BRAIN_MRI_OUTLINE_BF16`` as ``on`` inside the block, as it was after: outliners loaded there run their forward
    in bfloat16 or not (scripts/cuda_check.py compares CUDA with a float32 CPU reference)."""
    with mock.patch.dict(os.environ, {"BRAIN_MRI_OUTLINE_BF16": "1" if on else "0"}):
        yield


def on_zerogpu() -> bool:
    """``SPACES_ZERO_GPU`` (set by the Hub on a ZeroGPU Space, read by the ``spaces`` package): true when the
    Space lends a GPU per decorated call (``brainmri.serving.zerogpu``). Default: false."""
    return (_get("SPACES_ZERO_GPU") or "").lower() in {"1", "t", "true"}  # the values spaces.config accepts


def concurrency_limit() -> int:
    """``GRADIO_DEFAULT_CONCURRENCY_LIMIT`` (Gradio's own variable): how many requests the app's queue
    runs at once. Default: twice :func:`max_batch`, so a full batch forms while the one before it runs
    (with one batch worker, 24 clients sending distinct images: 12.2 answered/s at 8, 14.1 at 16)."""
    return _positive_int("GRADIO_DEFAULT_CONCURRENCY_LIMIT", 2 * max_batch())


def session_capacity() -> int:
    """``BRAIN_MRI_SESSIONS``: the most sessions Gradio keeps in memory (its ``state_session_capacity``); the least
    recently used is dropped beyond it. Every API call without a session opens one, and Gradio keeps a copy of the
    page's configuration in each (0.46 MB here): at Gradio's default of 10,000 the app grew by 230 MB every 500
    requests and did not level off (docs/serving.md). A browser visitor whose session was dropped uploads again.
    Default: 256."""
    return _positive_int("BRAIN_MRI_SESSIONS", 256)


def bound_gradio_analytics(cache_frequency: int, max_events: int) -> None:
    """``GRADIO_ANALYTICS_CACHE_FREQUENCY`` and ``GRADIO_ANALYTICS_MAX_EVENTS`` (Gradio's own variables), set to these
    unless the environment sets them: the queue otherwise summarises up to 10,000 past events in a pandas DataFrame
    after every request, for a monitoring page this app does not open (brainmri.app.gradio_costs). Read by Gradio when
    ``demo.queue()`` makes the queue: call before."""
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(cache_frequency))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", str(max_events))


def gradio_closed_session_ttl() -> int:
    """Seconds Gradio keeps a closed session's state: 1 under ``GRADIO_IS_E2E_TEST`` (Gradio's own), else 3600, as
    Gradio's SessionState decides (brainmri.app.gradio_costs caps it at the page's own State lifetime)."""
    return 1 if os.environ.get("GRADIO_IS_E2E_TEST") else 3600


def gradio_temp_dir() -> Path:
    """``GRADIO_TEMP_DIR`` (Gradio's own variable): where Gradio keeps uploads, resolved.
    Default: ``gradio/`` in the system's temporary folder, as Gradio itself uses."""
    return resolved(_get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio"))


@functools.lru_cache(maxsize=1024)
def resolved(path: str) -> Path:
    """``path`` resolved, once per spelling: every request asks where Gradio's cache is and which files the app keeps
    there, and resolving walks the disk."""
    return Path(path).resolve()
