"""Does the default answer better as Lite0 and the one encoder's class head together? The offline figures, and the served.

    HF_HUB_OFFLINE=1 python scripts/ensemble_default.py                  # prints; --json FILE keeps the figures
    HF_HUB_OFFLINE=1 python scripts/ensemble_default.py --served         # + the app's default as served: results/<name>.json
    HF_HUB_OFFLINE=1 python scripts/ensemble_default.py --checkpoints DIR --served --validation-only   # a candidate, before Testing

With ``--served`` the app's default (registry ``APP_DEFAULT``, the ensemble ``lite0_and_multitask``) also answers every
validation and Testing image through the serving path (``Predictor.predict_many``: the decoder, each member's own
preprocessing, the outline's bf16 forward where this CPU computes bf16 natively), and its figures are written in
metrics.json's layout to ``results/lite0_and_multitask.json``: what the model list's label and the README's table
show for it. That file is the served answer's only source of figures.

The outline already runs ``multitask_lite0``'s forward on every MRI slice, and that forward's class head comes free
with it, so the mean of the two calibrated probabilities (``brainmri.eval.ensemble``) costs a request no extra pass.
Both models were cut by the same mirror-aware rule, so they are scored on the very same validation scans, and on
official and unseen Testing. Equal weights, fixed before looking; each member's temperature is its own, fitted on that
validation split. A last row fits one more temperature on the mean's log-probabilities, on validation too (does it
bring the mean's calibration where the issue asks?). Beside each ECE, the ECE a perfectly calibrated model with the
same confidences shows on a set this size (``brainmri.eval.metrics.ece_if_calibrated``). Each row is also set against
Lite0 on the same validation scans by McNemar's exact test: is its lead more than chance? Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from brainmri.calibration import calibrated_probs, fit_temperature, load_temperature  # noqa: E402
from brainmri.cli import add_data_argument, write_json  # noqa: E402
from brainmri.data.imageio import load_image  # noqa: E402
from brainmri.data.split import checkpoint_split  # noqa: E402
from brainmri.eval.ensemble import mean_probs  # noqa: E402
from brainmri.eval.metrics import classification_report, paired_comparison  # noqa: E402
from brainmri.eval.tables import read_metrics  # noqa: E402
from brainmri.models.catalog import ModelSource, ensemble_figures, ensemble_sources  # noqa: E402
from brainmri.models.checkpoint import UNSEEN, load_checkpoint  # noqa: E402
from brainmri.models.registry import APP_DEFAULT, ENSEMBLES  # noqa: E402
from brainmri.serving import Predictor  # noqa: E402
from brainmri.settings import checkpoint_dir  # noqa: E402
from train.evaluate import load_test_split, predict_logits, score  # noqa: E402

MEMBERS = ENSEMBLES[APP_DEFAULT].members


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--checkpoints", default=str(checkpoint_dir()), help="the folder of checkpoint folders to compare")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--served", action="store_true", help="also score the app's default as served; write its figures file")
    parser.add_argument(
        "--validation-only", action="store_true", help="score validation alone (a choice made before Testing); no results/<name>.json"
    )
    args = parser.parse_args(argv)
    shipped = Path(args.checkpoints).resolve() == checkpoint_dir().resolve()
    if args.served and not (shipped or args.validation_only):
        parser.error("--served on a candidate --checkpoints folder needs --validation-only: results/ holds the shipped figures")
    folders = [Path(args.checkpoints) / m for m in MEMBERS]
    splits = [checkpoint_split(f, args.data)[1] for f in folders]
    if [splits[0].name(i) for i in range(len(splits[0]))] != [splits[1].name(i) for i in range(len(splits[1]))]:
        print("the two models' validation scans differ: nothing to compare on", file=sys.stderr)
        return 1
    val = splits[0]
    test, unseen = (None, None) if args.validation_only else load_test_split(args.data)
    images = {"val": val} | ({} if test is None else {"test": test})
    probs = {}
    for name, folder in zip(MEMBERS, folders):
        model, t = load_checkpoint(folder), load_temperature(folder)
        probs[name] = {s: calibrated_probs(predict_logits(model, x), t) for s, x in images.items()}
    probs["mean of both"] = {s: mean_probs([probs[m][s] for m in MEMBERS]) for s in images}
    log_mean = {s: np.log(np.clip(p, 1e-12, None)) for s, p in probs["mean of both"].items()}
    extra = fit_temperature(log_mean["val"], val.labels)  # on validation only
    probs[f"mean, refit T={extra:.3f}"] = {s: calibrated_probs(v, extra) for s, v in log_mean.items()}
    figures = {}
    for name, p in probs.items():
        reports = {"validation": classification_report(p["val"], val.labels, val.class_names)}
        if test is not None:
            reports |= score(p["test"], test, unseen)
        keys = ("n", "accuracy", "ece", "ece_ci95", "ece_if_calibrated")
        figures[name] = {k: {key: r[key] for key in keys} for k, r in reports.items()}
        row = "  ".join(f"{k} {r['accuracy']:.2%} (n={r['n']}, {_ece(r)})" for k, r in figures[name].items())
        print(f"{name:24s} {row}")
    for name in (*MEMBERS[1:], "mean of both"):  # is a lead over Lite0 more than chance? the same images, paired
        # (the refit row is left out: a temperature keeps the mean's argmax, so its answers are the mean's)
        figures[name]["validation_vs_lite0"] = pair = paired_vs(probs[name]["val"], probs[MEMBERS[0]]["val"], val.labels)
        counts = f"{pair['only_a']} right only here, {pair['only_b']} only there"
        print(f"{name:24s} validation, against {MEMBERS[0]}: {counts}, McNemar p = {pair['p_value']:.2f}")
    write_json(args.json, figures)
    if args.served:
        served = served_figures(val, test, unseen, Path(args.checkpoints))
        sets = [k for k in ("validation", "test", UNSEEN) if k in served]
        row = "  ".join(f"{k} {served[k]['accuracy']:.2%} (n={served[k]['n']}, {_ece(served[k])})" for k in sets)
        print(f"{APP_DEFAULT + ' (served)':24s} {row}")
        if test is not None:
            write_json(ensemble_figures(APP_DEFAULT), served)
            print(f"wrote {ensemble_figures(APP_DEFAULT)}")
    return 0


def paired_vs(probs: np.ndarray, other: np.ndarray, labels: np.ndarray) -> dict:
    """McNemar's exact test of two sets of answers to the same images (brainmri.eval.metrics.paired_comparison)."""
    return paired_comparison(probs.argmax(axis=1) == labels, other.argmax(axis=1) == labels)


