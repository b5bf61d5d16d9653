"""Every shipped checkpoint reproduces its metrics.json, by an evaluation written here with plain timm.

Nothing of brainmri's data or evaluation code is used: the model comes from
``timm.create_model("local-dir:...")``, preprocessing from timm's own eval transform of the
folder's pretrained_cfg, the images straight from the Testing folders with PIL, and the
unseen subset from its definition (32 x 32 greyscale, mean |difference| <= 2 grey levels to
some Training image or to its left-right mirror image).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import brainmri  # noqa: F401  (registers simple_cnn_* with timm for local-dir:)
from brainmri.models.registry import REGISTRY, get_spec
from brainmri.models.segmenters import SEGMENTERS
from brainmri.settings import checkpoint_dir

CHECKPOINT_DIR = checkpoint_dir()  # collected once: the folders parametrise the tests below
# Classifiers: timm folders (the tumour segmenter's folder is smp's, tested in tests/test_segmentation.py).
FOLDERS = sorted(
    p for p in CHECKPOINT_DIR.iterdir() if (p / "config.json").is_file() and "pretrained_cfg" in (p / "config.json").read_text()
)
# Segmenters: smp folders (the outline), each also a registry's SEGMENTERS entry.
SEGMENTER_FOLDERS = sorted(p for p in CHECKPOINT_DIR.iterdir() if p.name in SEGMENTERS and (p / "manifest.json").is_file())
MAX_BYTES = 20 * 2**20
SEGMENTER_MAX_BYTES = 24 * 2**20  # the one encoder also ships its OOD judge's statistics (ood.safetensors, 6.3 MiB)


def image_files(split_dir: Path) -> list[tuple[Path, str]]:
    """(file, class folder name) for every image, hidden folders and files skipped."""
    return [
        (f, c.name)
        for c in sorted(split_dir.iterdir())
        if c.is_dir() and not c.name.startswith(".")
        for f in sorted(c.iterdir())
        if f.is_file() and not f.name.startswith(".")
    ]


def thumbnails(files: list[Path]) -> torch.Tensor:
    return torch.from_numpy(
        np.stack([np.asarray(Image.open(f).convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32).ravel() for f in files])
    )


def has_no_twin(query: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """(N,) bool: no thumbnail of ``seen``, as is or mirrored left-right, within 2 grey levels of the query's."""
    mirrored = seen.view(-1, 32, 32).flip(-1).reshape(len(seen), -1)
    alone = torch.ones(len(query), dtype=torch.bool)
    for start in range(0, len(query), 128):
        for reference in (seen, mirrored):
            distance = torch.cdist(query[start : start + 128], reference, p=1) / query.shape[1]
            alone[start : start + 128] &= ~(distance <= 2.0).any(dim=1)
    return alone


@pytest.fixture(scope="module")
def testing(data_dir: Path) -> dict:
    """The Testing files, their class names, and which have no twin in Training in either orientation."""
    test = image_files(data_dir / "Testing")
    unseen = has_no_twin(thumbnails([f for f, _ in test]), thumbnails([f for f, _ in image_files(data_dir / "Training")]))
    return {"files": [f for f, _ in test], "classes": [c for _, c in test], "unseen": unseen.numpy()}


def test_checkpoints_are_shipped():
    assert FOLDERS, f"no checkpoint folder with a config.json in {CHECKPOINT_DIR}: train and ship the models first"
    shipped = {p.name for p in CHECKPOINT_DIR.iterdir() if (p / "manifest.json").is_file()}
    assert shipped == {p.name for p in FOLDERS + SEGMENTER_FOLDERS}, "a shipped folder that no test below checks"


def check_small_and_as_its_manifest_says(folder: Path, max_bytes: int) -> None:
    """Under ``max_bytes``, no training leftovers, the weights and config in the manifest and every file as it says."""
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= max_bytes, f"{folder.name}: {size / 2**20:.1f} MB"
    assert not (folder / "best.safetensors").exists() and not (folder / "resume").exists(), "training leftovers shipped"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "model.safetensors" in manifest and "config.json" in manifest
    for name, digest in manifest.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{name} differs from manifest.json"


