"""Evaluate a checkpoint folder, or an ensemble of them, on the official Testing split and its unseen subset.

    python -m train.evaluate checkpoints/tf_efficientnet_lite0 --data ../shared/data/brain-tumor-mri
    python -m train.evaluate --ensemble checkpoints/simple_cnn_7 checkpoints/tf_efficientnet_lite0 --data ...
    python -m train.evaluate checkpoints/simple_cnn_7 --redraw-confusion     # confusion.png again from metrics.json

The model is rebuilt with timm's ``local-dir:`` and fed through timm's eval transform
made from the folder's own pretrained_cfg. ``test_unseen`` is the Testing images with no exact, near or
mirrored twin in Training (brainmri.data.duplicates.unseen_indices): what no model has seen, since training flips
images. Results are merged into ``metrics.json``;
an ensemble's (mean of calibrated probabilities) go to ``results/ensemble_metrics.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brainmri.cli import add_data_argument, exit_code, setup_logging
from brainmri.data.cache import decode_records, memo, source_key, thumbnails
from brainmri.data.duplicates import NEAR_THRESHOLD, THUMB, unseen_indices
from brainmri.data.preprocess import data_config, normalize_batch
from brainmri.data.records import ImageRecords, limit_per_class, load_records
from brainmri.eval.metrics import classification_report
from brainmri.eval.tables import read_metrics, update_metrics
from brainmri.models.checkpoint import CONFUSION, ENSEMBLE_METRICS, METRICS, UNSEEN, label_names, load_checkpoint, read_config, results_dir
from brainmri.runtime import eval_batch

_logger = logging.getLogger(__name__)


def _weights_key(model: torch.nn.Module) -> str:
    """A fingerprint of the model's weights, every byte of them (the memoised logits' key: two models that differ
    anywhere get two keys; the same checkpoint loaded twice, one)."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def predict_logits(model: torch.nn.Module, records: ImageRecords, batch_size: int | None = None) -> np.ndarray:
    """(N, C) logits, each image through timm's eval transform of the model's config, on the model's device, in
    batches of ``batch_size`` (by default the device's, ``brainmri.runtime.eval_batch``).

    The images are decoded once to uint8 by that transform and normalised per batch, which is the transform's
    own last step. Inside ``brainmri.data.cache.open_cache`` both the decoded images and the logits are memoised
    (train.leak_free calibrates and evaluates one checkpoint on the same images in turn).
    """
    batch_size = batch_size or eval_batch(next(model.parameters()).device)
    key = ("logits", _weights_key(model), source_key(records), batch_size)
    return memo(key, lambda: _predict_logits(model, records, batch_size))


