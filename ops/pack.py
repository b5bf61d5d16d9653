"""Pack sweep folders for the trip back from the GPU machine, unpack them here, and read what came back.

    python -m ops.pack runs/device_sweep --log runs/device_sweep.log --out "$OUT"    # there
    python -m ops.pack runs/lease/device_* --log runs/lease/*.log --out "$OUT"        # there: a lease's sweeps
    python -m ops.pack --report runs/lease           # there or here: what ran, validation only (lanes merged)
    python -m ops.pack --unpack FILES_AT --into runs                                  # here
    python -m ops.pack --compare checkpoints runs/lease   # here: keep or replace each shipped model, then Testing

At most 8 files of at most 16 MiB, 64 MiB in all, come back from the device. One archive,
``sweep_results.tar.gz``, holds every model folder without its weights (metrics, history,
curves, confusion matrix, model card), the tables, sweep.json, the log and ``pack.json``
(what came back how). Each checkpoint folder that fits in one file comes whole, in registry
order while the limits allow, inside ``ckpt_<model>.tar`` files that small folders share;
the others come back as metrics only. Paths inside start with the sweep folder's name, so ``--unpack`` into
``runs`` recreates ``runs/device_sweep/<model>/``. Several sweep folders share the archive and the checkpoint
files (one lease), each under its own name.

``--compare`` decides from validation figures alone whether each retrained model replaces the shipped one,
writes the decisions, and only then prints the Testing figures of both.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tarfile
from pathlib import Path

from brainmri.cli import exit_code, setup_logging
from brainmri.eval.tables import read_metrics
from brainmri.models.catalog import checkpoint_folders
from brainmri.models.checkpoint import METRICS, UNSEEN, WEIGHTS

_logger = logging.getLogger(__name__)

MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
MAX_TOTAL_BYTES = 64 * 2**20
RESULTS = "sweep_results.tar.gz"
RESULTS_RESERVE = 4 * 2**20  # room kept for the results archive when choosing checkpoints


def model_folders(sweeps: Path | list[Path]) -> list[Path]:
    """Checkpoint folders of the sweeps: sweep by sweep in the order given (a lease's retraining first), each in
    registry order."""
    sweeps = [sweeps] if isinstance(sweeps, Path) else sweeps
    return [folder for sweep in sweeps for folder in checkpoint_folders(sweep, registry_order=True)]


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


def pack_checkpoints(sweep: Path | list[Path], out: Path, max_file: int, budget: int, max_count: int) -> dict[Path, list[Path]]:
    """``ckpt_<first model>.tar`` files holding each checkpoint folder that fits, in registry order, within
    ``max_file`` bytes a file, ``budget`` bytes in all and ``max_count`` files; each file with its model folders."""
    with_weights = [f for f in model_folders(sweep) if (f / WEIGHTS).is_file()]
    shipped = {}
    for group in bundle(with_weights, max_file, max_count):
        path = _tar_folders(group, out / f"ckpt_{group[0].name}.tar")
        if path.stat().st_size > min(max_file, budget):
            path.unlink()
            continue
        budget -= path.stat().st_size
        shipped[path] = group
    return shipped


def pack_results(sweeps: list[Path], out: Path, extra: list[Path], manifest: dict) -> Path:
    """The results archive: the sweep folders without weights, ``extra`` files (logs) and pack.json (in the first)."""
    (sweeps[0] / "pack.json").write_text(json.dumps(manifest, indent=2) + "\n")
    path = out / RESULTS
    with tarfile.open(path, "w:gz") as tar:
        for sweep in sweeps:
            tar.add(sweep, arcname=sweep.name, filter=lambda info: None if info.name.endswith(".safetensors") else info)
        for f in extra:
            tar.add(f, arcname=f"{sweeps[0].name}/{f.name}")
    return path


def pack(sweep: str | Path | list[str | Path], out: str | Path, extra: list[str | Path] = (), max_file: int = MAX_FILE_BYTES) -> list[Path]:
    """Pack ``sweep`` (one sweep folder, or several) into ``out`` within the device's limits; the files written."""
    sweeps = [Path(s) for s in ([sweep] if isinstance(sweep, (str, Path)) else sweep)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [Path(f) for f in extra if Path(f).is_file()]
    archives = pack_checkpoints(sweeps, out, max_file, MAX_TOTAL_BYTES - RESULTS_RESERVE, MAX_FILES - 1)

    def label(folder: Path) -> str:  # "<sweep>/<model>" when several sweeps share the files
        return f"{folder.parent.name}/{folder.name}" if len(sweeps) > 1 else folder.name

    shipped = [label(f) for folders in archives.values() for f in folders]
    metrics_only = [label(f) for f in model_folders(sweeps) if label(f) not in shipped]
    manifest = {"checkpoints": shipped, "metrics_only": metrics_only, "limits": {"files": MAX_FILES, "file_bytes": max_file}}
    files = [pack_results(sweeps, out, extra, manifest), *archives]
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


def sweep_folders(root: str | Path) -> list[Path]:
    """``root`` itself when it holds a sweep's summary, else the sweep folders inside it."""
    root = Path(root)
    if list(root.glob("sweep*.json")):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and list(p.glob("sweep*.json")))


def report(root: str | Path) -> list[dict]:
    """Merge each sweep folder's lanes and print what ran: status, epochs and validation accuracy; no Testing figures,
    so that the decisions (--compare) are taken before any is seen."""
    from reports.results import collect_rows
    from train.sweep_outputs import merge_lanes

    rows = []
    for folder in sweep_folders(root):
        if list(folder.glob("sweep-*.json")):
            merge_lanes(folder)
        rows += collect_rows([folder])
    line = "{:<22} {:<28} {:>6} {:>4} {:<11} {:>8} {:>7} {:>7}  {}"
    print(line.format("run", "model", "epochs", "best", "stopped", "val acc", "train s", "img/s", "status"))
    for r in rows:
        ok = r["status"] == "ok"
        val = f"{100 * r['val_accuracy']:.2f}%" if ok and r["val_accuracy"] is not None else ""
        train = [f"{r['train_seconds']:.0f}", f"{r['img_per_s']:.0f}"] if ok and r["train_seconds"] else ["", ""]
        run = [r["epochs_run"], r["best_epoch"], r["stopped"]] if ok else ["", "", ""]
        print(line.format(r["run"], r["model"], *(str(v or "") for v in run), val, *train, r["status"]))
    return rows


def keep_or_replace(shipped: dict, new: dict) -> tuple[str, str]:
    """("new" or "shipped", why), from the two runs' validation figures and the new run's epochs alone."""
    from brainmri.eval.tables import cut_short

    if "test" not in new or "validation" not in new:
        return "shipped", "the new run did not finish"
    if cut_short(new.get("epochs_run"), new.get("stopped")):
        return "shipped", f"the new run was cut short ({new.get('stopped')}, {new.get('epochs_run')} epochs)"
    old_acc, new_acc = shipped["validation"]["accuracy"], new["validation"]["accuracy"]
    if new_acc >= old_acc:  # a tie goes to the new run: chosen on a split leak-free by construction
        return "new", f"validation {100 * new_acc:.2f}% >= {100 * old_acc:.2f}%"
    return "shipped", f"validation {100 * new_acc:.2f}% < {100 * old_acc:.2f}%"


def compare(shipped_root: str | Path, roots: list[str | Path], decisions: str | Path) -> list[dict]:
    """For each retrained model of ``roots`` that ``shipped_root`` holds: old and new validation accuracy and which to
    keep, written to ``decisions``; then, and only then, both runs' Testing figures."""
    shipped_root, found = Path(shipped_root), {}
    for root in map(Path, roots):
        for path in sorted(root.glob(f"**/{METRICS}")):
            old = shipped_root / path.parent.name
            if not (old / METRICS).is_file() or old.resolve() == path.parent.resolve():
                continue
            if "accuracy" not in read_metrics(old).get("validation", {}):
                continue  # a segmenter: its validation is Dice, and this rule compares classifiers
            if path.parent.name in found:  # two runs of one model: which replaces the shipped one is not ours to guess
                raise ValueError(f"{path.parent.name} was retrained twice, in {found[path.parent.name]} and {path.parent}: compare one")
            found[path.parent.name] = path.parent
    if not found:
        raise ValueError(f"no retrained model of {shipped_root} under {', '.join(map(str, roots))}")
    rows = []
    print(f"{'model':<28} {'shipped validation (n)':>24} {'new validation (n)':>24}  keep    why")
    for name, folder in found.items():
        old, new = read_metrics(shipped_root / name), read_metrics(folder)
        keep, why = keep_or_replace(old, new)
        rows.append({"model": name, "new_folder": str(folder), "keep": keep, "why": why, "shipped": old, "new": new})
        cell = [f"{100 * m['validation']['accuracy']:.2f}% ({m['validation']['n']})" if "validation" in m else "" for m in (old, new)]
        print(f"{name:<28} {cell[0]:>24} {cell[1]:>24}  {keep:<7} {why}")
    slim = [{k: r[k] for k in ("model", "new_folder", "keep", "why")} for r in rows]
    Path(decisions).write_text(json.dumps({"rule": keep_or_replace.__doc__, "decisions": slim}, indent=2) + "\n")
    print(f"decisions written to {decisions}; Testing, after the decision:")
    print(f"{'model':<28} {'unseen: shipped':>16} {'new':>8} {'official: shipped':>18} {'new':>8}  kept")
    for r in rows:
        figures = [r[w].get(k, {}).get("accuracy") for k in (UNSEEN, "test") for w in ("shipped", "new")]
        cells = [f"{100 * v:.2f}%" if v is not None else "-" for v in figures]
        print(f"{r['model']:<28} {cells[0]:>16} {cells[1]:>8} {cells[2]:>18} {cells[3]:>8}  {r['keep']}")
    return slim


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="*", help="sweep output folders to pack")
    parser.add_argument("--out", help="folder for the packed files ($OUT on the device)")
    parser.add_argument("--log", nargs="*", default=[], help="log files to add to the results archive")
    parser.add_argument("--unpack", metavar="FILES_AT", help="extract the packed files found here instead")
    parser.add_argument("--into", default="runs", help="where --unpack extracts")
    parser.add_argument("--report", metavar="FOLDER", help="merge the lanes of the sweeps in FOLDER and print what ran (no Testing)")
    parser.add_argument("--compare", nargs="+", metavar="FOLDER", help="the shipped checkpoints folder, then folders of retrained runs")
    parser.add_argument("--decisions", help="with --compare: where the decisions go (default: the second folder's decisions.json)")
    args = parser.parse_args(argv)

    def run() -> None:
        if args.report:
            if not report(args.report):
                raise ValueError(f"{args.report}: no sweep runs to report")
            return
        if args.compare:
            if len(args.compare) < 2:
                parser.error("--compare SHIPPED FOLDER [FOLDER ...]")
            compare(args.compare[0], args.compare[1:], args.decisions or Path(args.compare[1]) / "decisions.json")
            return
        if args.unpack:
            for folder in unpack(args.unpack, args.into):
                print(folder)
            return
        if not (args.sweep and args.out):
            parser.error("give a sweep folder and --out, or --unpack")
        for path in pack(args.sweep, args.out, args.log):
            print(path)

    return exit_code(run, _logger, errors=(ValueError, OSError, tarfile.TarError))


if __name__ == "__main__":
    sys.exit(main())
