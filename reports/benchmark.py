"""CPU inference latency and training throughput of each shipped checkpoint.

    python -m reports.benchmark                          # every checkpoints/* folder with a config.json
    python -m reports.benchmark checkpoints/simple_cnn_7 --repeats 200

Latency: one image (batch 1) at the model's input size, fp32, ``torch.set_num_threads(2)``
(what a free Hugging Face CPU Space has), the median of ``--repeats`` forward passes after
``--warmup`` untimed ones. Throughput: images per second of training steps (forward,
backward, AdamW) on random batches of ``--batch-size`` at the input size, channels_last as
train.train uses. Other processes on the machine slow both down: benchmark an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainmri.cli import exit_code, setup_logging, write_json
from brainmri.data.preprocess import data_config
from brainmri.models.catalog import checkpoint_folders
from brainmri.models.checkpoint import load_checkpoint, read_config
from brainmri.models.registry import count_parameters
from brainmri.settings import checkpoint_dir

_logger = logging.getLogger(__name__)


@torch.inference_mode()
def inference_latency(model: nn.Module, size: int, repeats: int, warmup: int) -> list[float]:
    """Seconds per forward pass of one (1, 3, size, size) image, ``repeats`` times after ``warmup``."""
    model.eval()
    x = torch.randn(1, 3, size, size)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return times


def train_throughput(model: nn.Module, size: int, batch_size: int, steps: int, warmup: int = 1) -> float:
    """Images per second of AdamW training steps on random channels_last batches (the model is not changed)."""
    model = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (batch_size,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)


def benchmark_folder(folder: Path, repeats: int, warmup: int, batch_size: int, train_steps: int) -> dict:
    """One row of the table for the checkpoint in ``folder``."""
    model = load_checkpoint(folder)
    size = data_config(model)["input_size"][-1]
    latency = np.array(inference_latency(model, size, repeats, warmup)) * 1000
    return {
        "model": read_config(folder).get("registry_name", folder.name),
        "parameters": count_parameters(model),
        "input_size": size,
        "latency_ms_median": round(float(np.median(latency)), 2),
        "latency_ms_p90": round(float(np.percentile(latency, 90)), 2),
        "train_img_per_s": round(train_throughput(model, size, batch_size, train_steps), 1),
    }


def format_table(rows: list[dict], threads: int, batch_size: int) -> str:
    """A Markdown table, one row per model."""
    lines = [
        f"| model | parameters | input | latency ms, batch 1, {threads} thread{'s' * (threads != 1)} (median) | p90 |"
        f" train img/s (batch {batch_size}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['input_size']} | {r['latency_ms_median']:.1f} | {r['latency_ms_p90']:.1f} |"
            f" {r['train_img_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", help=f"checkpoint folders; default every folder in {checkpoint_dir()}")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=100, help="timed batch-1 forward passes; the median is reported")
    parser.add_argument("--warmup", type=int, default=10, help="untimed forward passes first")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch for the throughput")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps (after one untimed)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if min(args.threads, args.repeats, args.batch_size, args.train_steps) < 1 or args.warmup < 0:
        parser.error("--threads, --repeats, --batch-size and --train-steps must be at least 1, --warmup at least 0")
    torch.set_num_threads(args.threads)

    def run() -> None:
        folders = [Path(f) for f in args.checkpoints] or checkpoint_folders(classifiers=True)
        if not folders:
            raise ValueError(f"no checkpoint folders in {checkpoint_dir()}")
        rows = []
        for folder in folders:
            rows.append(benchmark_folder(folder, args.repeats, args.warmup, args.batch_size, args.train_steps))
            _logger.info("%s", rows[-1])
        print(format_table(rows, args.threads, args.batch_size))
        write_json(args.out, {"threads": args.threads, "batch_size": args.batch_size, "rows": rows})

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
