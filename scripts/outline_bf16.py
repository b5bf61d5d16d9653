"""The tumour outline in bfloat16 against float32: how alike the masks are, and what each costs a slice.

    HF_HUB_OFFLINE=1 python scripts/outline_bf16.py                 # every 7th Testing slice, 200 at most
    HF_HUB_OFFLINE=1 python scripts/outline_bf16.py --every 3 --limit 500 --json outline_bf16.json

The served segmenter (``SEGMENTER_DEFAULT``) on the same slices twice, through ``segment_batch`` as a request runs it, one
torch thread: once in float32, once under bfloat16 autocast (what ``BRAIN_MRI_OUTLINE_BF16`` turns on where the CPU
computes bf16 natively). Prints the Dice of the two masks (over slices where either is non-empty), the slices one
leaves empty and the other not, and the median ms of each. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainmri.cli import add_data_argument, exit_code, write_json  # noqa: E402
from brainmri.data.imageio import load_image  # noqa: E402
from brainmri.data.records import load_records  # noqa: E402
from brainmri.runtime import native_bf16  # noqa: E402
from brainmri.serving import Predictor  # noqa: E402
from brainmri.serving.segment import segment_batch  # noqa: E402

_logger = logging.getLogger(__name__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--every", type=int, default=7, help="every n-th Testing slice, in sorted order")
    parser.add_argument("--limit", type=int, default=200, help="at most this many slices")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    def run() -> None:
        torch.set_num_threads(1)  # as a batch worker on 2 cores
        paths = load_records(args.data, "test").sources[:: args.every][: args.limit]  # sorted, as a listing of Testing/
        if not paths:
            raise ValueError(f"no Testing images under {args.data}")
        loaded = Predictor().segmentation_model()
        if loaded is None:
            raise ValueError("no segmenter to serve (checkpoints/multitask_lite0)")
        times: dict[bool, list[float]] = {False: [], True: []}
        dice, flips = [], 0
        for path in paths:
            image = load_image(path)
            masks = {}
            for bf16 in (False, True):
                loaded.bf16 = bf16
                start = time.perf_counter()
                masks[bf16] = segment_batch(loaded, [image])[0].mask
                times[bf16].append((time.perf_counter() - start) * 1000)
            full, half = masks[False], masks[True]
            flips += int(full.any() != half.any())
            if full.any() or half.any():
                dice.append(float(2 * (full & half).sum() / (full.sum() + half.sum())))
        figures = {
            "segmenter": loaded.name,
            "native_bf16": native_bf16(),
            "n": len(paths),
            "outlined": len(dice),
            "dice_mean": round(statistics.mean(dice), 4),
            "dice_p5": round(float(np.percentile(dice, 5)), 4),
            "dice_min": round(min(dice), 4),
            "empty_flips": flips,
            "float32_ms": round(statistics.median(times[False]), 1),
            "bf16_ms": round(statistics.median(times[True]), 1),
        }
        print(json.dumps(figures, indent=2))
        write_json(args.json, figures)

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
