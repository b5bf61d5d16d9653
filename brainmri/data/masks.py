"""Where the experts' tumour masks lie beside a local data folder, and what their table says of each image (its
figshare scan, which groups the slices of one scan on one side of a split). The folders' READMEs describe them.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from brainmri.data.records import ImageRecords, relative_path

_logger = logging.getLogger(__name__)

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
