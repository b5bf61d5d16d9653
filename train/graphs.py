"""CUDA graphs for the training step's forward and backward: one replay instead of thousands of kernel launches.

At batch 32 the EfficientNets are launch-bound on an H200: the step time grows with the number of blocks, not with
the arithmetic (~2.3-2.9 ms a block, docs/gpu_lease.md), and eight processes side by side did not overlap on the GPU
(the 2026-12-04 lease). ``torch.cuda.make_graphed_callables`` captures the module's forward and backward once on a
static batch and replays both; the loss, the optimizer and the augmentation stay eager (tens of launches a step).
The protocol is unchanged: the same batches, the same arithmetic; a batch of another shape (an epoch's last, smaller
one) runs the module's own forward. Capturing runs three warm-up passes on the first batch: their gradients are
dropped and the batch-norm statistics they moved are put back, so the first real step starts where an eager one
would. Where capture fails, training goes on eagerly and says so.

    python -m train.train --model efficientnet_b0 --cuda-graphs ...      # a GPU; ignored, with a log line, on a CPU
    python scripts/launch_bench.py --models efficientnet_b0 efficientnet_b7   # eager against graphed, img/s
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

_logger = logging.getLogger(__name__)


@dataclass
class GraphedStep:
    """Whether the training forward is graphed, and for which batch shape."""

    requested: bool = False
    shape: tuple[int, ...] | None = None  # the captured batch's shape, once captured
    failed: str = ""  # why it is not graphed, after an attempt

    def ready(self) -> bool:
        return self.shape is not None


def capture(model: nn.Module, sample: torch.Tensor, step: GraphedStep) -> None:
    """Graph ``model``'s training forward and backward for batches shaped like ``sample`` (call it under the
    training step's autocast, so that the graph computes in its precision). Leaves the weights, their gradients and
    the batch-norm statistics as they were; records success or the reason for failure in ``step``."""
    if not step.requested or step.ready() or step.failed:
        return
    if sample.device.type != "cuda":
        step.failed = f"CUDA graphs need a GPU; the batch is on {sample.device.type}"
        _logger.info("%s: training eagerly", step.failed)
        return
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        torch.cuda.make_graphed_callables(model, (sample,), num_warmup_iters=3)
    except Exception as e:  # noqa: BLE001 - any failure to capture leaves eager training, which is always correct
        step.failed = f"{type(e).__name__}: {e}"
        _logger.warning("could not capture the training step in a CUDA graph (%s): training eagerly", step.failed)
    else:
        step.shape = tuple(sample.shape)
        _logger.info("training forward and backward captured in a CUDA graph for batches of %s", list(step.shape))
    with torch.no_grad():  # in place: the graph holds these very tensors
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    for p in model.parameters():
        p.grad = None


def forward(model: nn.Module, x: torch.Tensor, step: GraphedStep) -> torch.Tensor:
    """The graphed forward for a batch of the captured shape; the module's own for any other, or when not graphed."""
    if step.ready() and tuple(x.shape) != step.shape:
        # make_graphed_callables replaced the instance's forward; the class's is the module's own
        return type(model).forward(model, x)
    return model(x)
