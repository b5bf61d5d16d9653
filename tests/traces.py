"""Looking for what an upload left behind: files holding its bytes, files named after it, files made since."""

from __future__ import annotations

import os
from pathlib import Path


def walk_files(roots: list[Path], skip: Path):
    """Every regular file under ``roots``, except under ``skip`` (where a test keeps its own copy of the upload)."""
    for root in roots:
        for dirpath, _, names in os.walk(root):
            if Path(dirpath).resolve().is_relative_to(skip):
                continue
            for name in names:
                path = Path(dirpath) / name
                try:
                    if path.is_file():
                        yield path
                except OSError:
                    pass  # another process's file vanished or is unreadable: not ours


def files_containing(needle: bytes, roots: list[Path], skip: Path) -> list[Path]:
    """Files whose bytes contain ``needle``."""
    found = []
    for path in walk_files(roots, skip):
        try:
            if path.stat().st_size < 50 * 2**20 and needle in path.read_bytes():
                found.append(path)
        except OSError:
            pass
    return found


def files_named(part: str, roots: list[Path], skip: Path) -> list[Path]:
    return [p for p in walk_files(roots, skip) if part in str(p)]


def files_since(t0: float, root: Path, skip: Path) -> list[Path]:
    """Files under ``root`` modified at or after ``t0`` (time.time()): what a run wrote there."""
    out = []
    for path in walk_files([root], skip):
        try:
            if path.stat().st_mtime >= t0:
                out.append(path)
        except OSError:
            pass
    return out
