"""Two experts' tumour masks beside the data, and what the multi-task model learns its outline from.

Cheng et al.'s figshare masks lie in ``<data>-masks/``, BRISC 2025's in ``<data>-masks-brisc/`` (each folder's
README). They were drawn independently and disagree (glioma Dice 0.73 between them), so neither is ground truth:
the outline's target is their mean where both exist (a soft mask: 1 where both say tumour, 0.5 where one does),
the one there is where only one exists, empty for a no-tumour slice, and none (no outline loss) for a tumour
image that no expert outlined (the SARTAJ and Br35H sources).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from brainmri.data.masks import EXPERTS, MASKS_CSV, expert_folder
from brainmri.data.records import ImageRecords, relative_path
from brainmri.vocabulary import NO_TUMOUR  # its slices: an empty mask from every expert, by definition

_logger = logging.getLogger(__name__)


def expert_paths(data: str | Path, expert: str) -> set[str]:
    """Dataset-relative paths of the images this expert outlined (empty when its folder is missing)."""
    folder = expert_folder(data, expert)
    if folder is None:
        return set()
    with (folder / MASKS_CSV).open(newline="") as f:
        return {row["path"] for row in csv.DictReader(f)}


def read_mask(folder: Path, rel: str, size: int) -> np.ndarray:
    """One expert's mask of an image: (size, size) uint8, 0 or 255 (bilinear resize, threshold at half)."""
    m = Image.open(folder / Path(rel).with_suffix(".png")).convert("L")
    if m.size != (size, size):
        m = m.resize((size, size), Image.BILINEAR)
    return (np.asarray(m) >= 128).astype(np.uint8) * 255


def decode_expert_masks(records: ImageRecords, data: str | Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every expert's mask of every image, and which ones exist.

    Returns:
        masks: uint8 (N, E, size, size), 0 or 255, E = len(EXPERTS) in its order; zeros where an expert has none.
        known: bool (N, E): the expert outlined this image, or it is a no-tumour slice (empty by definition).
    """
    names = list(EXPERTS)
    folders = {e: expert_folder(data, e) for e in names}
    outlined = {e: expert_paths(data, e) for e in names}
    negative = records.class_names.index(NO_TUMOUR)
    masks = torch.zeros((len(records), len(names), size, size), dtype=torch.uint8)
    known = torch.zeros((len(records), len(names)), dtype=torch.bool)
    for i in tqdm(range(len(records)), desc="masks", leave=False, mininterval=5):
        rel = relative_path(records.name(i), data)
        for j, e in enumerate(names):
            if rel in outlined[e]:
                masks[i, j] = torch.from_numpy(read_mask(folders[e], rel, size))
                known[i, j] = True
            elif records.labels[i] == negative:
                known[i, j] = True
    _logger.info("expert masks: %s", ", ".join(f"{e} {int(known[:, j].sum())}" for j, e in enumerate(names)))
    return masks, known


def soft_target(masks: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The outline's target: the mean of the experts who have a mask of the image.

    Args:
        masks: uint8 (B, E, H, W), 0 or 255.
        known: bool (B, E).
    Returns:
        target: float (B, 1, H, W) in [0, 1]; weight: float (B,), 1 where any expert has a mask, else 0.
    """
    k = known.float()[:, :, None, None]
    count = k.sum(dim=1, keepdim=True)
    target = (masks.float() / 255 * k).sum(dim=1, keepdim=True) / count.clamp(min=1)
    return target, (count[:, 0, 0, 0] > 0).float()
