"""Evaluate a checkpoint folder on the official Testing split and its near-deduplicated subset.

    python -m train.evaluate checkpoints/tf_efficientnet_lite0 --data ../shared/data/brain-tumor-mri

The model is rebuilt with timm's ``local-dir:`` and fed through timm's eval transform
made from the folder's own pretrained_cfg. Results are merged into ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brainmri.checkpoint import label_names, load_checkpoint
from brainmri.data import ImageRecords, data_config, eval_transform, limit_per_class, load_records
from brainmri.duplicates import near_pairs, thumbnails
from brainmri.metrics import classification_report

_logger = logging.getLogger("evaluate")


@torch.no_grad()
def predict_records(model: torch.nn.Module, records: ImageRecords, batch_size: int = 64) -> np.ndarray:
    """(N, C) probabilities, each image through timm's eval transform of the model's config."""
    transform = eval_transform(data_config(model))
    probs = []
    for start in tqdm(range(0, len(records), batch_size), desc="evaluate", leave=False, mininterval=5):
        batch = torch.stack([transform(records.open(i)) for i in range(start, min(start + batch_size, len(records)))])
        probs.append(model(batch).softmax(dim=1))
    return torch.cat(probs).numpy()


def dedup_test_indices(train: ImageRecords, test: ImageRecords) -> np.ndarray:
    """Testing images with no exact or near-duplicate in Training."""
    twins = {i for i, _, _ in near_pairs(thumbnails(test), thumbnails(train))}
    return np.array([i for i in range(len(test)) if i not in twins], dtype=int)


def evaluate_checkpoint(folder: str | Path, data: str, limit: int = 0, seed: int = 0) -> dict:
    """Score ``folder`` on Testing and near-dedup Testing; update its metrics.json and confusion.png."""
    from brainmri.report import plot_confusion

    folder = Path(folder)
    model = load_checkpoint(folder)
    test, train = load_records(data, "test"), load_records(data, "train")
    if test.class_names != label_names(folder):
        raise ValueError(f"data classes {test.class_names} differ from the checkpoint's {label_names(folder)}")
    if limit:
        test = limit_per_class(test, limit, seed)
    clean = dedup_test_indices(train, test)
    probs = predict_records(model, test)
    results = {
        "test": classification_report(probs, test.labels, test.class_names),
        "test_dedup": classification_report(probs[clean], test.labels[clean], test.class_names),
    }
    results["test"]["split"] = "official Testing split" + (f" ({limit} per class)" if limit else "")
    results["test_dedup"]["split"] = "Testing images with no exact or near (32x32 MAD <= 2) twin in Training"
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics.update(results)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion(np.array(results["test"]["confusion_matrix"]), test.class_names, folder / "confusion.png", "Testing")
    for name in ("test", "test_dedup"):
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder")
    parser.add_argument("--data", default="../shared/data/brain-tumor-mri", help="image folder or Hub dataset id")
    parser.add_argument("--limit-per-class", type=int, default=0, help="evaluate on a few images per class only")
    parser.add_argument("--model-card", action="store_true", help="rewrite the model card afterwards")
    args = parser.parse_args(argv)
    try:
        evaluate_checkpoint(args.checkpoint, args.data, limit=args.limit_per_class)
        if args.model_card:
            from brainmri.report import write_model_card

            write_model_card(args.checkpoint)
    except ValueError as e:
        _logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
