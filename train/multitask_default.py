"""The app's default, by the rule fixed before the multi-task model's first result, measured on validation only.

    python -m train.multitask_default checkpoints/multitask_lite0 --data ../shared/data/brain-tumor-mri

The multi-task model replaces the classifier-and-U-Net pair (``tf_efficientnet_lite0`` + ``unet_lite0``) as the
default if
1. its class accuracy on its leak-free validation split is at least Lite0's on Lite0's own (the two were cut by
   different rules, so each is scored where it never trained: ``val_split.txt``), each scored from its saved folder
   as the app serves it (:func:`served_accuracy`), and
2. its outline's Dice against each expert is at least ``unet_lite0``'s, on the same validation scans (``unet_lite0``
   was cut by the same mirror-aware rule; its validation scans are among the multi-task model's), counted on the
   scans both experts outlined, as the experts' agreement is.

Writes ``results/multitask_default.json`` with every figure, and prints the verdict. Testing plays no part.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from brainmri.cli import add_data_argument, exit_code, setup_logging, write_json
from brainmri.data.split import checkpoint_config, checkpoint_split
from brainmri.models.checkpoint import MULTITASK_DEFAULT, load_checkpoint, results_dir
from brainmri.models.registry import DEFAULT_CLASSIFIER
from brainmri.models.segmenters import UNET
from brainmri.segmentation import load_segmenter, to_input
from train.evaluate import predict_logits
from train.experts import EXPERTS, decode_expert_masks
from train.multitask_eval import outline_scores, predict

_logger = logging.getLogger(__name__)

CLASSIFIER, SEGMENTER = DEFAULT_CLASSIFIER, UNET  # the pair it would replace, as the rule named it


def outline_on(folder: Path, split_of: Path, data: str | None) -> dict:
    """``folder``'s outline scored against each expert on the validation scans of ``split_of``."""
    _, val = checkpoint_split(split_of, data)
    model = load_segmenter(folder)
    side = model.input_size
    x = torch.stack([to_input(val.open(i), side) for i in range(len(val))])
    masks, known = decode_expert_masks(val, data or checkpoint_config(split_of)["data"], side)
    _, outlines = predict(model, x, nullcontext())
    return outline_scores(outlines, masks, known, val.labels, val.class_names)


def served_accuracy(folder: Path, data: str | None) -> dict:
    """``folder``'s class accuracy on its own validation scans, from its saved weights in float32, as served. Not the
    ``validation`` of a classifier's metrics.json: that is what its training measured (under bf16 autocast, on the
    weights before they were saved in half precision), one slice apart for Lite0 (800 against 801 of 816)."""
    _, val = checkpoint_split(folder, data)
    logits = predict_logits(load_checkpoint(folder), val)
    correct = int((logits.argmax(1) == np.asarray(val.labels)).sum())
    return {"accuracy": correct / len(val), "correct": correct, "n": len(val)}


def decide(multitask: Path, checkpoints: Path, data: str | None = None) -> dict:
    mine = served_accuracy(multitask, data)
    pair = served_accuracy(checkpoints / CLASSIFIER, data)
    theirs_all = outline_on(checkpoints / SEGMENTER, multitask, data)
    ours_all = outline_on(multitask, multitask, data)
    theirs, ours = theirs_all["both_experts"], ours_all["both_experts"]
    dice = {e: {"multitask": ours["all"][f"dice_{e}"], SEGMENTER: theirs["all"][f"dice_{e}"]} for e in EXPERTS}
    accuracy = {
        "multitask": mine["accuracy"],
        "multitask_n": mine["n"],
        CLASSIFIER: pair["accuracy"],
        f"{CLASSIFIER}_n": pair["n"],
        "measured": "each from its saved folder, float32 on the CPU, as served (train.multitask_default.served_accuracy)",
    }
    rule = {
        "class": accuracy["multitask"] >= accuracy[CLASSIFIER],
        "outline": all(d["multitask"] >= d[SEGMENTER] for d in dice.values()),
    }
    return {
        "rule": __doc__.split("\n\n")[1].strip(),
        "pair": {"classifier": CLASSIFIER, "segmenter": SEGMENTER},
        "accuracy": accuracy,
        "dice_all": dice,
        "outline": {"multitask": ours_all, SEGMENTER: theirs_all},
        "passes": rule,
        "default": "multitask" if all(rule.values()) else "pair",
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="the multi-task model's folder")
    parser.add_argument("--checkpoints", default="checkpoints", help="where the pair's folders are")
    add_data_argument(parser, overrides="the checkpoint's train_config.json")
    parser.add_argument("--out", default=str(results_dir() / MULTITASK_DEFAULT), help="where the figures and the verdict go (JSON)")
    args = parser.parse_args(argv)

    def run() -> None:
        verdict = decide(Path(args.checkpoint), Path(args.checkpoints), args.data)
        write_json(args.out, verdict)
        print(json.dumps({k: verdict[k] for k in ("accuracy", "dice_all", "passes", "default")}, indent=2))

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
