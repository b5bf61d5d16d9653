"""What one device call carries, measured the way the device tool measures it, and the steps around that call.

    python -m train.transfer check            # sizes: working tree (checkpoints/ left out) + data/, against the limits
    python -m train.transfer stash            # take the tracked checkpoints/ out of the working tree (refuses if changed)
    python -m train.transfer restore          # put them back from git: git checkout -- checkpoints

The device tool sends the tracked files and the untracked files git does not ignore, plus the
carried folders, 64 MiB in all. ``scripts/prepare_device_data.sh`` fills the carried ``data/`` and
stashes ``checkpoints/`` (the sweep trains from scratch and never reads them), so that what
travels stays under ``TARGET_BYTES``, 6 MiB below the limit, however many checkpoints are committed.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from brainmri.cli import exit_code, setup_logging

_logger = logging.getLogger(__name__)

LIMIT_BYTES = 64 * 2**20  # the device tool's cap on the working tree plus carried folders
TARGET_BYTES = 58 * 2**20  # what we allow ourselves: 6 MiB to spare
CARRIED = "data"  # the one carried folder: the data set copy and the timm wheel
STASHED = "checkpoints"  # tracked, but left behind for the call
ROOT = Path(__file__).resolve().parent.parent


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True, text=True).stdout


def travelling_files(repo: Path = ROOT) -> list[Path]:
    """Tracked files and untracked files git does not ignore, as they lie in the working tree now."""
    names = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return [repo / n for n in names if n and (repo / n).is_file()]


def folder_bytes(folder: Path) -> int:
    return sum(os.path.getsize(Path(d) / f) for d, _, names in os.walk(folder) for f in names)


def transfer_bytes(repo: Path = ROOT, carried: Path | None = None, stashed: str | None = STASHED) -> dict[str, int]:
    """Bytes that travel: the working tree (with ``stashed`` left out, as the stash step leaves it) and the
    carried folder (``repo/data`` unless given; it is git-ignored, so never counted twice)."""
    tree = [f for f in travelling_files(repo) if not (stashed and f.relative_to(repo).parts[0] == stashed)]
    sizes = {"tree": sum(f.stat().st_size for f in tree), "carried": folder_bytes(carried or repo / CARRIED)}
    sizes["total"] = sizes["tree"] + sizes["carried"]
    return sizes


def check(repo: Path = ROOT) -> dict[str, int]:
    """Print what travels; ValueError, naming the largest files, when it exceeds TARGET_BYTES."""
    sizes = transfer_bytes(repo)
    mib = {k: v / 2**20 for k, v in sizes.items()}
    print(
        f"travels: working tree {mib['tree']:.1f} MiB (without {STASHED}/) + {CARRIED}/ {mib['carried']:.1f} MiB "
        f"= {mib['total']:.1f} MiB (target {TARGET_BYTES / 2**20:.0f}, limit {LIMIT_BYTES / 2**20:.0f} MiB)"
    )
    if sizes["total"] > TARGET_BYTES:
        largest = sorted(travelling_files(repo), key=lambda f: f.stat().st_size, reverse=True)[:5]
        names = ", ".join(f"{f.relative_to(repo)} ({f.stat().st_size / 2**20:.1f} MiB)" for f in largest)
        raise ValueError(f"{mib['total']:.1f} MiB would travel, over the {TARGET_BYTES / 2**20:.0f} MiB target; largest: {names}")
    return sizes


def stash(repo: Path = ROOT) -> None:
    """Delete the tracked checkpoints/ from the working tree; refuse while it holds uncommitted changes."""
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=all", "--", STASHED).strip()
    if dirty:
        raise ValueError(f"{STASHED}/ has uncommitted changes; commit them first (git status -- {STASHED}):\n{dirty}")
    for name in _git(repo, "ls-files", "-z", "--", STASHED).split("\0"):
        if name:
            (repo / name).unlink(missing_ok=True)
    print(f"{STASHED}/ taken out of the working tree for the device call; put it back with: python -m train.transfer restore")


def restore(repo: Path = ROOT) -> None:
    _git(repo, "checkout", "--", STASHED)
    print(f"{STASHED}/ restored from git")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = "check: sizes against the limits; stash: take checkpoints/ out of the tree; restore: put them back from git"
    parser.add_argument("step", choices=["check", "stash", "restore"], help=steps)
    args = parser.parse_args(argv)
    return exit_code({"check": check, "stash": stash, "restore": restore}[args.step], _logger)


if __name__ == "__main__":
    sys.exit(main())
