"""How fast can a model train at best on a GPU? FLOPs and bytes per training image, and the bound.

    python -m reports.roofline --models efficientnet_b0 --measured efficientnet_b0=3000
    python -m reports.roofline --out results/roofline.csv          # every registry model

One training step (forward + backward, batch 1 and batch 2, so that what grows with the
batch separates from what does not) runs on the CPU under two counters:

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products,
  grouped and depthwise ones included; elementwise work is negligible in FLOPs).
- Bytes: every ATen operation's tensor inputs read once and outputs written once, as eager
  PyTorch runs them (no fusion), floating-point tensors counted at 2 bytes as under bf16
  autocast. Views move nothing and are skipped. Activations saved for backward (the memory
  that grows with the batch) are counted too: written once and read once, they are the
  traffic no implementation avoids.

The bound on images per second is ``1 / max(FLOPs / peak FLOP/s, bytes / bandwidth)``; a
measured throughput over it is the share of the hardware the training loop gets.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from brainmri.cli import exit_code, setup_logging
from brainmri.models.checkpoint import ROOFLINE_CSV, results_dir
from brainmri.models.registry import REGISTRY, create_model, get_spec

_logger = logging.getLogger(__name__)

# Costs of every registry model, counted once on any machine (python -m reports.roofline --out ...).
COSTS_CSV = results_dir() / ROOFLINE_CSV

BF16_BYTES = 2
# AdamW in fp32 per parameter and step: read weight, grad, exp_avg, exp_avg_sq; write weight, exp_avg, exp_avg_sq.
ADAMW_BYTES_PER_PARAM = 7 * 4


@dataclass(frozen=True)
class Peak:
    """Peak rates of one accelerator."""

    name: str
    flops: float  # dense bf16 FLOP/s
    bytes_per_s: float  # device-memory bandwidth, bytes read plus written per second


# Datasheet figures (dense, no sparsity): the H100 SXM5 80GB, and the H200 SXM (the same chip, faster memory).
H100_SXM = Peak("H100 SXM datasheet", 989e12, 3.35e12)
H200_SXM = Peak("H200 SXM datasheet", 989e12, 4.8e12)


def datasheet_peak(device: str) -> Peak | None:
    """The datasheet peak of a device named as torch.cuda.get_device_name() names it; None for others (the CPU)."""
    for key, peak in (("H200", H200_SXM), ("H100", H100_SXM)):
        if key in str(device):
            return peak
    return None


@dataclass
class TrainCost:
    """Work of one training step, per image and per step (the part that does not grow with the batch)."""

    model: str
    input_size: int
    parameters: int
    flops_per_image: float  # forward + backward
    bytes_per_image: float  # eager traffic, every op's inputs and outputs, bf16
    saved_bytes_per_image: float  # activations kept for backward, bf16
    bytes_per_step: float  # weights and gradients in the ops, plus the AdamW update

    def bytes_per_image_at(self, batch: int) -> float:
        return self.bytes_per_image + self.bytes_per_step / batch


COST_FIELDS = ("flops_per_image", "bytes_per_image", "saved_bytes_per_image", "bytes_per_step")


class TrafficCounter(TorchDispatchMode):
    """Adds up the bytes each ATen op reads and writes; views are free."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    @staticmethod
    def _nbytes(values) -> int:
        leaves, _ = tree_flatten(values)
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        return sum(t.numel() * (BF16_BYTES if t.is_floating_point() else t.element_size()) for t in tensors)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func not in (torch.ops.aten.detach.default, torch.ops.aten.lift_fresh.default):
            self.bytes += self._nbytes((args, kwargs)) + self._nbytes(out)
        return out


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, *args, out_shape=None, **kwargs):
    """Backward of a convolution: each requested gradient (input, weight) costs one forward's FLOPs.

    torch's own formula counts the weight gradient of a grouped convolution as if it were
    dense, which makes a depthwise convolution's backward ``groups`` times too costly
    (EfficientNet-B0 would come out at 32 GFLOPs per training image instead of 2.3).
    """
    output_mask = args[2]  # after output_padding and groups
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode whose convolution backward is right for grouped and depthwise convolutions."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


