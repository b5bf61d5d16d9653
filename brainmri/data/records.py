"""Loading the Brain Tumor MRI data, the validation split, and preprocessing.

Data comes from an image folder (``DATA/{Training,Testing}/{class}/*.jpg``), listed as
``datasets``' imagefolder would list it, or a Hub dataset id, through ``datasets``. Preprocessing is derived from the model's own
pretrained_cfg (timm ``resolve_model_data_config``) in :func:`data_config` and
:func:`eval_transform`, used alike by training, evaluation and the app.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torch import nn
from tqdm import tqdm

from brainmri.data.imageio import IMAGE_SUFFIXES, decode_image

_logger = logging.getLogger(__name__)

# Folder names of the official splits, and the Hub split names they correspond to.
SPLIT_FOLDERS = {"train": "Training", "test": "Testing"}


@dataclass
class ImageRecords:
    """One split: where each image is, its label, and the class names.

    ``sources[i]`` is a file path (local folder) or the image's bytes (Hub dataset).
    """

    sources: list[str | bytes]
    labels: np.ndarray  # (N,) int64
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        """The image's path; a Hub dataset's image, by its content (the same in any subset, so that a saved
        ``val_split.txt`` or a teacher's split is compared image by image, not position by position)."""
        src = self.sources[i]
        return src if isinstance(src, str) else f"image sha256:{sha256(src)[:16]}"

    def subset(self, index: np.ndarray | list[int]) -> "ImageRecords":
        return ImageRecords([self.sources[i] for i in index], self.labels[np.asarray(index, dtype=int)], self.class_names)

    def paths_by_class(self) -> dict[str, list[Path]]:
        """A local folder's files per class, in listing order (a Hub dataset's images have no paths)."""
        if not all(isinstance(src, str) for src in self.sources):
            raise ValueError("these images come from a Hub dataset, not a folder: they have no paths")
        out: dict[str, list[Path]] = {c: [] for c in self.class_names}
        for src, label in zip(self.sources, self.labels):
            out[self.class_names[label]].append(Path(src))
        return out

    def read_bytes(self, i: int) -> bytes:
        src = self.sources[i]
        return Path(src).read_bytes() if isinstance(src, str) else src

    def open(self, i: int) -> Image.Image:
        """The i-th image as RGB, decoded as the app decodes uploads; ValueError naming the file if it cannot be."""
        return decode_image(self.read_bytes(i), self.name(i))


def _class_folders(split_dir: Path) -> list[Path]:
    # Hidden folders (.ipynb_checkpoints and the like) are debris, not classes.
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_folder(root: Path, split: str) -> Path:
    """The split folder, after checking it exists and every class folder holds images."""
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    split_dir = root / SPLIT_FOLDERS[split]
    if not split_dir.is_dir():
        raise ValueError(f"data folder {root} has no {SPLIT_FOLDERS[split]}/ split folder")
    classes = _class_folders(split_dir)
    if len(classes) < 2:
        raise ValueError(f"{split_dir} needs one sub-folder per class, found {len(classes)}")
    for folder in classes:
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir()):
            raise ValueError(f"class folder {folder} holds no images")
    return split_dir


