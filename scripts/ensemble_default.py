"""Would the default answer better as Lite0 and the one encoder's class head together? Measured, not served.

    HF_HUB_OFFLINE=1 python scripts/ensemble_default.py                  # prints; --json FILE keeps the figures

The outline already runs ``multitask_lite0``'s forward on every MRI slice, and that forward's class head comes free
with it, so the mean of the two calibrated probabilities (``brainmri.eval.ensemble``) would cost a request nothing
more. Both models were cut by the same mirror-aware rule, so they are scored on the very same validation scans, and
on official and unseen Testing. Equal weights, fixed before looking; each member's temperature is its own, fitted on
that validation split. A last row fits one more temperature on the mean's log-probabilities, on validation too (does
it bring the mean's calibration where the issue asks?). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainmri.calibration import calibrated_probs, fit_temperature, load_temperature  # noqa: E402
from brainmri.data.split import checkpoint_split  # noqa: E402
from brainmri.eval.ensemble import mean_probs  # noqa: E402
from brainmri.eval.metrics import classification_report  # noqa: E402
from brainmri.models.checkpoint import load_checkpoint  # noqa: E402
from brainmri.settings import default_data  # noqa: E402
from train.evaluate import load_test_split, predict_logits, score  # noqa: E402

MEMBERS = ("tf_efficientnet_lite0", "multitask_lite0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=default_data(), help="the data folder")
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"), help="the folder of shipped checkpoints to compare")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    folders = [Path(args.checkpoints) / m for m in MEMBERS]
    splits = [checkpoint_split(f, args.data)[1] for f in folders]
    if [splits[0].name(i) for i in range(len(splits[0]))] != [splits[1].name(i) for i in range(len(splits[1]))]:
        print("the two models' validation scans differ: nothing to compare on", file=sys.stderr)
        return 1
    val = splits[0]
    test, unseen = load_test_split(args.data)
    probs = {}
    for name, folder in zip(MEMBERS, folders):
        model, t = load_checkpoint(folder), load_temperature(folder)
        probs[name] = {"val": calibrated_probs(predict_logits(model, val), t), "test": calibrated_probs(predict_logits(model, test), t)}
    probs["mean of both"] = {s: mean_probs([probs[m][s] for m in MEMBERS]) for s in ("val", "test")}
    log_mean = {s: np.log(np.clip(p, 1e-12, None)) for s, p in probs["mean of both"].items()}
    extra = fit_temperature(log_mean["val"], val.labels)  # on validation only
    probs[f"mean, refit T={extra:.3f}"] = {s: calibrated_probs(v, extra) for s, v in log_mean.items()}
    figures = {}
    for name, p in probs.items():
        reports = {"validation": classification_report(p["val"], val.labels, val.class_names), **score(p["test"], test, unseen)}
        figures[name] = {k: {"n": r["n"], "accuracy": r["accuracy"], "ece": r["ece"]} for k, r in reports.items()}
        row = "  ".join(f"{k} {r['accuracy']:.2%} (n={r['n']}, ECE {r['ece']:.2%})" for k, r in figures[name].items())
        print(f"{name:24s} {row}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
