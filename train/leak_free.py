"""Re-fit what validation chose, on the leak-free part of a shipped checkpoint's own validation split.

    python -m train.leak_free checkpoints/* --data ../shared/data/brain-tumor-mri

The first shipped models were split with the "as-is" rule, which kept unmirrored twins together but let a
validation image's mirrored twin sit in the train part (training flips images, so that twin was trained on).
For each such checkpoint this keeps the validation images with no exact, near or mirrored twin in its train
part (brainmri.data.split.leak_free) and writes them as its ``val_split.txt``. Then, on those images only: validation
accuracy, loss and ECE (``metrics.json["validation"]``, the figures as first measured kept under
``validation_leaky``), the temperature (train.calibrate), the OOD thresholds (train.ood, where the checkpoint
has them); and it scores Testing and unseen Testing (train.evaluate) and rewrites the model card. No weights
change. A checkpoint cut with the mirror-aware rule is already leak-free: it gets its whole validation split
as ``val_split.txt`` if it lacks one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from brainmri.cli import add_data_argument, exit_code, setup_logging
from brainmri.data.cache import open_cache
from brainmri.data.split import DEFAULT_RULE, checkpoint_config, checkpoint_split, leak_free, split_rule, write_val_split
from brainmri.eval.metrics import classification_report
from brainmri.eval.tables import read_metrics, update_metrics
from brainmri.models.checkpoint import OOD_CONFIG, VAL_SPLIT, load_checkpoint
from train.evaluate import predict_records

_logger = logging.getLogger(__name__)

LEAKY_NOTE = "the validation split as first measured: some images had a mirrored twin in the train part"


def validation_figures(report: dict) -> dict:
    return {k: report[k] for k in ("accuracy", "accuracy_ci95", "loss", "ece", "n")}


def refit(folder: str | Path, data: str | None = None) -> dict:
    """Narrow ``folder``'s validation to its leak-free part and re-fit on it; returns old and new validation figures."""
    from brainmri.eval.report import write_model_card
    from train.calibrate import calibrate_checkpoint
    from train.evaluate import evaluate_checkpoint
    from train.ood import fit as fit_ood

    folder = Path(folder)
    cfg = checkpoint_config(folder)
    data = data or cfg["data"]
    (folder / VAL_SPLIT).unlink(missing_ok=True)  # rebuild from the rule, not from an earlier list
    train, val = checkpoint_split(folder, data)
    rule = split_rule(cfg)
    free = val if rule == DEFAULT_RULE else leak_free(train, val)
    note = f"leak-free part of the {rule!r} validation split: no exact, near or mirrored twin in the train part"
    write_val_split(folder, free, data, note)
    model = load_checkpoint(folder)
    probs = predict_records(model, val)
    keep = {s: i for i, s in enumerate(val.sources)}
    free_idx = [keep[s] for s in free.sources]
    before = validation_figures(classification_report(probs, val.labels, val.class_names))
    after = validation_figures(classification_report(probs[free_idx], free.labels, free.class_names))
    after["split"] = note
    sections = {"validation": after}
    if rule != DEFAULT_RULE:
        shipped = read_metrics(folder).get("validation_leaky") or {**before, "note": LEAKY_NOTE}
        sections["validation_leaky"] = shipped
    update_metrics(folder, sections)
    _logger.info(
        "%s: validation %.4f (n=%d) -> leak-free %.4f (n=%d)", folder.name, before["accuracy"], len(val), after["accuracy"], len(free)
    )
    calibrate_checkpoint(folder, data)
    if (folder / OOD_CONFIG).is_file():
        fit_ood(folder, data)
    evaluate_checkpoint(folder, data)
    write_model_card(folder)
    return {"model": folder.name, "rule": rule, "before": before, "after": after}


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="+", help="checkpoint folder(s), each with its train_config.json")
    add_data_argument(parser, overrides="the data each was trained on")
    args = parser.parse_args(argv)

    def run() -> None:
        with open_cache():  # thumbnails, splits and decoded images shared across the checkpoints
            rows = [refit(folder, args.data) for folder in args.checkpoint]
        print(f"{'model':34s} {'validation as shipped':>22s} {'leak-free validation':>22s}")
        for r in rows:
            b, a = r["before"], r["after"]
            print(f"{r['model']:34s} {b['accuracy']:>14.2%} (n={b['n']:3d}) {a['accuracy']:>14.2%} (n={a['n']:3d})")

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
