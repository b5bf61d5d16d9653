"""The checkpoints the app ships with, which the app tests use as they are (never retrained here)."""

from __future__ import annotations

import pytest

from brainmri.models.catalog import ModelSource, discover
from brainmri.models.checkpoint import OOD_CONFIG
from brainmri.models.registry import DEFAULT_CLASSIFIER
from brainmri.settings import checkpoint_dir

SHIPPED = [DEFAULT_CLASSIFIER, "simple_cnn_7"]  # the default's classifier (the OOD judge) first


def require_shipped() -> dict[str, ModelSource]:
    """The local model sources; fails naming what is missing and the command that makes it."""
    sources = discover(hub=False)
    missing = [n for n in SHIPPED if not sources[n].available]
    if missing:
        pytest.fail(f"shipped checkpoint(s) {missing} missing under {checkpoint_dir()}: train them (README, training section)")
    # The default model judges every upload (brainmri.serving.Predictor's ood_model): only it needs OOD statistics.
    no_ood = [n for n in SHIPPED[:1] if not (checkpoint_dir() / n / OOD_CONFIG).is_file()]
    if no_ood:
        folders = " ".join(f"checkpoints/{n}" for n in no_ood)
        pytest.fail(f"{no_ood} have no OOD statistics: python -m train.ood fit {folders} --data DATA")
    return sources
