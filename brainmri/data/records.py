"""Loading the Brain Tumor MRI data: one split's images and labels, from a folder or a Hub dataset.

Data comes from an image folder (``DATA/{Training,Testing}/{class}/*.jpg``), listed as
``datasets``' imagefolder would list it, or a Hub dataset id, through ``datasets``. What is done to the images
before a model sees them is in :mod:`brainmri.data.preprocess`; where the experts' masks lie, :mod:`brainmri.data.masks`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from brainmri.data.imageio import IMAGE_SUFFIXES, decode_image

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


def relative_path(source: str, data: str | Path) -> str:
    """An image's path relative to the dataset folder (``Training/glioma/x.jpg``), the form split and mask lists use."""
    try:
        return Path(source).resolve().relative_to(Path(data).expanduser().resolve()).as_posix()
    except ValueError:
        return source  # a Hub image's name, or a file outside the folder


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def limit_per_class(records: ImageRecords, k: int, seed: int = 0) -> ImageRecords:
    """At most ``k`` images of each class, drawn reproducibly (for tests and quick runs)."""
    rng = np.random.default_rng(seed)
    keep = [i for c in range(len(records.class_names)) for i in rng.permutation(np.flatnonzero(records.labels == c))[:k]]
    return records.subset(sorted(keep))
