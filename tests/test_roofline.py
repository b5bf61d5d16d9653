"""FLOP and byte counting of reports.roofline, and the bound it derives, on small CPU inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from brainmri.models.registry import create_model
from reports.roofline import (
    H100_SXM,
    Peak,
    TrafficCounter,
    TrainCost,
    bound_img_per_s,
    flop_counter,
    load_costs,
    measure_peak,
    roofline_row,
    training_cost,
    write_csv,
)


def _conv_train_flops(conv: nn.Conv2d, x: torch.Tensor, counter) -> int:
    with counter:
        conv(x).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("groups", [1, 8, 32])
def test_conv_backward_costs_two_forwards_for_any_groups(groups):
    # Forward: 2 * (output elements) * (input channels per group) * k * k. Backward (input and weight
    # gradients): the same again each, so a training step is three forwards.
    conv = nn.Conv2d(32, 32, 3, padding=1, groups=groups)
    x = torch.randn(2, 32, 16, 16, requires_grad=True)
    forward = 2 * (2 * 32 * 16 * 16) * (32 // groups) * 9
    assert _conv_train_flops(conv, x, flop_counter()) == 3 * forward


def test_dense_conv_agrees_with_torch_own_formula():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    assert _conv_train_flops(conv, x, flop_counter()) == _conv_train_flops(conv, x, FlopCounterMode(display=False))


def test_efficientnet_b0_training_flops_are_about_three_forwards():
    # EfficientNet-B0 is mostly depthwise and 1x1 convolutions. Its forward is counted right by torch;
    # a training step is three forwards less the stem's input gradient, which nobody asks for.
    cost = training_cost("efficientnet_b0", size=96)
    model = create_model("efficientnet_b0").train()
    with FlopCounterMode(display=False) as fwd:
        model(torch.randn(1, 3, 96, 96))
    forward = fwd.get_total_flops()
    assert 2.8 * forward < cost.flops_per_image <= 3 * forward
    assert cost.saved_bytes_per_image > 0 and cost.bytes_per_image > 4 * cost.saved_bytes_per_image


def test_traffic_counts_inputs_and_outputs_and_skips_views():
    a, b = torch.randn(1000), torch.randn(1000)
    with TrafficCounter() as traffic:
        c = a + b  # reads 2 x 1000, writes 1000 elements, 2 bytes each as bf16
    assert traffic.bytes == 3 * 1000 * 2
    with TrafficCounter() as traffic:
        c.view(10, 100).t()
    assert traffic.bytes == 0


def test_bound_takes_the_slower_of_compute_and_memory():
    cost = TrainCost("m", 224, 10, flops_per_image=4e9, bytes_per_image=1e8, saved_bytes_per_image=1e7, bytes_per_step=0.0)
    peak = Peak("toy", flops=1e12, bytes_per_s=1e12)
    rate, limit = bound_img_per_s(cost, peak, batch=1)  # 4 ms of compute against 0.1 ms of traffic
    assert limit == "compute" and rate == pytest.approx(250)
    rate, limit = bound_img_per_s(cost, Peak("slow memory", 1e15, 1e10), batch=1)  # 10 ms of traffic
    assert limit == "memory" and rate == pytest.approx(100)
    fused, _ = bound_img_per_s(cost, Peak("slow memory", 1e15, 1e10), batch=1, traffic="saved")
    assert fused == pytest.approx(1e10 / 2e7)


def test_costs_round_trip_through_the_csv_with_the_measured_share(tmp_path):
    cost = TrainCost("efficientnet_b0", 224, 4012672, 2.3e9, 2.9e8, 4.4e7, 1.2e8)
    row = roofline_row(cost, H100_SXM, batch=128, measured=3000.0)
    assert row["pct_of_bound"] == pytest.approx(100 * 3000 / row["bound_img_per_s"], abs=0.1)  # rounded to 0.1
    write_csv([row], tmp_path / "roofline.csv")
    assert load_costs(tmp_path / "roofline.csv")["efficientnet_b0"] == cost


def test_measure_peak_gives_finite_positive_rates():
    peak = measure_peak("cpu", matmul_n=64, copy_bytes=2**16, repeats=2)
    assert math.isfinite(peak.flops) and peak.flops > 0
    assert math.isfinite(peak.bytes_per_s) and peak.bytes_per_s > 0
