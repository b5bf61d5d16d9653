"""CUDA graphs for the training step (train.graphs): on a CPU they are refused with a reason and training goes on
eagerly; a graphed module still takes a batch of another shape through its own forward. The capture itself runs only
on a GPU: scripts/launch_bench.py measures it in a lease (docs/gpu_lease.md)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train import graphs
from train.config import parse_config


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


def test_on_a_cpu_the_capture_is_refused_with_its_reason_and_the_forward_is_the_modules():
    model, step = Doubler(), graphs.GraphedStep(requested=True)
    x = torch.ones(4, 3)
    graphs.capture(model, x, step)
    assert not step.ready() and step.failed == "CUDA graphs need a GPU; the batch is on cpu"
    assert torch.equal(graphs.forward(model, x, step), 2 * x)
    graphs.capture(model, x, graphs.GraphedStep())  # not asked for: nothing tried, nothing said
    assert graphs.GraphedStep().failed == ""


def test_a_batch_of_another_shape_takes_the_modules_own_forward():
    model = Doubler()
    model.forward = lambda x: torch.zeros_like(x)  # as make_graphed_callables replaces it, for the captured shape
    step = graphs.GraphedStep(requested=True, shape=(4, 3))
    assert torch.equal(graphs.forward(model, torch.ones(4, 3), step), torch.zeros(4, 3))  # the graph's
    assert torch.equal(graphs.forward(model, torch.ones(2, 3), step), 2 * torch.ones(2, 3))  # the last, smaller batch


def test_the_flag_reaches_the_config():
    assert parse_config(["--cuda-graphs"]).cuda_graphs and not parse_config([]).cuda_graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the lease: scripts/launch_bench.py)")
def test_a_graphed_step_matches_the_eager_one_on_a_gpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 4)).cuda()
    x = torch.randn(8, 3, 16, 16, device="cuda")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model(x).sum().backward()
    reference, moved = [p.grad.clone() for p in model.parameters()], model[1].running_mean.clone()
    model.zero_grad(set_to_none=True)
    model.load_state_dict(start)
    step = graphs.GraphedStep(requested=True)
    graphs.capture(model, x, step)
    assert step.ready(), step.failed
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())  # the warm-up passes left no trace
    assert all(p.grad is None for p in model.parameters())
    graphs.forward(model, x, step).sum().backward()
    assert all(torch.allclose(p.grad, r, atol=1e-5) for p, r in zip(model.parameters(), reference))
    assert torch.allclose(model[1].running_mean, moved)
    torch.manual_seed(1)  # train.train reseeds every epoch: the graph replays after it
    graphs.forward(model, x, step).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
