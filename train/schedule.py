"""Learning-rate schedules from timm (``timm.scheduler``), for both trainers: linear warm-up, then cosine to zero,
or the plateau rule; and the moving average's decay (timm ``ModelEmaV3``), fixed or warmed up.

timm's schedulers are functions of the update count, told it after each optimizer step (``step_update``), so
``--resume`` needs nothing but the count: the cosine one carries no state. The plateau one (validation accuracy,
stepped per epoch) does: :func:`plateau_state` / :func:`load_plateau_state` carry it in the resume files, which
timm's own checkpoints do not.
"""

from __future__ import annotations

import warnings

from timm.scheduler import CosineLRScheduler, PlateauLRScheduler
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim import Optimizer


def cosine(optimizer: Optimizer, lr: float, warmup_steps: int, total_steps: int) -> CosineLRScheduler:
    """Linear warm-up from ``lr / warmup_steps`` over ``warmup_steps`` updates, then cosine to zero at ``total_steps``.

    Stepped with ``step_update(updates_done)`` after each optimizer step. Every parameter group starts its warm-up at
    that same rate (timm takes one ``warmup_lr_init``) and climbs to its own: a group at a fraction of ``lr``
    (train.multitask's ``--encoder-lr-scale`` below 1) runs its first updates above its share, at most ``lr`` for one
    update when there is no warm-up. The shipped multi-task model used a scale of 1.
    """
    warm = max(1, warmup_steps)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps - warm),
        lr_min=0.0,
        warmup_t=warm,
        warmup_lr_init=lr / warm,
        warmup_prefix=True,  # the cosine starts where the warm-up ends
        t_in_epochs=False,
    )


def respan(scheduler: CosineLRScheduler, total_steps: int) -> None:
    """Let a cosine schedule end at ``total_steps`` instead (a time budget fixes the epochs after the first one)."""
    scheduler.t_initial = max(1, total_steps - scheduler.warmup_t)


def plateau(optimizer: Optimizer, warmup_epochs: int) -> PlateauLRScheduler:
    """The rate halves after two epochs without a better validation accuracy, after ``warmup_epochs`` of warm-up.

    Stepped with ``step(epochs_done, val_accuracy)`` after each epoch's validation.
    """
    with warnings.catch_warnings():  # deprecated for not saving its state: plateau_state() saves it here
        warnings.simplefilter("ignore", FutureWarning)
        lr = optimizer.param_groups[0]["lr"]
        warm = {"warmup_t": warmup_epochs, "warmup_lr_init": lr / (warmup_epochs + 1)}
        return PlateauLRScheduler(optimizer, decay_rate=0.5, patience_t=1, threshold=0.0, mode="max", **warm)


def plateau_state(scheduler: Scheduler) -> dict:
    """What --resume needs of a plateau schedule (best accuracy, epochs without it...); {} for the stateless cosine."""
    inner = getattr(scheduler, "lr_scheduler", None)
    return {} if inner is None else {k: v for k, v in inner.state_dict().items() if k != "optimizer"}


def load_plateau_state(scheduler: Scheduler, state: dict) -> None:
    if state and getattr(scheduler, "lr_scheduler", None) is not None:
        scheduler.lr_scheduler.load_state_dict(state)


def moving_average(model: nn.Module, decay: float, warmup: bool = False) -> ModelEmaV3 | None:
    """An exponential moving average of ``model``'s weights, or None when ``decay`` is 0.

    A fixed decay of 0.999 keeps 0.999**n of the starting weights after n updates: 40% after 900, which on a 4,900-image
    set is six epochs of an average still close to ImageNet's start (docs/training.md). With ``warmup`` the decay is
    timm's ``1 - (1 + n) ** (-2/3)`` until it reaches ``decay``: the average spans about ``(1 + n) ** (2/3)`` updates
    (94 after 900), and ``decay`` caps it. Stepped by :func:`follow`.
    """
    return ModelEmaV3(model, decay=decay, use_warmup=warmup) if decay else None


def follow(ema: ModelEmaV3 | None, model: nn.Module, updates_done: int) -> None:
    """Fold the weights after ``updates_done`` optimizer steps into ``ema``. A fixed decay is told no count, so runs
    without the warm-up train exactly as before it existed (told a count, timm takes the first update whole)."""
    if ema is not None:
        ema.update(model, step=updates_done if ema.use_warmup else None)