def _ece(r: dict) -> str:
    lo, hi = r["ece_ci95"]
    floor = r["ece_if_calibrated"]
    return f"ECE {r['ece']:.2%}, 95% CI {lo:.2%}-{hi:.2%}; a calibrated model {floor['mean']:.2%}, p = {floor['p_value']:.2f}"


def served_probs(predictor: Predictor, paths: list[str], labels: list[str], batch: int = 16) -> np.ndarray:
    """(N, C) the app's default's probabilities for these image files, in ``labels``' order, as the app answers them
    (no outline kept)."""
    out = []
    for i in tqdm(range(0, len(paths), batch), desc="served", unit="batch"):
        results = predictor.predict_many([load_image(p) for p in paths[i : i + batch]], APP_DEFAULT, outline=False)
        out.extend([[r.probabilities[c] for c in labels] for r in results])
    probs = np.asarray(out)
    return probs / probs.sum(axis=1, keepdims=True)  # float32 sums off by ~1e-7: scikit-learn's log loss asks for exact


def served_figures(val, test, unseen: np.ndarray | None, folder: Path) -> dict:
    """The app's default scored through the serving path on the checkpoints in ``folder``, in metrics.json's layout
    (brainmri.eval.tables); with ``test`` None, validation alone."""
    spec = ENSEMBLES[APP_DEFAULT]
    found = {m: ModelSource(m, "local", str(folder / m)) for m in spec.members}
    outliner = ModelSource(spec.outliner, "local", str(folder / spec.outliner))
    # the answer alone: the OOD verdict is not part of the class
    predictor = Predictor(found | ensemble_sources(found, spec.outliner), ood_model=None, segmenter=outliner)
    if predictor.ensemble(APP_DEFAULT) is None:
        raise SystemExit(f"{APP_DEFAULT} is not servable here: {predictor.sources[APP_DEFAULT].reason}")
    labels = predictor.model(APP_DEFAULT).labels
    if labels != list(val.class_names) or (test is not None and labels != list(test.class_names)):
        raise SystemExit(f"the served classes {labels} are not the data's {val.class_names}")
    p_val = served_probs(predictor, [val.name(i) for i in range(len(val))], labels)
    validation = {**classification_report(p_val, val.labels, val.class_names), "split": "the members' shared leak-free validation"}
    if test is None:
        return {"validation": validation}
    p_test = served_probs(predictor, [test.name(i) for i in range(len(test))], labels)
    members = [read_metrics(Path(predictor.sources[m].location)) for m in spec.members]
    return {
        "model": APP_DEFAULT,
        "members": list(spec.members),
        "parameters": sum(m["parameters"] for m in members),  # both networks run on every MRI slice
        "input_size": " / ".join(str(m["input_size"]) for m in members),
        "method": "mean of the members' calibrated probabilities, as served (brainmri.serving.classify.answered_probs)",
        "command": "HF_HUB_OFFLINE=1 python scripts/ensemble_default.py --served",
        "validation": validation,
        **score(p_test, test, unseen),
    }


if __name__ == "__main__":
    sys.exit(main())
