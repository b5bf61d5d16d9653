"""Training steps a second, eager against replayed from a CUDA graph: the first minute of a GPU lease (issue 28).

    python scripts/launch_bench.py --models efficientnet_b0 efficientnet_b7 --out $OUT/launch_bench.json   # on the GPU
    python scripts/launch_bench.py --device cpu --models simple_cnn_7 --batch 8 --steps 3     # the rehearsal anywhere

Each model is built from random weights as the seed's protocol trains it (registry input size, channels_last, bf16
autocast on CUDA, AdamW) and takes ``--steps`` training steps on a random batch after ``--warmup`` untimed ones,
first eagerly, then with its forward and backward replayed from a CUDA graph (train.graphs; on a CPU the graphed
row says why it did not run). Prints img/s per model and mode, and the speed-up; asserts nothing. At batch 32 the
EfficientNets are launch-bound on an H200 (docs/gpu_lease.md): the speed-up says how much of a step was launches.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainmri.cli import exit_code, setup_logging, write_json  # noqa: E402
from brainmri.models.registry import create_model, get_spec  # noqa: E402
from reports.roofline import seconds_per_call  # noqa: E402
from train.graphs import GraphedStep, capture, forward  # noqa: E402

_logger = logging.getLogger("launch_bench")


def steps_per_second(name: str, device: torch.device, batch: int, steps: int, warmup: int, graphed: bool) -> dict:
    """One model's training img/s in one mode; ``note`` says why a graphed run fell back to eager."""
    torch.manual_seed(0)
    size = get_spec(name).input_size
    model = create_model(name).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch,), device=device)
    step = GraphedStep(requested=graphed)
    # bf16 autocast on CUDA, as training there runs it; its cache off, which a CUDA graph needs
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if device.type == "cuda" else contextlib.nullcontext()

    def one_step() -> None:
        with autocast:
            capture(model, x, step)
            loss = F.cross_entropy(forward(model, x, step), y, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = steps * seconds_per_call(one_step, device, warmup=warmup, repeats=steps)
    mode = "graphed" if step.ready() else "eager"
    return {
        "model": name,
        "asked": "graphed" if graphed else "eager",
        "ran": mode,
        "batch": batch,
        "input_size": size,
        "img_per_s": round(batch * steps / seconds, 1),
        "ms_per_step": round(1000 * seconds / steps, 2),
        "note": step.failed,
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_b0", "efficientnet_b7"], help="registry names")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to rehearse (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="images a step: the seed's protocol (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps a model and mode (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first: cuDNN's choices, the capture")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    def bench() -> None:
        device = torch.device(args.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        rows = []
        for name in args.models:
            eager = steps_per_second(name, device, args.batch, args.steps, args.warmup, graphed=False)
            graphed = steps_per_second(name, device, args.batch, args.steps, args.warmup, graphed=True)
            rows += [eager, graphed]
            gain = graphed["img_per_s"] / eager["img_per_s"] if graphed["ran"] == "graphed" else None
            print(
                f"{name:>22}  eager {eager['img_per_s']:8.1f} img/s ({eager['ms_per_step']:.1f} ms a step)  "
                + (
                    f"graphed {graphed['img_per_s']:8.1f} img/s ({graphed['ms_per_step']:.1f} ms)  x{gain:.2f}"
                    if gain
                    else f"graphed: not run ({graphed['note']})"
                )
            )
        if args.out:
            meta = {
                "torch": torch.__version__,
                "device": str(device),
                "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            }
            write_json(args.out, {**meta, "rows": rows})

    return exit_code(bench, _logger)


if __name__ == "__main__":
    sys.exit(main())
