"""Self-describing checkpoint folders in timm's Hub layout.

A folder holds ``config.json`` (architecture, num_classes, label_names, model_args and a
pretrained_cfg describing the exact preprocessing), ``model.safetensors`` (fp16),
``manifest.json`` (sha256 of each file, and of ``calibration.json`` with the fitted
temperature and ``ood.json`` + ``ood.safetensors`` with the OOD statistics when present),
plus metrics, history and a model card. Both
``timm.create_model("local-dir:FOLDER", pretrained=True)`` and this module load it. Every file name of a checkpoint
and of the results folder is spelled here; metrics.json's contents are read by brainmri.eval.tables.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf
from torch import nn

from brainmri.data.records import sha256
from brainmri.models.multitask import MODEL_CLASS as MULTITASK_CLASS
from brainmri.models.multitask import MultiTaskClassifier, UnetOnClassifier
from brainmri.settings import ROOT

_logger = logging.getLogger(__name__)

# The folder layout: every file name of a checkpoint has its home here.
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MANIFEST = "manifest.json"
CALIBRATION = "calibration.json"  # optional: written by train.calibrate, covered by the manifest
METRICS = "metrics.json"  # training, test and calibration figures (train.train, train.evaluate, train.calibrate)
UNSEEN = "test_unseen"  # its section on the Testing images with no twin in Training, mirrored or not (train.evaluate)
TRAIN_CONFIG = "train_config.json"  # the TrainConfig the weights were trained with
HISTORY = "history.csv"  # one row per epoch
OOD_CONFIG = "ood.json"  # optional: thresholds of the OOD check (brainmri.ood), written by train.ood, in the manifest
OOD_TENSORS = "ood.safetensors"  # optional: its class means and precision matrix, in the manifest
OUTLINE_RULE = "outline.json"  # optional: how a segmenter's map becomes an outline (train.outline_rules), in the manifest
SERVED_RULES = (CALIBRATION, OOD_CONFIG, OOD_TENSORS, OUTLINE_RULE)  # the optional files serving reads: in the manifest
VAL_SPLIT = "val_split.txt"  # the validation images (dataset-relative paths) its validation figures and fits use
CARD = "README.md"  # the model card (brainmri.eval.report.write_model_card)
CURVES = "curves.png"  # loss and accuracy per epoch (training)
CONFUSION = "confusion.png"  # on official Testing (train.evaluate)
RELIABILITY = "reliability.png"  # before and after temperature scaling (train.calibrate)
FIGURES = (CURVES, CONFUSION, RELIABILITY)
# What a run measured of its own weights: a fresh run into a used folder drops them first (drop_run_results), so that none
# is merged into, or served with, the new weights (the weights, config and card are rewritten as the run ends).
RUN_RESULTS = (METRICS, CALIBRATION, OOD_CONFIG, OOD_TENSORS, OUTLINE_RULE, VAL_SPLIT, HISTORY, *FIGURES)
BEST = "best.safetensors"  # a classifier run's best epoch so far (train.train), removed once the folder is written

# The results folder beside the checkpoints: where it is, and the files the reports write there.
EXPERIMENTS_CSV = "experiments.csv"  # every run, full precision (reports.results)
EXPERIMENTS_MD = "experiments.md"  # the same, rounded
ENSEMBLE_METRICS = "ensemble_metrics.json"  # the scored ensemble on Testing (train.evaluate --ensemble)
CAM_SANITY = "cam_sanity.json"  # the heatmaps' share inside the brain (reports.cam_sanity)
CAM_LOCALISATION = "cam_localisation.json"  # the pointing game on boxed slices (reports.cam_localisation)
ROOFLINE_CSV = "roofline.csv"  # FLOPs and bytes per training image (reports.roofline)
COST_PNG, PARAMS_PNG = "accuracy_cost.png", "accuracy_params.png"  # accuracy against compute, and size (reports.plots)
PER_CLASS_PNG = "per_class.png"  # each model's recall per class (reports.plots)
POINTS_JSON = "plots.json"  # every number those three pictures draw
DATA_COUNTS = "data_counts.json"  # images per class and split (reports.data_summary)
DATA_SAMPLES = "data_samples.png"  # a grid of Training slices, two per class
DATA_AUDIT = "data_audit.json"  # the duplicate audit's summary
MULTITASK_DEFAULT = "multitask_default.json"  # the one encoder against Lite0 and unet_lite0 (train.multitask_default)
OUTLINE_RULES = "outline_rules.json"  # the outline's rule chosen on validation, every figure (train.outline_rules)
SWEEP_SUMMARY = "sweep.json"  # a sweep's plan and outcome, in its run folder (train.sweep)


def results_dir() -> Path:
    """The repository's ``results/``: the one place that says where the generated tables and figures live."""
    return ROOT / "results"


