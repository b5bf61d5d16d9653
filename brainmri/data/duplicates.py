"""The one home of the duplicate rule: exact, near and mirrored twins, within and across splits.

Exact: identical bytes (sha256). Near: compared as 32 x 32 greyscale, a mean absolute
difference of at most ``threshold`` grey levels (2 by default, as in the data README).
Mirrored: the same comparison against the left-right mirror image. Training flips images at
random, so a mirrored twin *is* a training image: :func:`twin_pairs` finds twins in both
orientations, and the split (brainmri.data.split) and the unseen Testing subset
(:func:`unseen_indices`) both use it. An image is never its own twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from brainmri.data.records import ImageRecords, sha256

THUMB = 32  # side of the greyscale thumbnails twins are compared at
NEAR_THRESHOLD = 2.0  # grey levels, mean absolute difference at THUMB x THUMB


def thumbnails(records: ImageRecords, size: int = THUMB) -> np.ndarray:
    """(N, size*size) float32 greyscale thumbnails."""
    out = np.empty((len(records), size * size), dtype=np.float32)
    for i in tqdm(range(len(records)), desc="thumbnails", leave=False, mininterval=2):
        im = records.open(i).convert("L").resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(im, dtype=np.float32).ravel()
    return out


def _coarse(thumbs: np.ndarray, size: int = THUMB, factor: int = 4) -> torch.Tensor:
    t = torch.from_numpy(thumbs).view(-1, size // factor, factor, size // factor, factor)
    return t.mean(dim=(2, 4)).flatten(1)


def near_pairs(a: np.ndarray, b: np.ndarray | None = None, threshold: float = NEAR_THRESHOLD) -> list[tuple[int, int, float]]:
    """Pairs (i, j, distance) with mean |a_i - b_j| <= threshold; within ``a`` when ``b`` is None.

    Block averages are a contraction in L1, so the distance of 8 x 8 block means is a lower
    bound of the full one: it prunes almost every pair before the exact 32 x 32 check.
    """
    same = b is None
    b = a if same else b
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ca, cb = _coarse(a), _coarse(b)
    pairs = []
    for start in range(0, len(a), 512):
        lower = torch.cdist(ca[start : start + 512], cb, p=1) / ca.shape[1]  # (chunk, len(b))
        for i, j in (lower <= threshold).nonzero().tolist():
            i += start
            if same and j <= i:
                continue
            d = (ta[i] - tb[j]).abs().mean().item()
            if d <= threshold:
                pairs.append((i, j, d))
    return pairs


def mirrored(thumbs: np.ndarray, size: int = THUMB) -> np.ndarray:
    """The thumbnails of the left-right mirror images: (N, size*size) -> (N, size*size)."""
    return np.ascontiguousarray(thumbs.reshape(-1, size, size)[:, :, ::-1].reshape(len(thumbs), -1))


def twin_pairs(a: np.ndarray, b: np.ndarray | None = None, threshold: float = NEAR_THRESHOLD) -> list[tuple[int, int, float, bool]]:
    """Twins (i, j, distance, mirrored) in either orientation; within ``a`` (i < j) when ``b`` is None.

    ``mirrored`` is True for a pair that is a twin only once one side is mirrored; a pair that is
    a twin as is is listed once, as is.
    """
    same = b is None
    b = a if same else b
    as_is = {(i, j): d for i, j, d in near_pairs(a, None if same else b, threshold)}
    flipped: dict[tuple[int, int], float] = {}
    for i, j, d in near_pairs(a, mirrored(b), threshold):
        if same and i == j:
            continue  # a symmetric slice lies near its own mirror image: that is not a twin
        key = (min(i, j), max(i, j)) if same else (i, j)
        if key not in as_is:
            flipped[key] = min(d, flipped.get(key, d))
    pairs = [(i, j, d, False) for (i, j), d in as_is.items()] + [(i, j, d, True) for (i, j), d in flipped.items()]
    return sorted(pairs)


def unseen_indices(query: np.ndarray, seen: np.ndarray, threshold: float = NEAR_THRESHOLD) -> np.ndarray:
    """Indices of the ``query`` thumbnails with no exact, near or mirrored twin among ``seen``: what a model trained
    on ``seen`` has not seen (Testing against Training, a validation split against its train part)."""
    twins = {i for i, _, _, _ in twin_pairs(query, seen, threshold)}
    return np.array([i for i in range(len(query)) if i not in twins], dtype=int)


def exact_groups(records: ImageRecords) -> dict[str, list[int]]:
    """sha256 -> indices, for hashes shared by two or more images."""
    by_hash: dict[str, list[int]] = {}
    for i in range(len(records)):
        by_hash.setdefault(sha256(records.read_bytes(i)), []).append(i)
    return {h: idx for h, idx in by_hash.items() if len(idx) > 1}


def connected_groups(n: int, pairs: list[tuple]) -> np.ndarray:
    """Group id per item, joining the pairs (union-find)."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in pairs:
        parent[find(i)] = find(j)
    roots = [find(i) for i in range(n)]
    _, ids = np.unique(roots, return_inverse=True)
    return ids


