"""Fit a checkpoint's OOD statistics (brainmri.ood) on its own split, and measure how well they flag.

    python -m train.ood fit checkpoints/tf_efficientnet_lite0 --data ../shared/data/brain-tumor-mri
    python -m train.ood measure checkpoints/tf_efficientnet_lite0 --data ../shared/data/brain-tumor-mri

``fit`` rebuilds the train/validation split training cut (brainmri.data.split.checkpoint_split), fits
the class means and one shared covariance on the training part and the distance threshold on
validation, and writes ``ood.safetensors`` + ``ood.json`` into the folder's sha256 manifest.
Training runs it on every new checkpoint. ``measure`` prints the share of real Testing slices
wrongly flagged and of the reference non-MRI pictures (train.ood_pictures) caught.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from brainmri.cli import add_data_argument, exit_code, setup_logging, write_json
from brainmri.data.preprocess import data_config, eval_transform
from brainmri.data.records import load_records, sha256
from brainmri.data.split import checkpoint_split
from brainmri.models.checkpoint import OOD_CONFIG, WEIGHTS, label_names, load_checkpoint
from brainmri.ood import DEFAULT_PERCENTILE, OODStats, colourfulness, grey_contrast, load_stats, logits_and_features
from brainmri.runtime import configure_torch_threads, eval_batch
from train.ood_pictures import reference_outliers

_logger = logging.getLogger(__name__)


class CannotFit(ValueError):
    """The checkpoint's split cannot support a fit (a class without training images, no validation images)."""


@torch.inference_mode()
def extract(
    model: nn.Module,
    images: Iterator[Image.Image],
    total: int,
    batch_size: int | None = None,
    desc: str = "features",
    device: torch.device | str = "cpu",
) -> dict:
    """Features, probabilities and image measures of RGB images, batched through the eval transform on ``device``
    (``batch_size`` by default the device's, ``brainmri.runtime.eval_batch``; channels_last, as served)."""
    transform = eval_transform(data_config(model))
    model = model.to(device)
    batch_size = batch_size or eval_batch(device)
    feats, probs, colour, contrast, batch = [], [], [], [], []

    def flush() -> None:
        logits, f = logits_and_features(model, torch.stack(batch).to(device).contiguous(memory_format=torch.channels_last))
        feats.append(f.float().cpu())
        probs.append(logits.softmax(dim=1).float().cpu())
        batch.clear()

    for im in tqdm(images, total=total, desc=desc, leave=False, mininterval=5):
        colour.append(colourfulness(im))
        contrast.append(grey_contrast(im))
        batch.append(transform(im))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {"features": torch.cat(feats), "probs": torch.cat(probs), "colour": np.array(colour), "contrast": np.array(contrast)}


def fit(folder: str | Path, data: str, percentile: float = DEFAULT_PERCENTILE, device: torch.device | str = "cpu") -> OODStats:
    """Fit class means and a shared covariance on the training part, the thresholds on validation; store them.

    Args:
        folder: checkpoint folder with its train_config.json.
        data: image folder or Hub dataset id: the images it was trained on (here or elsewhere).
        percentile: of the validation distances, the distance threshold.
        device: where the features are computed.
    """
    from sklearn.covariance import LedoitWolf

    folder = Path(folder)
    model = load_checkpoint(folder)
    train, val = checkpoint_split(folder, data)  # exactly the images training fitted and chose on
    if train.class_names != label_names(folder):
        raise ValueError(f"data classes {train.class_names} differ from the checkpoint's {label_names(folder)}")
    empty = [c for i, c in enumerate(train.class_names) if not (train.labels == i).any()]
    if empty:
        raise CannotFit(f"{folder}'s split has no training images of {', '.join(empty)}: no class mean to measure from")
    if not len(val):
        raise CannotFit(f"{folder}'s split has no validation images to set the distance threshold on")
    if len(val) < 100:  # a high percentile of fewer distances is about their maximum
        _logger.warning("%s: only %d validation images, so the OOD distance threshold is a rough one", folder, len(val))
    tr = extract(model, (train.open(i) for i in range(len(train))), len(train), desc="train features", device=device)
    feats, labels = tr["features"].double(), torch.from_numpy(train.labels)
    means = torch.stack([feats[labels == c].mean(dim=0) for c in range(len(train.class_names))])
    # Ledoit-Wolf shrinkage: D (up to 1280) is not small next to N, and the plain estimate is ill-conditioned.
    lw = LedoitWolf().fit((feats - means[labels]).numpy())
    stats = OODStats(means.float(), torch.from_numpy(lw.precision_).float(), 0.0, 0.0, 0.0, {})
    va = extract(model, (val.open(i) for i in range(len(val))), len(val), desc="validation features", device=device)
    val_dist = stats.distance(va["features"]).numpy()
    stats.threshold = float(np.percentile(val_dist, percentile))
    # Margins over the training images' own extremes: these two tests should not flag real slices at all.
    stats.colour_threshold = max(4.0, 2.0 * float(tr["colour"].max()))
    stats.contrast_threshold = 0.5 * float(tr["contrast"].min())
    stats.meta = {
        "percentile": percentile,
        "n_train": len(train),
        "n_val": len(val),
        "val_flagged_by_distance": float((val_dist > stats.threshold).mean()),
        "feature_dim": int(feats.shape[1]),
        "shrinkage": float(lw.shrinkage_),
        "weights_sha256": sha256((folder / WEIGHTS).read_bytes()),
        "data": str(data),
    }
    stats.save(folder)
    _logger.info(
        "wrote %s: threshold %.2f at the %.1fth percentile of %d validation distances",
        folder / OOD_CONFIG,
        stats.threshold,
        percentile,
        len(val),
    )
    return stats


