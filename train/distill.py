"""Knowledge distillation from a finished classifier folder (``--teacher``), with its soft targets fixed once.

    python -m train.train --model tf_efficientnet_lite0 --pretrained --teacher checkpoints/tf_efficientnet_lite2 ...
    python -m train.multitask ... --teacher checkpoints/tf_efficientnet_lite2,checkpoints/tf_efficientnet_lite0

The teacher's softmax on each training image (no augmentation, through its own preprocessing: 260 px for Lite2)
is computed once before the first epoch (a resumed ``train.multitask`` run reads it back from its resume folder),
and the student learns from ``distill_weight`` of it beside the labels.
Offline, not a teacher forward each step: on 2 CPU cores Lite2's forward would cost the student's training step
again, where one pass over the 4,900 training images takes minutes. The softmax is taken at T = 1, the teacher's
own training distribution, so the targets keep what its label smoothing left on the other classes. Several
teachers, comma-separated, teach as one: the mean of their softmaxes, each through its own preprocessing.

The teacher must have been cut by this run's split: weights that trained on one of this run's validation scans
would carry it into the student (:func:`check_same_validation`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from brainmri.data.records import ImageRecords, relative_path
from brainmri.data.split import read_val_split
from brainmri.models.checkpoint import MANIFEST, METRICS, WEIGHTS, label_names, load_checkpoint
from train.evaluate import predict_logits

_logger = logging.getLogger(__name__)
TARGETS = "teacher_targets.safetensors"  # kept in a run's resume folder


def teacher_folders(teacher: str | Path) -> list[Path]:
    """``--teacher``'s folders: one, or several separated by commas (they teach as one, by the mean of their softmaxes)."""
    folders = [Path(part.strip()) for part in str(teacher).split(",") if part.strip()]
    if not folders:
        raise ValueError("--teacher names no folder")
    return folders


def check_same_validation(folder: str | Path, val: ImageRecords, data: str, what: str = "--teacher", several: bool = True) -> None:
    """ValueError unless ``folder``'s val_split.txt (with ``several``, each of a comma-separated list's) lists
    exactly ``val``'s images: a model trained on any of them would leak it."""
    ours = sorted(relative_path(val.name(i), data) for i in range(len(val)))
    for one in teacher_folders(folder) if several else [Path(folder)]:
        theirs = read_val_split(one)
        if theirs is None or sorted(theirs) != ours:
            raise ValueError(
                f"{what} {one}: its val_split.txt is not this run's validation split (the same --split, --val-fraction "
                "and --seed on the same data); its weights may have trained on this run's validation images"
            )


def teacher_targets(teacher: str | Path, train: ImageRecords, batch_size: int | None = None, cache: Path | None = None) -> torch.Tensor:
    """(N, C) float32: the teacher's softmax (T = 1) on each of ``train``'s images, in their order; for several
    teachers (comma-separated), the mean of theirs. With ``cache`` (a run's resume folder) they are kept there and
    read back by a resumed run if every teacher's manifest (its weights' sha256) and the images are the same; a
    teacher folder without a manifest is never cached. A resume then skips minutes."""
    folders = teacher_folders(teacher)
    key = _targets_key(folders, train) if cache is not None else None
    kept = _read_targets(cache / TARGETS, key) if key else None
    if kept is not None:
        _logger.info("soft targets read back from %s", cache / TARGETS)
        return kept
    soft = torch.stack([_softmax_on(folder, train, batch_size) for folder in folders]).mean(dim=0)
    agree = (soft.argmax(dim=1) == torch.from_numpy(train.labels)).float().mean().item()
    _logger.info("the teacher agrees with %.2f%% of the training labels", 100 * agree)
    if key:
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / (TARGETS + ".tmp")  # renamed once whole, as train.resume writes its state
        save_file({"soft": soft.contiguous()}, partial, metadata={"key": key})
        partial.replace(cache / TARGETS)
    return soft


def _targets_key(folders: list[Path], train: ImageRecords) -> str | None:
    """What the soft targets depend on: each teacher's manifest (its weights' sha256) and the images, in order; None
    when a teacher has no manifest (nothing to tell its weights by)."""
    digest = hashlib.sha256()
    for folder in folders:
        if not (folder / MANIFEST).is_file():
            return None
        digest.update((folder / MANIFEST).read_bytes())
    for i in range(len(train)):
        digest.update(train.name(i).encode())
    return digest.hexdigest()


def _read_targets(path: Path, key: str) -> torch.Tensor | None:
    """The kept targets if ``path`` holds them for ``key``; None when absent, for other inputs, or unreadable."""
    try:
        with safe_open(path, framework="pt") as f:
            return f.get_tensor("soft") if (f.metadata() or {}).get("key") == key else None
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001  (a truncated or foreign file, several error types: computed again)
        _logger.info("soft targets in %s unreadable (%s): computed again", path, str(e).splitlines()[0][:200])
        return None


def _softmax_on(folder: Path, train: ImageRecords, batch_size: int | None) -> torch.Tensor:
    if label_names(folder) != train.class_names:
        raise ValueError(f"--teacher {folder}: its classes {label_names(folder)} are not the data's {train.class_names}")
    teacher = load_checkpoint(folder).eval()
    _logger.info("soft targets from %s on %d training images", folder.name, len(train))
    return torch.from_numpy(predict_logits(teacher, train, batch_size)).softmax(dim=1)


def describe_teacher(teacher: str | Path, weight: float) -> str:
    """The card's line on the teacher: which model, its weights' digest (the folder may be replaced later) and its
    validation accuracy on the very scans the student is chosen on; for several, each, and that they teach as one."""
    folders = teacher_folders(teacher)
    if len(folders) > 1:
        each = " and ".join(_describe_one(folder) for folder in folders)
        return f"the mean of {len(folders)} teachers' softmaxes on each training image, weight {weight:g} of the loss: {each}"
    return f"{_describe_one(folders[0])}: its softmax on each training image, weight {weight:g} of the loss"


def _describe_one(folder: Path) -> str:
    digest = json.loads((folder / MANIFEST).read_text()).get(WEIGHTS, "")[:12]
    validation = json.loads((folder / METRICS).read_text()).get("validation", {}).get("accuracy")
    scored = f", validation {validation:.2%}" if validation is not None else ""
    return f"{folder.name} (weights sha256 {digest}...{scored})"


def distill_loss(logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor, weight: float, label_smoothing: float) -> torch.Tensor:
    """(1 - weight) x cross-entropy on the (smoothed) labels + weight x cross-entropy on the teacher's probabilities.

    logits: (B, C) the student's, bf16 under autocast; labels: (B,); soft: (B, C) rows summing to 1. Both losses in
    float32: the teacher's probabilities rounded to bf16 would be 0.4% off and no longer sum to 1."""
    logits = logits.float()
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return (1 - weight) * hard + weight * F.cross_entropy(logits, soft.float())
