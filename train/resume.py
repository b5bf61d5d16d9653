"""What train.train carries from epoch to epoch (:class:`State`), and the --resume folder that keeps it: written
after each epoch with accelerate's own state, swapped in atomically, so a kill at any moment leaves the last finished
epoch whole (tests/test_resume.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

_logger = logging.getLogger(__name__)


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


def save_resume(out: Path, model, accelerator, state: State) -> None:
    """Everything --resume needs, written after each epoch into a new folder; then the ``latest`` pointer is
    swapped atomically, so a kill at any moment (even mid-write) leaves the last finished epoch whole."""
    resume = out / "resume"
    folder = resume / f"epoch_{state.epoch}"
    accelerator.save_state(folder)
    (folder / "state.json").write_text(json.dumps(state.__dict__, default=list))
    (resume / "latest.tmp").write_text(folder.name)
    os.replace(resume / "latest.tmp", resume / "latest")
    for old in resume.glob("epoch_*"):
        if old != folder:
            shutil.rmtree(old)


def load_resume(out: Path, accelerator) -> State:
    resume = out / "resume"
    if not (resume / "latest").is_file():
        raise ValueError(f"--resume: nothing to resume in {resume}")
    folder = resume / (resume / "latest").read_text().strip()
    accelerator.load_state(folder)
    saved = json.loads((folder / "state.json").read_text())
    state = State(**{k: v for k, v in saved.items() if k in State.__dataclass_fields__})  # older runs' plateau_factor too
    state.best_key = tuple(state.best_key)
    _logger.info("resuming after epoch %d (best so far: epoch %d)", state.epoch, state.best_epoch)
    return state