def fit_or_warn(folder: str | Path, data: str, device: torch.device | str = "cpu") -> OODStats | None:
    """``fit``, or a warning and None when the checkpoint's split cannot support one (training's last step:
    a run on a few images per class still finishes, without OOD statistics)."""
    try:
        return fit(folder, data, device=device)
    except CannotFit as e:
        _logger.warning("no OOD statistics written: %s (fit them later: python -m train.ood fit %s --data DATA)", e, folder)
        return None


def measure(folder: str | Path, data: str) -> dict:
    """Share of reference outliers flagged and of real Testing slices wrongly flagged, printed and returned."""
    folder = Path(folder)
    stats = load_stats(folder)
    if stats is None:
        raise ValueError(f"{folder} has no OOD statistics for its current weights; run: python -m train.ood fit {folder} --data DATA")
    model = load_checkpoint(folder)
    test = load_records(data, "test")
    te = extract(model, (test.open(i) for i in range(len(test))), len(test), desc="Testing features")
    outliers = list(reference_outliers())
    ou = extract(model, (im for _, _, im in outliers), len(outliers), desc="outlier features")

    def flags(x: dict) -> np.ndarray:
        return np.logical_or.reduce(list(stats.flags(x["colour"], x["contrast"], stats.distance(x["features"]).numpy()).values()))

    test_flags, out_flags = flags(te), flags(ou)
    groups = np.array([g for g, _, _ in outliers])
    result = {
        "model": folder.name,
        "testing_wrongly_flagged": float(test_flags.mean()),
        "testing_n": len(test),
        "testing_accuracy_kept": float((te["probs"].argmax(1).numpy() == test.labels)[~test_flags].mean()),
        "outliers_flagged": float(out_flags.mean()),
        "outliers_n": len(outliers),
        "by_group": {g: {"flagged": float(out_flags[groups == g].mean()), "n": int((groups == g).sum())} for g in dict.fromkeys(groups)},
        "missed": [name for (_, name, _), f in zip(outliers, out_flags) if not f],
        "threshold": stats.threshold,
        "percentile": stats.meta.get("percentile"),
    }
    print(f"OOD check of {folder.name} (threshold {stats.threshold:.2f} = {result['percentile']}th percentile of validation distances)")
    print(f"  real Testing slices wrongly flagged: {result['testing_wrongly_flagged']:.1%} of {len(test)}")
    print(f"  non-MRI pictures flagged:            {result['outliers_flagged']:.1%} of {len(outliers)}")
    for g, r in result["by_group"].items():
        print(f"    {g:12s} {r['flagged']:.1%} of {r['n']}")
    print(f"  missed: {', '.join(result['missed']) or 'none'}")
    return result


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("fit", "fit and store the statistics beside the checkpoint"), ("measure", "print flag rates")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("checkpoint", nargs="+", help="checkpoint folder(s)")
        add_data_argument(p)
        if name == "fit":
            p.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE, help="of validation distances")
        else:
            p.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    configure_torch_threads()

    def run() -> None:
        results = []
        for folder in args.checkpoint:
            if args.command == "fit":
                fit(folder, args.data, args.percentile)
            else:
                results.append(measure(folder, args.data))
        if args.command == "measure":
            write_json(args.json, results)

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
