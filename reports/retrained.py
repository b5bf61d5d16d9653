"""Each shipped classifier before and after its retrain on the mirror-aware split, side by side.

    python -m reports.retrained --snapshot   # once: the as-is split's figures from git history -> results/as_is_split.json
    python -m reports.results --docs         # writes the table into docs/experiments.md (section "retrained")

The first shipped models trained on a split whose validation held mirrored twins of training images
(docs/experiments.md, "The leak in validation"). Each is being retrained on the mirror-aware split with its
own protocol (the GPU issue), and its old weights are replaced: a drop is an honest result. The old figures
live on in git history only, so ``--snapshot`` reads them from there once, for every checkpoint: its metrics
at the last commit whose ``train_config.json`` did not say ``split: mirror-aware``. The table needs no git.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from brainmri.cli import exit_code, setup_logging
from brainmri.data.split import MIRROR_AWARE, split_rule
from brainmri.eval.tables import read_metrics
from brainmri.models.catalog import checkpoint_folders
from brainmri.models.checkpoint import METRICS, TRAIN_CONFIG, UNSEEN
from brainmri.settings import ROOT
from brainmri.vocabulary import percent

_logger = logging.getLogger(__name__)

SNAPSHOT = ROOT / "results" / "as_is_split.json"


def figures(metrics: dict) -> dict:
    """The figures the table compares, from one metrics.json."""
    unseen, leaky = metrics.get(UNSEEN) or {}, metrics.get("validation_leaky") or {}
    return {
        "validation": metrics["validation"]["accuracy"],
        "validation_n": metrics["validation"]["n"],
        # the as-is split's validation as first measured, mirrored twins of trained images in it (train.leak_free)
        "validation_leaky": leaky.get("accuracy"),
        "validation_leaky_n": leaky.get("n"),
        "test": (metrics.get("test") or {}).get("accuracy"),
        "test_unseen": unseen.get("accuracy"),
        "test_unseen_ci95": unseen.get("accuracy_ci95"),
        "test_unseen_n": unseen.get("n"),
        "test_unseen_ece": (metrics.get("calibration") or {}).get(f"{UNSEEN}_ece_after"),
    }


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout


def as_is_figures(relative_folder: str) -> dict | None:
    """The figures of the last commit that shipped ``relative_folder`` trained on the as-is split, or None."""
    for commit in _git("log", "--format=%H", "--", f"{relative_folder}/{METRICS}").split():
        try:
            config = json.loads(_git("show", f"{commit}:{relative_folder}/{TRAIN_CONFIG}"))
            metrics = json.loads(_git("show", f"{commit}:{relative_folder}/{METRICS}"))
        except subprocess.CalledProcessError:
            continue
        if split_rule(config) != MIRROR_AWARE:
            return {"commit": commit[:7], **figures(metrics)}
    return None


def snapshot(root: Path = ROOT / "checkpoints", out: Path = SNAPSHOT) -> Path:
    """Write every shipped classifier's as-is-split figures, found in git history, to ``out``."""
    models = {}
    for folder in checkpoint_folders(root, holding=METRICS, classifiers=True):
        found = as_is_figures(str(folder.resolve().relative_to(ROOT)))
        if found is not None:
            models[folder.name] = found
    out.write_text(json.dumps({"source": "python -m reports.retrained --snapshot (git history)", "models": models}, indent=2) + "\n")
    return out


def read_snapshot(path: str | Path = SNAPSHOT) -> dict[str, dict]:
    """The as-is split's figures by model (:func:`snapshot`), or none when the snapshot has not been taken."""
    path = Path(path)
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def _cell(value: float | None, ci: list | None = None) -> str:
    return "" if value is None else percent(value, ci, digits=2)


def retrained_markdown(root: str | Path = ROOT / "checkpoints", before: str | Path = SNAPSHOT) -> str:
    """One row per shipped classifier: its as-is-split figures and, once retrained, the mirror-aware ones."""
    old = read_snapshot(before)
    lines = [
        "| model | split | validation (n) | official Testing | unseen Testing (95% CI) | unseen ECE after T |",
        "|---|---|---:|---:|---:|---:|",
    ]
    done = 0
    folders = checkpoint_folders(root, holding=METRICS, classifiers=True)
    for folder in folders:
        config = json.loads((folder / TRAIN_CONFIG).read_text())
        now = figures(read_metrics(folder))
        retrained = split_rule(config) == MIRROR_AWARE
        done += retrained
        rows = ([("as-is (before)", old[folder.name])] if folder.name in old else []) + [
            ("**mirror-aware**" if retrained else "as-is (not retrained yet)", now)
        ]
        if not retrained and folder.name in old and old[folder.name]["validation"] == now["validation"]:
            rows = rows[1:]  # the same weights: one row
        for label, f in rows:
            lines.append(
                f"| `{folder.name}` | {label} | {_cell(f['validation'])} ({f['validation_n']}) | {_cell(f['test'])}"
                f" | {_cell(f['test_unseen'], f['test_unseen_ci95'])} | {_cell(f['test_unseen_ece'])} |"
            )
    return f"**{done} of {len(folders)}** shipped classifiers are retrained on the mirror-aware split.\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", action="store_true", help="read the as-is split's figures from git history into results/")
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"), help="the shipped checkpoint folders")
    args = parser.parse_args(argv)

    def run() -> None:
        if args.snapshot:
            _logger.info("wrote %s", snapshot(Path(args.checkpoints)))
        print(retrained_markdown(args.checkpoints))

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
