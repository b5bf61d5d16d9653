"""What one device call carries, measured the way the device tool measures it, and the steps around that call.

    python -m ops.transfer copy-data SRC    # SRC and its masks into data/, each distinct file once (data/duplicates.tsv)
    python -m ops.transfer relink           # on the device: the duplicates back in place, byte for byte
    python -m ops.transfer check [--all]    # sizes: working tree (checkpoints/ left out but Lite0, or all) + data/
    python -m ops.transfer check --carried device_in   # the serving call's
    python -m ops.transfer stash [--all]    # take the tracked checkpoints/ out of the working tree (refuses if changed)
    python -m ops.transfer restore          # put them back from git: git checkout -- checkpoints

The device tool sends the tracked files and the untracked files git does not ignore, plus the
carried folders, 64 MB in all. ``scripts/prepare_device_data.sh`` fills the carried ``data/`` and
stashes all of ``checkpoints/`` (the sweeps train from scratch and never read them);
``scripts/prepare_device_serving.sh`` stashes all but the default's classifier, Lite0 (``KEPT``: the CUDA serving
check serves it, and it is the OOD judge).

The data set (50 MiB) holds 427 byte-for-byte copies of other files (3.3 MiB): they travel once, and
``relink`` copies them back on the device, so that the folder there lists and reads as here. A lease makes two
calls (docs/gpu_lease.md): the serving call carries device_in/ (scripts/prepare_device_serving.sh) beside the tree
with Lite0, 63.5 MB; the training call carries data/ beside the tree with no checkpoints (``stash --all``), ~51 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from brainmri.cli import exit_code, setup_logging
from brainmri.data.masks import EXPERTS
from brainmri.models.registry import DEFAULT_CLASSIFIER
from brainmri.settings import ROOT

_logger = logging.getLogger(__name__)

# The device tool's cap on the working tree plus carried folders: "64 MiB" in its notes, but it counts 10^6-byte MB
# (2026-12-04: 63.5 MB went, 65.4 MB was refused as "larger than 64 MiB"; docs/gpu_lease.md).
LIMIT_BYTES = 64_000_000
TARGET_BYTES = 63_600_000  # what we allow ourselves: the serving call's 63.5 MB, and no more
CARRIED = "data"  # the one carried folder: the data set copy (its duplicates once), its masks, wheels if any
STASHED = "checkpoints"  # tracked, but left behind for the call ...
KEPT = f"{STASHED}/{DEFAULT_CLASSIFIER}"  # ... but for the default's classifier: the CUDA check serves it (scripts/cuda_check.py)
DUPLICATES = "duplicates.tsv"  # in the carried folder: "copy<TAB>original" paths relative to it, one a line


def _left_behind(relative: Path, keep: bool = True) -> bool:
    """Whether stash takes this tracked file out of the tree (KEPT stays unless ``keep`` is False)."""
    return relative.parts[0] == STASHED and not (keep and relative.is_relative_to(KEPT))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True, text=True).stdout


def travelling_files(repo: Path = ROOT) -> list[Path]:
    """Tracked files and untracked files git does not ignore, as they lie in the working tree now."""
    names = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return [repo / n for n in names if n and (repo / n).is_file()]


def folder_bytes(folder: Path) -> int:
    return sum(os.path.getsize(Path(d) / f) for d, _, names in os.walk(folder) for f in names)


def transfer_bytes(repo: Path = ROOT, carried: Path | None = None, stashed: str | None = STASHED, keep: bool = True) -> dict[str, int]:
    """Bytes that travel: the working tree (with ``stashed`` left out, as the stash step leaves it: but for KEPT
    unless ``keep`` is False) and the carried folder (``repo/data`` unless given; it is git-ignored, so never
    counted twice)."""
    tree = [f for f in travelling_files(repo) if not (stashed and _left_behind(f.relative_to(repo), keep))]
    sizes = {"tree": sum(f.stat().st_size for f in tree), "carried": folder_bytes(carried or repo / CARRIED)}
    sizes["total"] = sizes["tree"] + sizes["carried"]
    return sizes


def check(repo: Path = ROOT, carried: str = CARRIED, keep: bool = True) -> dict[str, int]:
    """Print what travels with ``carried`` (a folder of ``repo``), in MB as the device tool counts; ValueError, naming
    the largest files, when it exceeds TARGET_BYTES."""
    sizes = transfer_bytes(repo, repo / carried, keep=keep)
    mb = {k: v / 1e6 for k, v in sizes.items()}
    left = f"{STASHED}/ but {KEPT}" if keep else f"no {STASHED}/"
    print(
        f"travels: working tree {mb['tree']:.1f} MB ({left}) + {carried}/ {mb['carried']:.1f} MB "
        f"= {mb['total']:.1f} MB (target {TARGET_BYTES / 1e6:.1f}, limit {LIMIT_BYTES / 1e6:.0f} MB)"
    )
    if sizes["total"] > TARGET_BYTES:
        largest = sorted(travelling_files(repo), key=lambda f: f.stat().st_size, reverse=True)[:5]
        names = ", ".join(f"{f.relative_to(repo)} ({f.stat().st_size / 1e6:.1f} MB)" for f in largest)
        raise ValueError(f"{mb['total']:.1f} MB would travel, over the {TARGET_BYTES / 1e6:.1f} MB target; largest: {names}")
    return sizes


def stash(repo: Path = ROOT, keep: bool = True) -> None:
    """Delete the tracked checkpoints/ (but KEPT, unless ``keep`` is False) from the working tree; refuse while it
    holds uncommitted changes."""
    # Files an earlier stash deleted are in git still; anything else changed there is work that would be lost.
    lines = _git(repo, "status", "--porcelain", "--untracked-files=all", "--", STASHED).splitlines()
    dirty = "\n".join(line for line in lines if line and not line.startswith(" D "))
    if dirty:
        raise ValueError(f"{STASHED}/ has uncommitted changes; commit them first (git status -- {STASHED}):\n{dirty}")
    for name in _git(repo, "ls-files", "-z", "--", STASHED).split("\0"):
        if name and _left_behind(Path(name), keep):
            (repo / name).unlink(missing_ok=True)
    left = f"{STASHED}/ but {KEPT}" if keep else f"all of {STASHED}/"
    print(f"{left} taken out of the working tree for the device call; put it back: python -m ops.transfer restore")


def restore(repo: Path = ROOT) -> None:
    _git(repo, "checkout", "--", STASHED)
    print(f"{STASHED}/ restored from git")


def copy_data(src: str | Path, dest: str | Path | None = None) -> dict[str, int]:
    """``src`` (Training, Testing, README) into ``dest`` (default data/<src name>) and each expert's masks folder beside
    it that is there (``<src>-masks``, ``<src>-masks-brisc``: the split's scan ids, the multi-task model's targets);
    each distinct file's bytes once, the copies of others listed in ``<dest parent>/duplicates.tsv``."""
    src = Path(src)
    dest = Path(dest) if dest else ROOT / CARRIED / src.name
    shutil.rmtree(dest, ignore_errors=True)
    first: dict[str, str] = {}
    copies = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        name = path.relative_to(src).as_posix()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in first:
            copies.append(f"{dest.name}/{name}\t{dest.name}/{first[digest]}")
            continue
        first[digest] = name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / name)
    (dest.parent / DUPLICATES).write_text("".join(f"{line}\n" for line in copies))
    experts = [suffix for suffix in EXPERTS.values() if Path(f"{src}{suffix}").is_dir()]  # each expert's masks (data.masks.EXPERTS)
    for suffix in experts:
        shutil.rmtree(f"{dest}{suffix}", ignore_errors=True)
        shutil.copytree(f"{src}{suffix}", f"{dest}{suffix}")
    also = f", and its masks ({', '.join(experts)})" if experts else ""
    print(f"{src} -> {dest}: {len(first)} files, {len(copies)} copies of them to relink there{also}")
    return {"files": len(first), "copies": len(copies)}


