"""Fit a checkpoint's temperature on its own validation split; measure calibration before and after.

    python -m train.calibrate checkpoints/tf_efficientnet_lite0 --data ../shared/data/brain-tumor-mri

The validation images are the checkpoint's own (brainmri.data.split.checkpoint_split: its split rebuilt from
train_config.json, narrowed to its val_split.txt when it has one). Writes ``calibration.json`` (added
to the sha256 manifest), ``reliability.png`` and ``metrics.json["calibration"]`` with the
expected calibration error before and after on validation, Testing and unseen Testing.
Training runs it on every new checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from brainmri.calibration import calibrated_probs, fit_temperature, negative_log_likelihood, save_temperature
from brainmri.cli import add_data_argument, exit_code, setup_logging
from brainmri.data.split import checkpoint_split
from brainmri.eval.metrics import expected_calibration_error
from brainmri.eval.tables import update_metrics
from brainmri.models.checkpoint import RELIABILITY, TRAIN_CONFIG, UNSEEN, is_multitask, label_names, load_checkpoint
from train.config import TrainConfig
from train.evaluate import load_test_split, predict_logits

_logger = logging.getLogger(__name__)


def run_config(folder: str | Path, data: str | None = None) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (its train_config.json), optionally pointed at other ``data``."""
    path = Path(folder) / TRAIN_CONFIG
    if not path.is_file():
        raise ValueError(f"checkpoint {folder} has no train_config.json, so its validation split cannot be rebuilt")
    try:
        saved = json.loads(path.read_text())
        if is_multitask(folder):  # train.multitask's config: the split's fields are the classifiers', the rest its own
            saved = {k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
        cfg = TrainConfig(**saved)
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path} is not a training configuration: {e}") from None
    if data:
        cfg.data = str(data)
    return cfg


def calibrate_checkpoint(
    folder: str | Path, data: str | None = None, evaluate_test: bool = True, device: torch.device | str = "cpu"
) -> dict:
    """Fit and store the temperature of ``folder`` (inference on ``device``); return (and merge into metrics.json) the figures."""
    from brainmri.eval.report import reliability_diagram

    folder = Path(folder)
    cfg = run_config(folder, data)
    model = load_checkpoint(folder).to(device)
    _, val = checkpoint_split(folder, cfg.data)
    if val.class_names != label_names(folder):
        raise ValueError(f"data classes {val.class_names} differ from the checkpoint's {label_names(folder)}")
    val_logits = predict_logits(model, val)
    temperature = fit_temperature(val_logits, val.labels)
    result = {
        "temperature": temperature,
        "fitted_on": f"validation split ({len(val)} images, seed {cfg.seed}, val_fraction {cfg.val_fraction}, {cfg.split} rule)",
        "val_nll_before": negative_log_likelihood(val_logits, val.labels),
        "val_nll_after": negative_log_likelihood(val_logits, val.labels, temperature),
    }
    sets = {"val": (val_logits, val.labels)}
    if evaluate_test:
        test, clean = load_test_split(cfg.data, cfg.limit_per_class, cfg.seed)
        test_logits = predict_logits(model, test)
        sets["test"] = (test_logits, test.labels)
        sets[UNSEEN] = (test_logits[clean], test.labels[clean])
    for name, (logits, labels) in sets.items():
        result[f"{name}_ece_before"] = expected_calibration_error(calibrated_probs(logits, 1.0), labels)
        result[f"{name}_ece_after"] = expected_calibration_error(calibrated_probs(logits, temperature), labels)
    save_temperature(folder, temperature, **{k: result[k] for k in ("fitted_on", "val_nll_before", "val_nll_after")})

    name, (logits, labels) = next(reversed(sets.items()))  # the most telling set: unseen Testing if evaluated
    split = {"val": "validation", "test": "Testing", UNSEEN: "unseen Testing"}[name]
    curves = {f"{split}, before (T = 1)": 1.0, f"{split}, after (T = {temperature:.2f})": temperature}
    reliability_diagram({title: calibrated_probs(logits, t) for title, t in curves.items()}, labels, folder / RELIABILITY)
    update_metrics(folder, {"calibration": result})
    _logger.info(
        "temperature %.4f; ECE before -> after: %s",
        temperature,
        ", ".join(f"{n} {result[f'{n}_ece_before']:.4f} -> {result[f'{n}_ece_after']:.4f}" for n in sets),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder (with its train_config.json)")
    add_data_argument(parser, overrides="the data it was trained on")
    parser.add_argument("--skip-test", action="store_true", help="measure ECE on validation only, not on Testing")
    parser.add_argument("--model-card", action="store_true", help="rewrite the model card afterwards")
    args = parser.parse_args(argv)

    def run() -> None:
        calibrate_checkpoint(args.checkpoint, args.data, evaluate_test=not args.skip_test)
        if args.model_card:
            from brainmri.eval.report import write_model_card

            write_model_card(args.checkpoint)

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
