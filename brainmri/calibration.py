"""Temperature scaling: one scalar T per model, fitted on its validation split.

Calibrated probabilities are ``softmax(logits / T)``. Dividing by T changes no prediction
(the arg max is the same), only how confident the model says it is: T > 1 softens an
over-confident model. T is stored in ``calibration.json`` in the checkpoint folder,
covered by the sha256 manifest like the weights (Guo et al. 2017, "On Calibration of
Modern Neural Networks").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from brainmri.models.checkpoint import CALIBRATION, verify_checkpoint, write_manifest

# Search range of T; beyond it a model is so far off that a temperature is not the fix.
T_MIN, T_MAX = 0.05, 20.0


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(labels) != len(logits):
        raise ValueError(f"need (N, C) logits and (N,) labels with N > 0, got {logits.shape} and {labels.shape}")
    return logits, labels


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)``; logits (N, C), labels (N,)."""
    logits, labels = _check(logits, labels)
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [T_MIN, T_MAX] that minimises the NLL of ``softmax(logits / T)``.

    Searched over log T (bounded Brent), where the NLL is smooth and T stays positive.

    Args:
        logits: (N, C) validation logits.
        labels: (N,) true class indices.
    """
    logits, labels = _check(logits, labels)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def calibrated_probs(logits: np.ndarray | torch.Tensor, temperature: float) -> np.ndarray | torch.Tensor:
    """``softmax(logits / temperature)`` over the last axis; a tensor stays a tensor, an array an array."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if isinstance(logits, torch.Tensor):
        return (logits.float() / temperature).softmax(dim=-1)
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


def save_temperature(folder: str | Path, temperature: float, **info) -> Path:
    """Write ``calibration.json`` (T plus ``info``, e.g. what it was fitted on) and add it to the manifest.

    The folder is verified first, so re-writing the manifest cannot bless altered weights.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    folder = Path(folder)
    verify_checkpoint(folder)
    body = {"temperature": float(temperature), "method": "temperature scaling: probs = softmax(logits / temperature)", **info}
    path = folder / CALIBRATION
    path.write_text(json.dumps(body, indent=2) + "\n")
    write_manifest(folder)
    return path


def load_temperature(folder: str | Path) -> float:
    """The checkpoint's fitted temperature; 1.0 (uncalibrated) when it has no ``calibration.json``.

    Its sha256 is checked by ``checkpoint.verify_checkpoint`` (and so by ``load_checkpoint``).
    """
    path = Path(folder) / CALIBRATION
    if not path.is_file():
        return 1.0
    try:
        temperature = json.loads(path.read_text())["temperature"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {folder}: {CALIBRATION} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(temperature, (int, float)) or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"checkpoint {folder}: {CALIBRATION} has an invalid temperature {temperature!r}")
    return float(temperature)