def relink(carried: str | Path = ROOT / CARRIED) -> int:
    """Write back each listed copy from its original (on the device, before anything reads the data); how many."""
    carried = Path(carried)
    listing = carried / DUPLICATES
    lines = [line.split("\t") for line in listing.read_text().splitlines() if line] if listing.is_file() else []
    for copy, original in lines:
        shutil.copyfile(carried / original, carried / copy)
    print(f"{len(lines)} duplicate files written back under {carried}/")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = (
        "copy-data: the data set into data/, duplicates once; relink: the duplicates back (on the device); check: sizes "
        "against the limits; stash: take checkpoints/ but the app default out of the tree; restore: put them back from git"
    )
    parser.add_argument("step", choices=["copy-data", "relink", "check", "stash", "restore"], help=steps)
    parser.add_argument("src", nargs="?", help="copy-data: the data folder to copy")
    parser.add_argument("--carried", default=CARRIED, help="check: the carried folder (default %(default)s; device_in: the serving call)")
    parser.add_argument("--all", action="store_true", help=f"stash, check: {KEPT} too (the training call serves nothing)")
    args = parser.parse_args(argv)
    if args.step == "copy-data":
        if not args.src:
            parser.error("copy-data needs the data folder")
        return exit_code(lambda: copy_data(args.src), _logger)
    if args.step == "check":
        return exit_code(lambda: check(carried=args.carried, keep=not args.all), _logger)
    if args.step == "stash":
        return exit_code(lambda: stash(keep=not args.all), _logger)
    return exit_code({"restore": restore, "relink": relink}[args.step], _logger)


if __name__ == "__main__":
    sys.exit(main())
