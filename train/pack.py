"""Pack a sweep folder for the trip back from the GPU machine, and unpack it here.

    python -m train.pack runs/device_sweep --log runs/device_sweep.log --out "$OUT"    # there
    python -m train.pack --unpack FILES_AT --into runs                                  # here

At most 8 files of at most 16 MiB, 64 MiB in all, come back from the device. One archive,
``sweep_results.tar.gz``, holds every model folder without its weights (metrics, history,
curves, confusion matrix, model card), the tables, sweep.json, the log and ``pack.json``
(what came back how). Each checkpoint folder that fits in one file comes whole, in registry
order while the limits allow, inside ``ckpt_<model>.tar`` files that small folders share;
the others come back as metrics only. Paths inside start with the sweep folder's name, so ``--unpack`` into
``runs`` recreates ``runs/device_sweep/<model>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tarfile
from pathlib import Path

from brainmri.checkpoint import WEIGHTS
from brainmri.cli import setup_logging
from brainmri.registry import REGISTRY

_logger = logging.getLogger(__name__)

MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
MAX_TOTAL_BYTES = 64 * 2**20
RESULTS = "sweep_results.tar.gz"
RESULTS_RESERVE = 4 * 2**20  # room kept for the results archive when choosing checkpoints


def model_folders(sweep: Path) -> list[Path]:
    """Checkpoint folders of the sweep, in registry order."""
    order = {name: i for i, name in enumerate(REGISTRY)}
    folders = [p for p in sweep.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(folders, key=lambda p: (order.get(p.name, len(order)), p.name))


def _tar_folders(folders: list[Path], path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for folder in folders:
            tar.add(folder, arcname=f"{folder.parent.name}/{folder.name}")
    return path


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def bundle(folders: list[Path], max_file: int, max_count: int) -> list[list[Path]]:
    """Folders grouped, in order, into at most ``max_count`` bundles of at most ``max_file`` bytes each
    (tar headers included); folders that fit nowhere are left out. Small checkpoints share a file, so
    that a sweep of many simple CNNs still comes back within the 8-file limit."""
    bundles: list[list[Path]] = []
    room: list[int] = []
    for folder in folders:
        size = _bytes(folder) + 1024 * (2 + len(list(folder.rglob("*"))))  # a 512-byte header and padding per member
        fits = [i for i, r in enumerate(room) if size <= r]
        if fits:
            bundles[fits[0]].append(folder)
            room[fits[0]] -= size
        elif len(bundles) < max_count and size <= max_file - 10240:  # tar's end-of-archive blocks
            bundles.append([folder])
            room.append(max_file - 10240 - size)
    return bundles


def pack_checkpoints(sweep: Path, out: Path, max_file: int, budget: int, max_count: int) -> dict[Path, list[str]]:
    """``ckpt_<first model>.tar`` files holding each checkpoint folder that fits, in registry order, within
    ``max_file`` bytes a file, ``budget`` bytes in all and ``max_count`` files; each file with its models."""
    with_weights = [f for f in model_folders(sweep) if (f / WEIGHTS).is_file()]
    shipped = {}
    for group in bundle(with_weights, max_file, max_count):
        path = _tar_folders(group, out / f"ckpt_{group[0].name}.tar")
        if path.stat().st_size > min(max_file, budget):
            path.unlink()
            continue
        budget -= path.stat().st_size
        shipped[path] = [f.name for f in group]
    return shipped


def pack_results(sweep: Path, out: Path, extra: list[Path], manifest: dict) -> Path:
    """The results archive: the sweep folder without weights, ``extra`` files (logs) and pack.json."""
    (sweep / "pack.json").write_text(json.dumps(manifest, indent=2) + "\n")
    path = out / RESULTS
    with tarfile.open(path, "w:gz") as tar:
        tar.add(sweep, arcname=sweep.name, filter=lambda info: None if info.name.endswith(".safetensors") else info)
        for f in extra:
            tar.add(f, arcname=f"{sweep.name}/{f.name}")
    return path


def pack(sweep: str | Path, out: str | Path, extra: list[str | Path] = (), max_file: int = MAX_FILE_BYTES) -> list[Path]:
    """Pack ``sweep`` into ``out`` within the device's limits; the files written."""
    sweep, out = Path(sweep), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [Path(f) for f in extra if Path(f).is_file()]
    archives = pack_checkpoints(sweep, out, max_file, MAX_TOTAL_BYTES - RESULTS_RESERVE, MAX_FILES - 1)
    shipped = [name for names in archives.values() for name in names]
    metrics_only = [f.name for f in model_folders(sweep) if f.name not in shipped]
    manifest = {"checkpoints": shipped, "metrics_only": metrics_only, "limits": {"files": MAX_FILES, "file_bytes": max_file}}
    files = [pack_results(sweep, out, extra, manifest), *archives]
    sizes = [f.stat().st_size for f in files]
    if len(files) > MAX_FILES or max(sizes) > max_file or sum(sizes) > MAX_TOTAL_BYTES:
        raise ValueError(f"packed files break the device limits: {len(files)} files, sizes {sizes}")
    _logger.info("packed %d files (%.1f MiB): checkpoints %s; metrics only %s", len(files), sum(sizes) / 2**20, shipped, metrics_only)
    return files


def unpack(files_at: str | Path, into: str | Path) -> list[Path]:
    """Extract every archive in ``files_at`` into ``into``; the model folders found there."""
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(files_at).glob("*.tar*")):
        with tarfile.open(path) as tar:
            tar.extractall(into, filter="data")  # "data": no absolute paths, links out or devices
    return sorted(p.parent for p in into.glob("*/*/metrics.json"))


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="?", help="sweep output folder to pack")
    parser.add_argument("--out", help="folder for the packed files ($OUT on the device)")
    parser.add_argument("--log", nargs="*", default=[], help="log files to add to the results archive")
    parser.add_argument("--unpack", metavar="FILES_AT", help="extract the packed files found here instead")
    parser.add_argument("--into", default="runs", help="where --unpack extracts")
    args = parser.parse_args(argv)
    try:
        if args.unpack:
            for folder in unpack(args.unpack, args.into):
                print(folder)
            return 0
        if not (args.sweep and args.out):
            parser.error("give a sweep folder and --out, or --unpack")
        for path in pack(args.sweep, args.out, args.log):
            print(path)
    except (ValueError, OSError, tarfile.TarError) as e:
        _logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