def _one_step(model: torch.nn.Module, batch: int, size: int) -> tuple[float, int, int]:
    """(FLOPs, traffic bytes, saved-activation bytes) of forward + backward at ``batch``."""
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long)
    seen: set[int] = set()
    saved = 0
    params = {p.data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in params:
            seen.add(ptr)
            saved += t.untyped_storage().nbytes() // t.element_size() * (BF16_BYTES if t.is_floating_point() else t.element_size())
        return t

    flops = flop_counter()
    traffic = TrafficCounter()
    with flops, traffic, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return float(flops.get_total_flops()), traffic.bytes, saved


def training_cost(name: str, size: int = 0) -> TrainCost:
    """Count one training step of registry model ``name`` at ``size`` px (0: its registry size).

    Runs batch 1 and batch 2: the difference is the per-image cost, the rest the per-step cost.
    """
    size = size or get_spec(name).input_size
    torch.manual_seed(0)
    model = create_model(name).train().to(memory_format=torch.channels_last)
    f1, b1, s1 = _one_step(model, 1, size)
    f2, b2, s2 = _one_step(model, 2, size)
    n_params = sum(p.numel() for p in model.parameters())
    return TrainCost(
        model=name,
        input_size=size,
        parameters=n_params,
        flops_per_image=f2 - f1,
        bytes_per_image=float(b2 - b1),
        saved_bytes_per_image=float(s2 - s1),
        bytes_per_step=float(max(b1 - (b2 - b1), 0) + n_params * ADAMW_BYTES_PER_PARAM),
    )


def bound_img_per_s(cost: TrainCost, peak: Peak, batch: int = 128, traffic: str = "eager") -> tuple[float, str]:
    """Roofline bound on training images per second, and which term limits it ("compute" or "memory").

    Args:
        traffic: "eager" counts every op's inputs and outputs (what unfused PyTorch moves);
            "saved" only the saved activations written once and read once (a perfectly fused step).
    """
    per_image = cost.bytes_per_image_at(batch) if traffic == "eager" else 2 * cost.saved_bytes_per_image + cost.bytes_per_step / batch
    t_compute, t_memory = cost.flops_per_image / peak.flops, per_image / peak.bytes_per_s
    return 1.0 / max(t_compute, t_memory), ("compute" if t_compute >= t_memory else "memory")


def measure_peak(device: str | torch.device = "cuda", matmul_n: int = 8192, copy_bytes: int = 2**30, repeats: int = 10) -> Peak:
    """Measure the two ceilings on this device: a bf16 matrix product and a device-to-device copy.

    Datasheet rates are leads; these are what the card in hand does (a few seconds).
    """
    device = torch.device(device)
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    src = torch.randn(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)

    flops = 2 * matmul_n**3 / seconds_per_call(lambda: a @ b, device, repeats=repeats)
    bandwidth = 2 * src.numel() * src.element_size() / seconds_per_call(lambda: dst.copy_(src), device, repeats=repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return Peak(f"{name} measured", flops, bandwidth)


def seconds_per_call(fn, device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Wall seconds one call of ``fn`` takes on ``device``, after ``warmup`` untimed calls (the GPU's queue drained
    before and after the timed ones)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def roofline_row(cost: TrainCost, peak: Peak, batch: int, measured: float | None = None) -> dict:
    """The cost (raw, so that :func:`load_costs` can read it back), its bounds on ``peak``, and the measured share."""
    eager, limit = bound_img_per_s(cost, peak, batch, "eager")
    fused, _ = bound_img_per_s(cost, peak, batch, "saved")
    row = {
        **asdict(cost),
        "train_gflops_per_img": round(cost.flops_per_image / 1e9, 3),
        "eager_mb_per_img": round(cost.bytes_per_image_at(batch) / 1e6, 1),
        "saved_mb_per_img": round(cost.saved_bytes_per_image / 1e6, 1),
        "peak": peak.name,
        "batch": batch,
        "bound_img_per_s": round(eager),
        "limited_by": limit,
        "fused_bound_img_per_s": round(fused),
    }
    if measured:
        row["measured_img_per_s"] = measured
        row["pct_of_bound"] = round(100 * measured / eager, 1)
        row["pct_of_fused_bound"] = round(100 * measured / fused, 1)
    return row


def write_csv(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def load_costs(path: str | Path) -> dict[str, TrainCost]:
    """The TrainCost of each model in a CSV written by this module (counted once, on any machine)."""
    names = [f.name for f in fields(TrainCost)]
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        r["model"]: TrainCost(
            **{n: (r[n] if n == "model" else int(r[n]) if n in ("input_size", "parameters") else float(r[n])) for n in names}
        )
        for r in rows
    }


def sweep_roofline(folder: str | Path, device: dict, costs_csv: str | Path = COSTS_CSV) -> Path | None:
    """``folder/roofline.csv``: each trained model's measured training rate against its bounds, on its card's
    datasheet (the H100's when unknown) and, where ``device`` has them (train.sweep.measure_device), on the ceilings
    measured on the card."""
    if not Path(costs_csv).is_file():
        _logger.warning("no %s: run python -m reports.roofline --out %s for the bounds", costs_csv, costs_csv)
        return None
    costs = load_costs(costs_csv)
    peaks = [datasheet_peak(device.get("device", "")) or H100_SXM]
    if "peak_bf16_tflops" in device:
        peaks.append(Peak(f"{device['device']} measured", device["peak_bf16_tflops"] * 1e12, device["peak_tb_per_s"] * 1e12))
    rows = []
    for path in sorted(Path(folder).glob("*/metrics.json")):
        m = json.loads(path.read_text())
        cost = costs.get(m.get("model"))
        if cost is None or cost.input_size != m.get("input_size"):
            continue
        for peak in peaks:
            rows.append({"device": m.get("device"), **roofline_row(cost, peak, m.get("batch_size") or 128, m.get("train_img_per_s"))})
    if not rows:
        return None
    write_csv(rows, Path(folder) / ROOFLINE_CSV)
    return Path(folder) / ROOFLINE_CSV


def _parse_measured(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value:
            raise ValueError(f"--measured takes MODEL=IMG_PER_S, got {item!r}")
        out[name] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(REGISTRY), help="registry names (default: all)")
    parser.add_argument("--size", type=int, default=0, help="input size (0: each model's registry size)")
    parser.add_argument("--batch", type=int, default=128, help="batch size the per-step traffic is spread over")
    parser.add_argument("--measured", nargs="*", default=[], help="MODEL=IMG_PER_S measured training throughputs")
    parser.add_argument("--out", help="write the table as CSV here")
    args = parser.parse_args(argv)

    def run() -> None:
        measured = _parse_measured(args.measured)
        costs = [training_cost(name, args.size) for name in args.models]
        rows = [roofline_row(cost, H100_SXM, args.batch, measured.get(cost.model)) for cost in costs]
        for r in rows:
            print(", ".join(f"{k}={v}" for k, v in r.items() if k not in COST_FIELDS))
        if args.out:
            write_csv(rows, args.out)

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
