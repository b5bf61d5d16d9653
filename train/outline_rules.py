"""Choose an outliner's serving rule on validation: the probability threshold, the smallest outline kept, the
mirror average, and, for a model with its own class head, whether a slice it calls no tumour gets an outline.

    python -m train.outline_rules checkpoints/multitask_lite0 checkpoints/unet_lite0 --data ../shared/data/brain-tumor-mri

The first folder is the outliner whose rule is chosen (and stored with ``--write``); the others are scored beside it,
each under its own best rule. Every model is scored on the validation scans of the first folder's split
(``unet_lite0``'s outlined validation scans are the same ones: both were cut by the mirror-aware rule). A rule is
allowed when it leaves at least ``--min-empty`` of the no-tumour slices empty; among those, the one with the best
mean Dice against the two experts (on the scans both outlined) is chosen. Because choosing on validation flatters
validation, the rule is also chosen twice more, each time on one half of the scans (whole twin groups to a half)
and scored on the other: those cross-validated figures are the honest estimate. Testing plays no part.

Writes ``results/outline_rules.json``; ``--write`` also stores the first folder's chosen rule in its ``outline.json``,
which serving reads (``brainmri.segmentation.OutlineRule``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brainmri.cli import add_data_argument, exit_code, setup_logging
from brainmri.data.split import checkpoint_config, checkpoint_split, twin_groups
from brainmri.models.checkpoint import OUTLINE_RULES, results_dir
from brainmri.runtime import eval_batch
from brainmri.segmentation import OutlineRule, batch_masks, gated, load_segmenter, mask_overlap, normalise, to_input, write_rule
from brainmri.vocabulary import NO_TUMOUR
from train.experts import EXPERTS, decode_expert_masks

_logger = logging.getLogger(__name__)

THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
MIN_AREAS = (0.001, 0.0025, 0.005, 0.01)


@torch.inference_mode()
def probabilities(
    model: torch.nn.Module, x: torch.Tensor, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tumour probability (N, S, S) of each image and of its mirror (flipped back), and the class logits (N, C) of a
    model with a class head (None otherwise); ``batch_size`` by default the device's (``brainmri.runtime.eval_batch``)."""
    batch_size = batch_size or eval_batch(next(model.parameters()).device)
    plain, mirrored, logits = [], [], []
    for i in tqdm(range(0, len(x), batch_size), desc="outlining", leave=False):
        batch = normalise(x[i : i + batch_size], model)
        out = model(batch)
        masks, classes = out if isinstance(out, tuple) else (out, None)
        flipped = model(batch.flip(-1))
        flipped = flipped[0] if isinstance(flipped, tuple) else flipped
        plain.append(torch.sigmoid(masks[:, 0].float()))
        mirrored.append(torch.sigmoid(flipped[:, 0].float()).flip(-1))
        if classes is not None:
            logits.append(classes.float())
    return torch.cat(plain), torch.cat(mirrored), (torch.cat(logits) if logits else None)


