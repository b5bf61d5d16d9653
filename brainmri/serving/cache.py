"""The model cache: loaded models kept in memory, least recently used evicted first past a bound in bytes."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from brainmri.serving.loading import load_model

_logger = logging.getLogger(__name__)


class Loaded(Protocol):
    """What the cache holds: a loaded model (LoadedModel, serving.segment's LoadedSegmenter), with its size and lock."""

    nbytes: int  # its tensors' bytes, what the bound counts
    lock: threading.Lock  # held around its passes


class ModelCache:
    """Loaded models, least recently used evicted first once their tensors pass ``max_bytes``.

    A model may be loaded more than once (``copy``): each batch worker serves through its own copy,
    and every copy counts against the bound. The newest model always stays, even alone over the bound.

    Args:
        max_bytes: the bound on the loaded models' tensors.
        device: where models load; None for ``BRAIN_MRI_DEVICE`` (brainmri.serving.device).
        loader: ``(name, folder, device)`` -> a loaded model with ``nbytes`` and ``lock`` (default: the classifiers'
            :func:`load_model`; a second kind of model, a segmenter, brings its own loader and cache).
    """

    def __init__(self, max_bytes: float, device: torch.device | str | None = None, loader: Callable[..., Loaded] = load_model):
        self.max_bytes = max_bytes
        self.device = device
        self.loader = loader
        self._models: OrderedDict[tuple[str, int], Loaded] = OrderedDict()  # (name, copy) -> model, least recent first
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def names(self) -> list[str]:
        """The loaded models, each once, least recently used first."""
        return list(dict.fromkeys(n for n, _ in self._models))

    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def renew_locks(self) -> None:
        """Fresh locks, for a forked child (a ZeroGPU worker): a lock another thread held at the fork stays held
        there forever, since that thread does not exist in the child. The loaded models stay."""
        self._lock = threading.Lock()
        self._loading = {}
        for loaded in self._models.values():
            loaded.lock = threading.Lock()

    def get(self, name: str, folder_fn: Callable[[], str | Path], copy: int = 0) -> Loaded:
        """The cached model (that copy of it), or ``loader(name, folder_fn(), device)`` once even if several threads ask."""
        key = (name, copy)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread loads; the others wait for it and find it cached
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            start = time.perf_counter()
            loaded = self.loader(name, folder_fn(), self.device)
            seconds, mb = time.perf_counter() - start, loaded.nbytes / 2**20
            _logger.info("loaded %s (copy %d) on %s in %.2f s (%.1f MB)", name, copy, loaded.device, seconds, mb)
            with self._lock:
                self._models[key] = loaded
                while len(self._models) > 1 and self.nbytes() > self.max_bytes:
                    evicted, _ = self._models.popitem(last=False)
                    _logger.info("evicted %s (copy %d) from the model cache", *evicted)
            return loaded
