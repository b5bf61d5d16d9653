"""train.schedule: the learning rate's warm-up and cosine, and the moving average's decay, fixed or warmed up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.schedule import cosine, follow, moving_average


def _step_to(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)


def test_the_rate_warms_up_then_falls_to_zero():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = cosine(optimizer, 1e-3, warmup_steps=10, total_steps=100)
    rates = []
    for done in range(1, 101):
        scheduler.step_update(done)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] < rates[8] < 1e-3 * 1.0001  # rising through the warm-up
    assert max(rates) == pytest.approx(1e-3)
    assert rates[-1] == pytest.approx(0.0, abs=1e-9)


def test_no_decay_means_no_average():
    assert moving_average(nn.Linear(2, 2), 0.0) is None
    follow(None, nn.Linear(2, 2), 1)  # nothing to follow: no error


def test_a_fixed_decay_keeps_its_start_for_as_long_as_before():
    """Without the warm-up every update, the first included, takes decay of the average and 1 - decay of the weights."""
    model = nn.Linear(2, 2)
    _step_to(model, 0.0)
    ema = moving_average(model, 0.9)
    _step_to(model, 1.0)
    follow(ema, model, 1)
    assert ema.module.weight.flatten().tolist() == pytest.approx([0.1] * 4)


def test_the_warmed_up_decay_starts_at_the_weights_and_grows_to_its_cap():
    model = nn.Linear(2, 2)
    _step_to(model, 0.0)
    ema = moving_average(model, 0.999, warmup=True)
    _step_to(model, 1.0)
    follow(ema, model, 1)
    assert ema.module.weight.flatten().tolist() == pytest.approx([1.0] * 4)  # the start is dropped at once
    # After 912 updates (six epochs of the multi-task run) the start's share is small, where 0.999 keeps 40% of it.
    decays = [ema.get_decay(n) for n in range(2, 913)]
    start_share = torch.tensor(decays, dtype=torch.float64).prod().item()
    assert start_share < 0.01 and 0.999**912 > 0.35
    assert decays == sorted(decays) and ema.get_decay(10**7) == 0.999  # growing, capped at the decay asked for