@pytest.mark.parametrize("folder", SEGMENTER_FOLDERS, ids=[f.name for f in SEGMENTER_FOLDERS])
def test_segmenter_folder_is_complete_and_small(folder: Path):
    check_small_and_as_its_manifest_says(folder, SEGMENTER_MAX_BYTES)
    assert (folder / "val_split.txt").is_file() and (folder / "README.md").read_text().startswith("---\n")


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_folder_is_complete_and_small(folder: Path):
    check_small_and_as_its_manifest_says(folder, MAX_BYTES)
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "model-index:" in card  # its results: test_the_card_carries_model_index_results
    assert 300 <= metrics["test_unseen"]["n"] <= 380 and "test_dedup" not in metrics
    assert (folder / "val_split.txt").is_file(), "no val_split.txt: python -m train.leak_free FOLDER --data DATA"
    init = config.get("initialization", "")
    assert init and init != "unknown" and f"Weights initialised from: {init}" in card
    package = get_spec(folder.name).imagenet_init if folder.name in REGISTRY else None
    if package and "offline package" in init:  # the card names the package the weights came from, not Lite0's for all
        assert f"offline package {package}" in init, init


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_the_card_carries_model_index_results_the_hub_reads(folder: Path, tmp_path: Path):
    """Loaded back with huggingface_hub's ModelCard: accuracy on unseen Testing (n, 95% CI) and on official Testing, as
    metrics.json has them; and the card is what write_model_card makes of the folder today (regenerated, not typed)."""
    from huggingface_hub import ModelCard

    from brainmri.eval.report import DATASET, write_model_card

    card, metrics = ModelCard.load(folder / "README.md"), json.loads((folder / "metrics.json").read_text())
    assert card.data.library_name == "timm" and card.data.datasets == [DATASET] and card.data.model_name == folder.name
    results = {r.dataset_config: r for r in card.data.eval_results}
    assert sorted(results) == ["official", "unseen"] and {r.metric_type for r in results.values()} == {"accuracy"}
    for key, subset in (("test_unseen", "unseen"), ("test", "official")):
        recorded, result = metrics[key], results[subset]
        low, high = recorded["accuracy_ci95"]
        assert result.metric_value == round(recorded["accuracy"], 4) and result.dataset_split == "test"
        assert f"(n={recorded['n']}, 95% CI {low:.3f}-{high:.3f})" in result.metric_name
    for name in ("config.json", "metrics.json", "val_split.txt", "ood.json"):
        if (folder / name).is_file():
            shutil.copy(folder / name, tmp_path / name)
    assert write_model_card(tmp_path).read_text() == (folder / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_reproduces_metrics_json(folder: Path, testing: dict):
    metrics = json.loads((folder / "metrics.json").read_text())
    model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    label_names = json.loads((folder / "config.json").read_text())["label_names"]
    labels = np.array([label_names.index(c) for c in testing["classes"]])
    model = model.to(memory_format=torch.channels_last)  # same function; Lite2 evaluates 3x faster on CPU
    preds = []
    with torch.inference_mode():
        for start in range(0, len(labels), 4):  # small batches stay in the CPU's caches: 2x faster than 64 for Lite0
            batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in testing["files"][start : start + 4]])
            preds.append(model(batch.contiguous(memory_format=torch.channels_last)).argmax(dim=1))
    correct = torch.cat(preds).numpy() == labels

    for key, mask in (("test", np.ones_like(correct)), ("test_unseen", testing["unseen"])):
        recorded = metrics[key]
        assert recorded["n"] == mask.sum(), f"{key}: metrics.json has n={recorded['n']}, the Testing folder gives {mask.sum()}"
        hits = correct[mask].sum()
        # To within one image: a borderline prediction may flip between machines.
        assert abs(hits - recorded["accuracy"] * recorded["n"]) <= 1, (
            f"{key}: {hits}/{mask.sum()} right vs recorded {recorded['accuracy']:.4f}"
        )


@pytest.fixture(scope="module")
def training_thumbnails(data_dir: Path) -> dict[str, torch.Tensor]:
    """Every Training image's 32 x 32 thumbnail by dataset-relative path, made once for all the folders."""
    files = [f for f, _ in image_files(data_dir / "Training")]
    return dict(zip((f.relative_to(data_dir).as_posix() for f in files), thumbnails(files)))


@pytest.fixture(scope="module")
def twins_found() -> dict[tuple, int]:
    """(validation paths, train paths) -> how many of those validation images have a twin in that train part: the
    shipped folders share one split, and its check (a 4-second distance matrix) is made once for all of them."""
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("folder", FOLDERS + SEGMENTER_FOLDERS, ids=[f.name for f in FOLDERS + SEGMENTER_FOLDERS])
def test_no_validation_image_has_a_twin_in_its_train_part(folder: Path, data_dir: Path, training_thumbnails: dict, twins_found: dict):
    """val_split.txt lists what validation figures and fits use; none of it has a twin, mirrored or not, in the rest
    of Training that the checkpoint's split trained on (the train part: Training less its whole validation cut)."""
    from brainmri.data.split import checkpoint_split

    listed = [line for line in (folder / "val_split.txt").read_text().splitlines() if line and not line.startswith("#")]
    train, val = checkpoint_split(folder, str(data_dir))
    assert sorted(listed) == sorted(Path(s).relative_to(data_dir.resolve()).as_posix() for s in val.sources)
    trained = [Path(s).relative_to(data_dir.resolve()).as_posix() for s in train.sources]
    key = (tuple(sorted(listed)), tuple(sorted(trained)))
    if key not in twins_found:
        alone = has_no_twin(torch.stack([training_thumbnails[p] for p in key[0]]), torch.stack([training_thumbnails[p] for p in key[1]]))
        twins_found[key] = int((~alone).sum())
    assert twins_found[key] == 0, f"{twins_found[key]} validation images of {folder.name} have a twin in its train part"