def per_image(
    rule: OutlineRule,
    plain: torch.Tensor,
    mirrored: torch.Tensor,
    logits: torch.Tensor | None,
    label_names: list[str],
    truth: list[torch.Tensor],
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's Dice against each expert (N, E) and whether its outline is empty (N,), under ``rule``: served
    decoding (brainmri.segmentation's gate and smallest outline), at the model's input size."""
    pred = batch_masks(gated((plain + mirrored) / 2 if rule.mirror else plain, logits, label_names, rule), rule)
    dice = np.stack([mask_overlap(pred, t)[0] for t in truth], axis=1)
    return dice, ~pred.flatten(1).any(dim=1).numpy()


def tumour_groups(labels: np.ndarray, class_names: list[str]) -> dict[str, np.ndarray]:
    """ "all" tumours and each tumour class, as masks over the images."""
    negative = class_names.index(NO_TUMOUR)
    return {"all": labels != negative} | {c: labels == k for k, c in enumerate(class_names) if k != negative}


def summarise(dice: np.ndarray, empty: np.ndarray, keep: np.ndarray, labels: np.ndarray, class_names: list[str], both: np.ndarray) -> dict:
    """Mean Dice against each expert per class on the scans both outlined, and the no-tumour share left empty,
    over the images in ``keep``."""
    negative = class_names.index(NO_TUMOUR)
    out: dict = {}
    for g, sel in tumour_groups(labels, class_names).items():
        m = sel & both & keep
        out[g] = {"n": int(m.sum())} | {e: float(dice[m, j].mean()) for j, e in enumerate(EXPERTS)}
    neg = (labels == negative) & keep
    out["no_tumour"] = {"n": int(neg.sum()), "empty_share": float(empty[neg].mean())}
    return out


def score(summary: dict) -> float:
    return float(np.mean([summary["all"][e] for e in EXPERTS]))


def choose(
    results: dict[OutlineRule, tuple[np.ndarray, np.ndarray]],
    keep: np.ndarray,
    labels,
    names,
    both,
    min_empty: float,
    allow_mirror: bool = False,
) -> OutlineRule:
    """The allowed rule with the best mean Dice on ``keep``; the emptiest one when none is allowed. Rules with the
    mirror average (a second pass per request) only when ``allow_mirror``."""
    table = {r: summarise(*results[r], keep, labels, names, both) for r in results if allow_mirror or not r.mirror}
    allowed = [r for r in table if table[r]["no_tumour"]["empty_share"] >= min_empty]
    if not allowed:
        return max(table, key=lambda r: (table[r]["no_tumour"]["empty_share"], score(table[r])))
    return max(allowed, key=lambda r: score(table[r]))


def study(folder: Path, split_of: Path, data: str | None, min_empty: float, allow_mirror: bool = False, seed: int = 0) -> dict:
    data = data or checkpoint_config(split_of)["data"]
    _, val = checkpoint_split(split_of, data)
    model = load_segmenter(folder)
    side = model.input_size
    x = torch.stack([to_input(val.open(i), side) for i in range(len(val))])
    masks, known = decode_expert_masks(val, data, side)
    truth = [masks[:, j] > 0 for j in range(len(EXPERTS))]
    plain, mirrored, logits = probabilities(model, x)
    gates = (False, True) if logits is not None else (False,)
    rules = [OutlineRule(t, a, m, g) for t, a, m, g in itertools.product(THRESHOLDS, MIN_AREAS, (False, True), gates)]
    head = getattr(model, "label_names", val.class_names)  # the class head's order
    results = {r: per_image(r, plain, mirrored, logits, head, truth) for r in tqdm(rules, desc="rules", leave=False)}
    labels, names, both = val.labels, val.class_names, known.all(dim=1).numpy()

    everything = np.ones(len(val), dtype=bool)
    # two halves of the scans, whole twin groups to a half
    groups = twin_groups(val, data=data)
    unique = np.unique(groups)
    half_a = set(np.random.default_rng(seed).permutation(unique)[: len(unique) // 2].tolist())
    in_a = np.array([g in half_a for g in groups])
    held_out_dice = np.zeros((len(val), len(EXPERTS)))
    held_out_empty = np.zeros(len(val), dtype=bool)
    chosen_on_halves = []
    for fit, test in ((in_a, ~in_a), (~in_a, in_a)):
        r = choose(results, fit, labels, names, both, min_empty, allow_mirror)
        chosen_on_halves.append(asdict(r))
        held_out_dice[test], held_out_empty[test] = results[r][0][test], results[r][1][test]

    fixed = OutlineRule()
    between = mask_overlap(truth[0], truth[1])[0]  # the experts with each other
    chosen = choose(results, everything, labels, names, both, min_empty, allow_mirror)
    return {
        "model": folder.name,
        "scored_on": f"{split_of}/val_split.txt",
        "fixed": {"rule": asdict(fixed), "figures": summarise(*results[fixed], everything, labels, names, both)},
        "chosen": {"rule": asdict(chosen), "figures": summarise(*results[chosen], everything, labels, names, both)},
        "cross_validated": {
            "rules": chosen_on_halves,
            "figures": summarise(held_out_dice, held_out_empty, everything, labels, names, both),
        },
        "experts": {
            g: {"n": int((sel & both).sum()), "dice": float(between[sel & both].mean())} for g, sel in tumour_groups(labels, names).items()
        },
        "grid": [{"rule": asdict(r), "figures": summarise(*results[r], everything, labels, names, both)} for r in rules],
        "_chosen": chosen,
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="outliners' folders; the first one's validation split is used")
    add_data_argument(parser, overrides="the first checkpoint's train_config.json")
    parser.add_argument("--min-empty", type=float, default=0.95, help="share of no-tumour slices a rule must leave empty")
    parser.add_argument("--allow-mirror", action="store_true", help="let the mirror average (a second pass a request) be chosen")
    parser.add_argument("--write", action="store_true", help="store the first folder's chosen rule in its outline.json")
    parser.add_argument("--out", default=str(results_dir() / OUTLINE_RULES), help="where every figure goes (JSON)")
    args = parser.parse_args(argv)

    def run() -> None:
        split_of = Path(args.checkpoints[0])
        studies = [study(Path(f), split_of, args.data, args.min_empty, args.allow_mirror) for f in args.checkpoints]
        chosen = [s.pop("_chosen") for s in studies]
        if args.write:
            write_rule(split_of, chosen[0], note=f"chosen on validation by python -m train.outline_rules (min empty {args.min_empty})")
        Path(args.out).write_text(
            json.dumps({"min_empty": args.min_empty, "allow_mirror": args.allow_mirror, "models": studies}, indent=2) + "\n"
        )
        for s in studies:
            print(s["model"])
            for k in ("fixed", "chosen", "cross_validated"):
                f = s[k]["figures"]
                print(
                    f"  {k:16s}",
                    s[k].get("rule", s[k].get("rules")),
                    " ".join(f"{g}:" + "/".join(f"{f[g][e]:.3f}" for e in EXPERTS) for g in f if g != "no_tumour"),
                    f"empty {f['no_tumour']['empty_share']:.3f}",
                )
            f = s["experts"]
            print("  experts         ", " ".join(f"{g}:{r['dice']:.3f}" for g, r in f.items()))

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