@torch.no_grad()
def _predict_logits(model: torch.nn.Module, records: ImageRecords, batch_size: int) -> np.ndarray:
    cfg = data_config(model)
    images = decode_records(records, cfg, "decode test")
    device = next(model.parameters()).device
    logits = []
    for start in tqdm(range(0, len(records), batch_size), desc="evaluate", leave=False, mininterval=5):
        batch = normalize_batch(images[start : start + batch_size].to(device), cfg)
        # channels_last: oneDNN's convolutions take it without a copy a layer; the same logits to ~1e-5, and Lite0 and
        # the multi-task model evaluate 1.5-2x faster on the CPU (the weights are left as the caller has them)
        logits.append(model(batch.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(logits).numpy()


def predict_records(model: torch.nn.Module, records: ImageRecords, batch_size: int | None = None) -> np.ndarray:
    """(N, C) probabilities (uncalibrated softmax), each image through timm's eval transform of the model's config."""
    return torch.from_numpy(predict_logits(model, records, batch_size)).softmax(dim=1).numpy()


UNSEEN_SPLIT = f"Testing images with no exact, near ({THUMB}x{THUMB} MAD <= {NEAR_THRESHOLD:g}) or mirrored twin in Training"


def unseen_test_indices(train: ImageRecords, test: ImageRecords) -> np.ndarray:
    """Testing images with no twin in Training in either orientation."""
    return memo(("unseen", source_key(train), source_key(test)), lambda: unseen_indices(thumbnails(test), thumbnails(train)))


def load_test_split(data: str, limit: int = 0, seed: int = 0) -> tuple[ImageRecords, np.ndarray]:
    """The Testing split (``limit`` per class if set) and the indices of its unseen subset."""
    test, train = load_records(data, "test"), load_records(data, "train")
    if limit:
        test = limit_per_class(test, limit, seed)
    return test, unseen_test_indices(train, test)


def score(probs: np.ndarray, test: ImageRecords, unseen: np.ndarray, limit: int = 0) -> dict:
    """``classification_report`` on Testing and on its unseen subset, each labelled with its split."""
    results = {
        "test": classification_report(probs, test.labels, test.class_names),
        UNSEEN: classification_report(probs[unseen], test.labels[unseen], test.class_names),
    }
    results["test"]["split"] = "official Testing split" + (f" ({limit} per class)" if limit else "")
    results[UNSEEN]["split"] = UNSEEN_SPLIT
    for name in ("test", UNSEEN):
        r = results[name]
        _logger.info(
            "%s: accuracy %.4f (95%% CI %.4f-%.4f), n=%d, loss %.4f, ECE %.4f",
            name,
            r["accuracy"],
            *r["accuracy_ci95"],
            r["n"],
            r["loss"],
            r["ece"],
        )
    return results


def evaluate_checkpoint(folder: str | Path, data: str, limit: int = 0, seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """Score ``folder`` on Testing and unseen Testing (inference on ``device``); update its metrics.json and confusion.png."""
    folder = Path(folder)
    model = load_checkpoint(folder).to(device)
    test, clean = load_test_split(data, limit, seed)
    if test.class_names != label_names(folder):
        raise ValueError(f"data classes {test.class_names} differ from the checkpoint's {label_names(folder)}")
    results = score(predict_records(model, test), test, clean, limit)
    update_metrics(folder, results, drop=["test_dedup"])  # near-dedup missed mirrored twins: test_unseen replaces it
    redraw_confusion(folder)  # from the matrix just written
    return results


def redraw_confusion(folder: str | Path) -> Path:
    """``folder``'s confusion.png drawn again from the matrix its metrics.json holds (no model is run)."""
    from brainmri.eval.report import plot_confusion

    folder = Path(folder)
    matrix = (read_metrics(folder).get("test") or {}).get("confusion_matrix")
    if matrix is None:
        raise ValueError(f"{folder / METRICS} has no Testing confusion matrix: run python -m train.evaluate {folder} first")
    plot_confusion(np.array(matrix), label_names(folder), folder / CONFUSION, "Testing")
    return folder / CONFUSION


def evaluate_ensemble(folders: list[str | Path], data: str, out: str | Path, limit: int = 0, seed: int = 0) -> dict:
    """Score the mean of the folders' calibrated probabilities like one model; write ``out`` (JSON) and figures beside it.

    Each member is run through its own preprocessing (input sizes may differ).
    """
    from brainmri.calibration import load_temperature
    from brainmri.eval.ensemble import ensemble_probs
    from brainmri.eval.report import plot_confusion, reliability_diagram

    models = [load_checkpoint(folder) for folder in folders]  # a broken member fails before any data is read
    test, clean = load_test_split(data, limit, seed)
    members, names = [], []
    for folder, model in zip(folders, models):
        if label_names(folder) != test.class_names:
            raise ValueError(f"data classes {test.class_names} differ from {folder}'s {label_names(folder)}")
        members.append((predict_logits(model, test), load_temperature(folder)))
        names.append(read_config(folder).get("registry_name", Path(folder).name))
    probs = ensemble_probs(members)
    results = {
        "model": "ensemble",
        "members": [{"name": n, "folder": str(f), "temperature": t} for n, f, (_, t) in zip(names, folders, members)],
        "method": "mean of the members' calibrated probabilities softmax(logits / T)",
        **score(probs, test, clean, limit),
        "data": data,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot_confusion(np.array(results["test"]["confusion_matrix"]), test.class_names, out.with_name(f"{out.stem}_confusion.png"), "Testing")
    reliability_diagram({"ensemble, Testing": probs}, test.labels, out.with_name(f"{out.stem}_reliability.png"))
    _logger.info("wrote %s", out)
    return results


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint folder")
    parser.add_argument("--ensemble", nargs="+", metavar="FOLDER", help="evaluate the mean of these checkpoints' calibrated probabilities")
    parser.add_argument("--out", default=str(results_dir() / ENSEMBLE_METRICS), help="where --ensemble writes its metrics")
    add_data_argument(parser)
    parser.add_argument("--limit-per-class", type=int, default=0, help="evaluate on a few images per class only")
    parser.add_argument("--model-card", action="store_true", help="rewrite the model card afterwards")
    parser.add_argument("--redraw-confusion", action="store_true", help="only draw confusion.png again from metrics.json (no model run)")
    args = parser.parse_args(argv)
    if args.redraw_confusion and (args.ensemble or not args.checkpoint):
        parser.error("--redraw-confusion takes one checkpoint folder, and no --ensemble")
    if args.redraw_confusion:
        return exit_code(lambda: _logger.info("wrote %s", redraw_confusion(args.checkpoint)), _logger)
    if (args.checkpoint is None) == (args.ensemble is None):
        parser.error("give one checkpoint folder, or --ensemble FOLDER FOLDER ...")
    if args.ensemble:
        return exit_code(lambda: evaluate_ensemble(args.ensemble, args.data, args.out, limit=args.limit_per_class), _logger)

    def run() -> None:
        evaluate_checkpoint(args.checkpoint, args.data, limit=args.limit_per_class)
        if args.model_card:
            from brainmri.eval.report import write_model_card

            write_model_card(args.checkpoint)

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