def load_records(data: str | Path, split: str) -> ImageRecords:
    """Load one split ("train" or "test") of an image folder or a Hub dataset id."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {list(SPLIT_FOLDERS)}, got {split!r}")
    root = Path(data)
    if root.exists() or str(data).startswith((".", "/", "~")):
        return _folder_records(_check_folder(root.expanduser(), split))
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    try:
        ds = load_dataset(str(data), split=split)
    except Exception as e:  # datasets raises ConnectionError, DatasetNotFoundError, ... for a bad id or path
        raise ValueError(f"data folder not found, nor a loadable Hub dataset: {data} ({type(e).__name__}: {e})") from e
    ds = ds.cast_column("image", ImageFeature(decode=False))
    sources = [im["path"] if im.get("path") and Path(im["path"]).is_file() else im["bytes"] for im in ds["image"]]
    return ImageRecords(sources, np.asarray(ds["label"], dtype=np.int64), list(ds.features["label"].names))


def _folder_records(split_dir: Path) -> ImageRecords:
    """The images of ``split_dir/<class>/``, in the order and with the labels ``datasets``' imagefolder gives.

    Listed directly rather than through ``datasets``: the same records (sorted absolute paths,
    hidden files and folders skipped, classes in folder order), in milliseconds rather than
    seconds, and on machines without ``datasets`` (the GPU sweep's).
    """
    classes = _class_folders(split_dir.resolve())
    files = sorted(
        (str(f), label)
        for label, folder in enumerate(classes)
        for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
    )
    return ImageRecords([f for f, _ in files], np.array([label for _, label in files], dtype=np.int64), [c.name for c in classes])


# ---------------------------------------------------------------- preprocessing


def data_config(model: nn.Module) -> dict:
    """The model's preprocessing (input size, interpolation, crop, mean, std), from its pretrained_cfg."""
    return resolve_model_data_config(model)


def eval_transform(cfg: dict, normalize: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform for ``cfg``: PIL image -> (3, H, W) tensor.

    With ``normalize=False`` it gives the resized uint8 tensor, which is how training
    caches the data once; :func:`normalize_batch` then finishes the same preprocessing.
    """
    return create_transform(**cfg, is_training=False, normalize=normalize)


def normalize_batch(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, normalised with the model's mean and std."""
    mean = torch.tensor(cfg["mean"], device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg["std"], device=x.device).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


def decode_records(records: ImageRecords, cfg: dict, desc: str = "decoding") -> torch.Tensor:
    """Decode and resize every image once: uint8 (N, 3, H, W), ready for :func:`normalize_batch`."""
    transform = eval_transform(cfg, normalize=False)
    size = cfg["input_size"][1:]
    out = torch.empty((len(records), 3, *size), dtype=torch.uint8)
    for i in tqdm(range(len(records)), desc=desc, leave=False, mininterval=2):
        out[i] = transform(records.open(i))
    return out


def augment_batch(
    x: torch.Tensor, generator: torch.Generator | None = None, masks: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Augmentation suited to MRI slices, per sample, on whatever device ``x`` is on.

    Flips, a small affine (rotation +-10 deg, scale 0.9-1.1, shift +-6%), brightness and
    contrast; no hue jitter, since the scans are greyscale. Written on batched tensors
    (a few lines) so that it runs on the GPU as well, rather than per image on the CPU.

    Args:
        x: uint8 (B, 3, H, W).
        masks: optional uint8 (B, 1, H, W), 0 or 255: moved by the same flip and affine as their images.
    Returns:
        uint8 (B, 3, H, W); with ``masks``, the pair (images, masks).
    """
    b, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device="cpu").to(dev) * (hi - lo) + lo

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.9, 1.1)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, uniform(-0.06, 0.06)], 1), torch.stack([sin * flip, cos, uniform(-0.06, 0.06)], 1)],
        1,
    )  # (B, 2, 3)
    xf = x.float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xf = F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brightness = uniform(-20, 20).view(b, 1, 1, 1)
    contrast = uniform(0.85, 1.15).view(b, 1, 1, 1)
    mean = xf.mean(dim=(1, 2, 3), keepdim=True)
    xf = (xf - mean) * contrast + mean + brightness
    out = xf.clamp(0, 255).round().to(torch.uint8)
    if masks is None:
        return out
    moved = F.grid_sample(masks.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out, torch.where(moved >= 127.5, 255, 0).to(torch.uint8)


def relative_path(source: str, data: str | Path) -> str:
    """An image's path relative to the dataset folder (``Training/glioma/x.jpg``), the form split and mask lists use."""
    try:
        return Path(source).resolve().relative_to(Path(data).expanduser().resolve()).as_posix()
    except ValueError:
        return source  # a Hub image's name, or a file outside the folder


EXPERTS = {"cheng": "-masks", "brisc": "-masks-brisc"}  # expert -> suffix of its masks folder beside the data


def expert_folder(data: str | Path, expert: str) -> Path | None:
    """An expert's tumour masks beside a local data folder, ``<data><suffix>/``, when it holds a masks.csv; else None."""
    folder = Path(f"{Path(data).expanduser().resolve()}{EXPERTS[expert]}")
    return folder if (folder / MASKS_CSV).is_file() else None


def masks_folder(data: str | Path) -> Path | None:
    """The first expert's tumour masks (Cheng et al., figshare) beside a local data folder, ``<data>-masks/``, if there."""
    return expert_folder(data, "cheng")


MASKS_CSV = "masks.csv"  # path, class, figshare_id, transform, mask_pixels, mask_box_iou (the masks folder's README)


def mask_table(data: str | Path) -> dict[str, dict]:
    """``masks.csv`` rows by dataset-relative image path; empty when the masks folder is not beside the data."""
    import csv

    folder = masks_folder(data)
    if folder is None:
        return {}
    with (folder / MASKS_CSV).open(newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def figshare_ids(records: ImageRecords, data: str | Path) -> dict[int, int]:
    """Record index -> figshare scan id, for the records the masks table covers (images of one scan share an id)."""
    table = mask_table(data)
    if not table:
        _logger.warning("no %s beside %s: images of one figshare slice are grouped only where their pixels match (twins)", MASKS_CSV, data)
    out = {}
    for i in range(len(records)):
        row = table.get(relative_path(records.name(i), data))
        if row is not None:
            out[i] = int(row["figshare_id"])
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def limit_per_class(records: ImageRecords, k: int, seed: int = 0) -> ImageRecords:
    """At most ``k`` images of each class, drawn reproducibly (for tests and quick runs)."""
    rng = np.random.default_rng(seed)
    keep = [i for c in range(len(records.class_names)) for i in rng.permutation(np.flatnonzero(records.labels == c))[:k]]
    return records.subset(sorted(keep))