def save_checkpoint(
    model: nn.Module, folder: str | Path, class_names: list[str], extra: dict | None = None, model_args: dict | None = None
) -> Path:
    """Write config.json and fp16 model.safetensors for ``model`` into ``folder``.

    ``extra`` is merged into config.json (e.g. the registry name and how it was initialised);
    ``model_args`` (the registry's architecture arguments) go where timm's ``local-dir:`` and
    ``hf-hub:`` loading read them back.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # fp16 halves the size; loading casts back to the model's fp32 parameters.
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, folder / WEIGHTS)
    save_config_for_hf(
        model, folder / CONFIG, model_config={"label_names": list(class_names), **(extra or {})}, model_args=model_args or None
    )
    write_manifest(folder)
    return folder


def drop_run_results(folder: str | Path) -> None:
    """A fresh run into a used folder (every trainer, before it trains): what the last run measured goes first.
    Otherwise its ``val_split.txt`` narrowed the new validation (or failed it after all the training), and its Testing
    figures, temperature, OOD statistics and outline rule stayed beside the new weights wherever the new run skips
    them, :func:`write_manifest` even vouching for the old temperature."""
    folder = Path(folder)
    stale = [name for name in RUN_RESULTS if (folder / name).is_file()]
    for name in stale:
        (folder / name).unlink()
    if stale:
        _logger.info("a fresh run in %s: dropped the previous run's %s", folder, ", ".join(stale))


def write_manifest(folder: str | Path) -> None:
    """Record the sha256 of the files that define the model (and its calibration), so tampering is caught at load."""
    folder = Path(folder)
    # Files that add_to_manifest added (e.g. ood.*) stay covered when it is rewritten.
    previous = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
    names = dict.fromkeys([CONFIG, WEIGHTS, *([CALIBRATION] if (folder / CALIBRATION).is_file() else []), *previous])
    digests = {name: sha256((folder / name).read_bytes()) for name in names if (folder / name).is_file()}
    (folder / MANIFEST).write_text(json.dumps(digests, indent=2) + "\n")


def add_to_manifest(folder: str | Path, names: list[str]) -> None:
    """Record the sha256 of ``names`` (files in ``folder``) in its manifest, which ``load_checkpoint`` verifies.

    Only these entries are (re)computed, so adding a file cannot bless altered weights.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.update({name: sha256((folder / name).read_bytes()) for name in names})
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ValueError(f"not a checkpoint folder (no {CONFIG}): {folder}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def verify_checkpoint(folder: str | Path) -> None:
    """ValueError naming the problem if a file is missing or differs from the manifest."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise ValueError(f"checkpoint {folder} is missing {name}")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return
    try:
        digests = json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {folder}: {MANIFEST} is not valid JSON: {e}") from None
    for name in SERVED_RULES:  # each changes what the app answers, so none may sit beside the weights unverified
        if (folder / name).is_file() and name not in digests:
            raise ValueError(f"checkpoint {folder}: {name} is not listed in {MANIFEST}")
    for name, digest in digests.items():
        if not (folder / name).is_file():
            raise ValueError(f"checkpoint {folder} is missing {name} (listed in {MANIFEST})")
        if sha256((folder / name).read_bytes()) != digest:
            raise ValueError(f"checkpoint {folder}: {name} does not match its sha256 in {MANIFEST}")


def load_checkpoint(folder: str | Path) -> nn.Module:
    """Rebuild the classifier from the folder alone (fp32, eval mode): a timm folder via timm's ``local-dir:``, a
    multi-task folder (:func:`is_multitask`) as the timm-classifier face of its model, whose forward also keeps the
    outline (brainmri.models.multitask.MultiTaskClassifier).

    Weights are read from safetensors only; nothing is unpickled.
    """
    verify_checkpoint(folder)
    read_config(folder)
    try:
        if is_multitask(folder):
            model = MultiTaskClassifier(UnetOnClassifier.from_pretrained(str(Path(folder).resolve())))
        else:
            model = timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True)
    except Exception as e:  # a corrupt safetensors file surfaces as several error types
        raise ValueError(f"cannot load checkpoint {folder}: {e}") from e
    return model.float().eval()


def label_names(folder: str | Path) -> list[str]:
    """The class of each logit: config.json's ``label_names`` (a multi-task folder saved without them has the
    model's default, brainmri.vocabulary.DATASET_LABELS)."""
    config = read_config(folder)
    if "label_names" not in config and config.get("_model_class") == MULTITASK_CLASS:
        return list(inspect.signature(UnetOnClassifier).parameters["label_names"].default)
    return list(config["label_names"])


def count_tensors_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def is_multitask(folder: str | Path) -> bool:
    """A folder brainmri.models.multitask.UnetOnClassifier saved: one model that classifies and outlines."""
    path = Path(folder) / CONFIG
    try:
        return path.is_file() and json.loads(path.read_text()).get("_model_class") == MULTITASK_CLASS
    except json.JSONDecodeError:
        return False


def is_segmenter(folder: str | Path) -> bool:
    """An smp segmentation model's folder (its config.json names smp's ``_model_class``), not a timm classifier's."""
    path = Path(folder) / CONFIG
    try:
        return path.is_file() and "_model_class" in json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
