"""The gated outline's decoder on only the slices the gate lets through, against decoding every slice: CPU an image.

    HF_HUB_OFFLINE=1 python scripts/bench_outline_gate.py                # 64 Testing slices, batches of 8, 3 rounds
    HF_HUB_OFFLINE=1 python scripts/bench_outline_gate.py --images 128 --batch 1

The served segmenter (``SEGMENTER_DEFAULT``, loaded as the app loads it) outlines the same Testing slices two ways, taking
turns each round, one torch thread: ``tumour_probability_and_class`` as served (the class head first, the decoder on the
slices whose head does not say no tumour), and the whole batch decoded, then zeroed where the gate closes (how it ran
before). Prints the process CPU ms an image of each round, the slices the gate closed, and the largest difference
between the two probability maps (zero: the same outlines). Asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainmri.cli import add_data_argument, exit_code  # noqa: E402
from brainmri.data.imageio import load_image  # noqa: E402
from brainmri.data.records import load_records  # noqa: E402
from brainmri.models.segmenters import SEGMENTER_DEFAULT  # noqa: E402
from brainmri.runtime import describe_cpu  # noqa: E402
from brainmri.segmentation import gate_opens, gated, mask_logits, normalise, to_input, tumour_probability_and_class  # noqa: E402
from brainmri.serving.segment import load_for_serving  # noqa: E402
from brainmri.settings import checkpoint_dir  # noqa: E402

_logger = logging.getLogger(__name__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--images", type=int, default=64, help="Testing slices, drawn with a fixed seed")
    parser.add_argument("--batch", type=int, default=8, help="slices a forward (the app batches up to 8 under load)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the two ways taking turns in each")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a batch worker runs
    loaded = load_for_serving(SEGMENTER_DEFAULT, checkpoint_dir() / SEGMENTER_DEFAULT)
    model, rule = loaded.model, loaded.rule
    if not rule.gate:
        raise ValueError(f"{SEGMENTER_DEFAULT}'s outline rule does not gate: nothing to compare")
    files = load_records(args.data, "test").sources  # sorted paths (a Hub dataset's: bytes)
    if not files:
        raise ValueError(f"no Testing slices under {args.data}")
    files = random.Random(0).sample(files, min(args.images, len(files)))
    x = torch.stack([to_input(load_image(f), loaded.input_size) for f in files]).contiguous(memory_format=torch.channels_last)
    batches = list(torch.split(x, args.batch))

    @torch.inference_mode()
    def decode_all(b: torch.Tensor) -> torch.Tensor:
        out = model(normalise(b, model))
        return gated(torch.sigmoid(mask_logits(out)[:, 0].float()), out[1].float(), model.label_names, rule)

    def as_served(b: torch.Tensor) -> torch.Tensor:
        return tumour_probability_and_class(model, b, rule)[0]

    with torch.inference_mode():
        closed = sum(int((~gate_opens(model(normalise(b, model))[1], model.label_names)).sum()) for b in batches)
    print(f"machine: {describe_cpu()}; {SEGMENTER_DEFAULT}, {len(files)} Testing slices in batches of {args.batch}")
    print(f"the gate closes on {closed} of them (its class head says no tumour)")
    for r in range(1, args.rounds + 1):
        line, maps = [], {}
        for name, fn in (("decode every slice", decode_all), ("decode where the gate opens", as_served)):
            start = time.process_time()
            maps[name] = torch.cat([fn(b) for b in batches])
            line.append(f"{name} {(time.process_time() - start) / len(files) * 1000:.1f} ms")
        diff = (maps["decode every slice"] - maps["decode where the gate opens"]).abs().max().item()
        print(f"round {r}: " + ", ".join(line) + f" CPU an image; largest map difference {diff:.1e}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(exit_code(main, _logger))
