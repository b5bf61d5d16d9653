"""Score the uniform mean of several multi-task weight files (a "soup") on the run's validation scans, in float32.

    git show d360680:checkpoints/multitask_lite0/model.safetensors > ../runs/mt3.safetensors   # the third schedule
    HF_HUB_OFFLINE=1 python scripts/multitask_soup.py checkpoints/multitask_lite0/model.safetensors \\
        ../runs/mt5/model.safetensors [../runs/mt3.safetensors]

The weights must share ``checkpoints/multitask_lite0``'s architecture and validation split (each schedule started from
the one before). Prints the soup's validation accuracy, Dice against each expert and the share of no-tumour slices
left empty; asserts nothing, writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainmri.cli import add_data_argument  # noqa: E402
from brainmri.segmentation import load_segmenter  # noqa: E402
from brainmri.settings import checkpoint_dir  # noqa: E402
from train.multitask import MultiTaskConfig, load_split  # noqa: E402
from train.multitask_eval import evaluate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="model.safetensors files of one multi-task architecture")
    parser.add_argument("--folder", default=str(checkpoint_dir() / "multitask_lite0"), help="the folder whose model they fit")
    add_data_argument(parser)
    args = parser.parse_args(argv)
    states = [load_file(w) for w in args.weights]
    soup = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v for k, v in states[0].items()}
    model = load_segmenter(Path(args.folder))
    model.load_state_dict(soup)
    scores = evaluate(model, load_split(MultiTaskConfig(data=args.data))["val"], nullcontext())["summary"]
    keys = ("val_accuracy", "val_dice_cheng_all", "val_dice_brisc_all", "val_dice_cheng_glioma", "val_dice_brisc_glioma")
    keys += ("val_empty_no_tumour",)
    print(f"mean of {len(states)}: " + ", ".join(f"{k} {scores[k]:.4f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
