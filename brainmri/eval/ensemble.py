"""An ensemble of the available models: the mean of their calibrated probabilities.

Each member sees the image through its own preprocessing (input sizes differ), so the
caller runs each model and hands over ``(logits, temperature)`` pairs; averaging
calibrated probabilities keeps an over-confident member from outvoting the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from brainmri.calibration import calibrated_probs


def ensemble_probs(members: Sequence[tuple[np.ndarray | torch.Tensor, float]]) -> np.ndarray | torch.Tensor:
    """Mean of ``softmax(logits / T)`` over the members.

    Args:
        members: one ``(logits, temperature)`` per model; logits (N, C) or (C,), the same
            shape for every member.
    Returns:
        Probabilities of that shape: a tensor if the first member's logits are one, else an array.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(logits.shape) for logits, _ in members}
    if len(shapes) > 1:
        raise ValueError(f"ensemble members disagree on the logits' shape: {sorted(shapes)}")
    return mean_probs([calibrated_probs(logits, temperature) for logits, temperature in members])


def mean_probs(probs: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray | torch.Tensor:
    """Mean of already-calibrated probabilities (what the app's Compare tab has in hand)."""
    if isinstance(probs[0], torch.Tensor):
        return torch.stack([torch.as_tensor(p, dtype=probs[0].dtype, device=probs[0].device) for p in probs]).mean(dim=0)
    return np.mean([np.asarray(p) for p in probs], axis=0)
