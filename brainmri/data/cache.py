"""Data work that every model of a sweep would repeat, done once while a cache is open.

    with open_cache():
        for cfg in configs:
            fit(cfg)  # later models reuse the first one's thumbnails, split, decoded tensors, test subset

Inside :func:`open_cache`, :func:`memo` and the drop-in functions below keep their results,
keyed by what they were computed from (the image sources, the preprocessing); outside it they
compute afresh, exactly like the functions they stand in for, so a single training run is
unchanged. Decoding and thumbnails run on a thread pool: Pillow releases the GIL while it
decodes and resizes, so a 16-core machine decodes the data set in about a second.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import numpy as np
import torch

from brainmri.data import duplicates as _duplicates
from brainmri.data import preprocess as _preprocess
from brainmri.data.records import ImageRecords
from brainmri.runtime import available_cpus

T = TypeVar("T")

_STORE: ContextVar[tuple[dict, frozenset[str] | None] | None] = ContextVar("brainmri_data_cache", default=None)
_CHUNK = 256  # images per thread-pool task


@contextmanager
def open_cache(kinds: Collection[str] | None = None) -> Iterator[dict]:
    """Keep what :func:`memo` computes until the block ends: every kind of work, or only ``kinds`` (a key's first
    item: "thumbnails", "split", "unseen", "decoded", "logits"). A long-lived cache keeps the small kinds alone: a
    test session keeps each split it cuts (seconds each), not every decoded data set (hundreds of MB each)."""
    store: dict = {}
    token = _STORE.set((store, None if kinds is None else frozenset(kinds)))
    try:
        yield store
    finally:
        _STORE.reset(token)


def memo(key: tuple, make: Callable[[], T]) -> T:
    """``make()``, remembered under ``key`` while a cache that keeps its kind (``key[0]``) is open."""
    opened = _STORE.get()
    if opened is None or (opened[1] is not None and key[0] not in opened[1]):
        return make()
    store = opened[0]
    if key not in store:
        store[key] = make()
    return store[key]


def source_key(records: ImageRecords) -> tuple:
    """What identifies a set of records: its sources, in order."""
    return tuple(records.sources)


def _chunked(fn: Callable[[ImageRecords], T], records: ImageRecords) -> list[T]:
    """``fn`` over consecutive chunks of ``records`` on a thread pool, results in order."""
    chunks = [records.subset(range(i, min(i + _CHUNK, len(records)))) for i in range(0, len(records), _CHUNK)]
    if len(chunks) <= 1:
        return [fn(records)]
    with ThreadPoolExecutor(max_workers=min(len(chunks), available_cpus())) as pool:
        return list(pool.map(fn, chunks))


def thumbnails(records: ImageRecords, size: int = _duplicates.THUMB) -> np.ndarray:
    """:func:`brainmri.data.duplicates.thumbnails`, threaded and memoised."""
    return memo(
        ("thumbnails", source_key(records), size),
        lambda: np.concatenate(_chunked(lambda r: _duplicates.thumbnails(r, size), records)),
    )


def _preprocessing_key(cfg: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in cfg.items()))


def decode_records(records: ImageRecords, cfg: dict, desc: str = "decoding") -> torch.Tensor:
    """:func:`brainmri.data.preprocess.decode_records` (uint8 (N, 3, H, W)), threaded and memoised."""
    return memo(
        ("decoded", source_key(records), _preprocessing_key(cfg)),
        lambda: torch.cat(_chunked(lambda r: _preprocess.decode_records(r, cfg, desc), records)),
    )