@dataclass
class Audit:
    """What :func:`audit` found; indices refer to the train and test records. Pairs are (i, j, distance, mirrored)."""

    exact_groups: list[list[tuple[str, int]]]  # each: [(split, index), ...]
    near_train_train: list[tuple[int, int, float, bool]]
    near_test_test: list[tuple[int, int, float, bool]]
    near_test_train: list[tuple[int, int, float, bool]]
    train_groups: np.ndarray  # (N_train,) group id: twins, mirrored ones included, share one
    test_unseen: np.ndarray  # indices of Testing images with no twin in Training in either orientation
    near_threshold: float = NEAR_THRESHOLD  # the mean absolute difference the near pairs were found under

    def summary(self, test_labels: np.ndarray | None = None, class_names: list[str] | None = None) -> dict:
        spans = [g for g in self.exact_groups if len({s for s, _ in g}) > 1]
        as_is = {i for i, _, _, m in self.near_test_train if not m}
        train_as_is = {k for i, j, _, m in self.near_train_train if not m for k in (i, j)}
        train_any = {k for i, j, _, _ in self.near_train_train for k in (i, j)}
        out = {
            "exact_groups": len(self.exact_groups),
            "exact_files": sum(len(g) for g in self.exact_groups),
            "exact_groups_across_splits": len(spans),
            "test_with_exact_twin_in_train": len({i for g in spans for s, i in g if s == "test"}),
            "near_pairs_train_train": len(self.near_train_train),
            "near_pairs_test_test": len(self.near_test_test),
            "test_with_near_twin_in_train": len(as_is),
            "test_with_mirrored_twin_in_train_only": len({i for i, _, _, _ in self.near_test_train} - as_is),
            "train_with_near_twin_in_train": len(train_as_is),
            "train_with_mirrored_twin_in_train_only": len(train_any - train_as_is),
            "test_unseen": int(len(self.test_unseen)),
            "near_threshold": self.near_threshold,
        }
        if test_labels is not None and class_names is not None:
            counts = np.bincount(test_labels[self.test_unseen], minlength=len(class_names))
            out["test_unseen_per_class"] = {c: int(n) for c, n in zip(class_names, counts)}
        return out


def audit(train: ImageRecords, test: ImageRecords, threshold: float = NEAR_THRESHOLD) -> Audit:
    """Find exact, near and mirrored twins within and across the two splits."""
    both = ImageRecords(train.sources + test.sources, np.concatenate([train.labels, test.labels]), train.class_names)
    n = len(train)
    exact = [[("train", i) if i < n else ("test", i - n) for i in idx] for idx in exact_groups(both).values()]
    thumbs_train, thumbs_test = thumbnails(train), thumbnails(test)
    tt = twin_pairs(thumbs_train, threshold=threshold)
    ee = twin_pairs(thumbs_test, threshold=threshold)
    et = twin_pairs(thumbs_test, thumbs_train, threshold=threshold)
    unseen = np.array(sorted(set(range(len(test))) - {i for i, _, _, _ in et}), dtype=int)
    return Audit(exact, tt, ee, et, connected_groups(n, tt), unseen, threshold)
