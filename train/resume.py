"""The trainers' --resume state, in ``<out>/resume``: written after each epoch and swapped in atomically, so a kill at
any moment leaves the last finished epoch whole (tests/test_resume.py), and removed once the run's folder is written.

- train.train (the classifiers) carries a :class:`State` and accelerate's own state (:func:`save_resume`,
  :func:`load_resume`): ``resume/epoch_N/`` folders and a ``resume/latest`` pointer.
- train.segment and train.multitask carry a plain dict and the model's and optimizer's state dicts in one
  ``resume/state.pt`` (:func:`save_model_state`, :func:`load_model_state`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only
    from accelerate import Accelerator
    from timm.utils import ModelEmaV3
    from torch import nn
    from torch.optim import Optimizer

_logger = logging.getLogger(__name__)

RESUME = "resume"  # the folder under a run's output folder
LATEST = "latest"  # the file in it naming the last finished epoch's folder, swapped atomically
STATE_PT = "state.pt"  # train.segment's and train.multitask's one file in it


def clear_resume(out: Path) -> None:
    """Remove the run's resume state: once its checkpoint folder is complete, nothing is left to resume."""
    shutil.rmtree(out / RESUME, ignore_errors=True)


def save_model_state(out: Path, model: nn.Module, optimizer: Optimizer, state: dict, ema: ModelEmaV3 | None = None) -> None:
    """``torch.save({"model", "optimizer", "state"})`` into ``<out>/resume/state.pt`` (and ``"ema"``, the moving
    average's weights, when one is given), written beside it first and renamed over it (atomic: a kill mid-write
    leaves the last epoch whole)."""
    folder = out / RESUME
    folder.mkdir(parents=True, exist_ok=True)
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state}
    if ema is not None:
        saved["ema"] = ema.state_dict()
    torch.save(saved, folder / "state.tmp")
    (folder / "state.tmp").replace(folder / STATE_PT)


def has_model_state(out: Path) -> bool:
    """Whether ``out`` holds a :func:`save_model_state` to continue from: ``--resume`` on a fresh folder starts
    afresh, ImageNet weights included."""
    return (Path(out) / RESUME / STATE_PT).is_file()


def load_model_state(out: Path, model: nn.Module, optimizer: Optimizer, ema: ModelEmaV3 | None = None) -> dict | None:
    """Load :func:`save_model_state`'s model and optimizer state into ``model`` and ``optimizer`` (and the moving
    average into ``ema``) and return its ``state`` dict; None when ``out`` has nothing to resume."""
    path = out / RESUME / STATE_PT
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if ema is not None:
        if "ema" not in saved:
            raise ValueError(f"--resume with --ema-decay: {path} was saved without a moving average")
        ema.load_state_dict(saved["ema"])
    return saved["state"]


@dataclass
class State:
    """What is carried from epoch to epoch, and saved for --resume."""

    epoch: int = 0  # epochs finished
    best_epoch: int = 0
    best_key: tuple = (-1.0, 0.0)  # (val accuracy, -val loss): higher is better
    stale: int = 0  # epochs since the best one
    plateau: dict = field(default_factory=dict)  # the plateau schedule's state (train.schedule.plateau_state)
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    epochs_planned: int = 0  # epochs the schedule spans: cfg.epochs, or fewer to fit time_budget_s (0: not planned yet)
    wall_seconds: float = 0.0  # epochs' wall time, validation and saving included: what the time budget counts
    peak_memory_gib: float = 0.0  # most GPU memory allocated while training, data kept on the device included
    stopped: str = ""  # why training ended: "epochs", "early stop" or "time budget"


def save_resume(out: Path, accelerator: Accelerator, state: State) -> None:
    """Everything --resume needs, written after each epoch into a new folder; then the ``latest`` pointer is
    swapped atomically, so a kill at any moment (even mid-write) leaves the last finished epoch whole."""
    resume = out / RESUME
    folder = resume / f"epoch_{state.epoch}"
    accelerator.save_state(folder)
    (folder / "state.json").write_text(json.dumps(state.__dict__, default=list))
    (resume / f"{LATEST}.tmp").write_text(folder.name)
    os.replace(resume / f"{LATEST}.tmp", resume / LATEST)
    for old in resume.glob("epoch_*"):
        if old != folder:
            shutil.rmtree(old)


def has_resume(out: Path) -> bool:
    """Whether ``out`` holds a finished epoch's --resume state (its ``latest`` pointer)."""
    return (out / RESUME / LATEST).is_file()


def load_resume(out: Path, accelerator: Accelerator) -> State:
    resume = out / RESUME
    if not has_resume(out):
        raise ValueError(f"--resume: nothing to resume in {resume}")
    folder = resume / (resume / LATEST).read_text().strip()
    accelerator.load_state(folder)
    saved = json.loads((folder / "state.json").read_text())
    state = State(**{k: v for k, v in saved.items() if k in State.__dataclass_fields__})  # older runs' plateau_factor too
    state.best_key = tuple(state.best_key)
    _logger.info("resuming after epoch %d (best so far: epoch %d)", state.epoch, state.best_epoch)
    return state
