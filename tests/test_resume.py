"""Training SIGKILLed mid-epoch (or mid-save) and restarted with --resume ends exactly like an uninterrupted run.

The killed run is the real ``train.train.main`` in a subprocess, with one hook patched in
from outside (no test code in train.py): at the chosen moment of epoch 2 it writes a marker
file and waits, and the test sends SIGKILL.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"seconds", "img_per_s"}  # wall-clock columns of history.csv, the only ones allowed to differ

pytestmark = pytest.mark.slow  # eight short training runs in subprocesses (about 3 min on 2 CPU cores)

# Runs train.train.main; on the third batch of epoch 2 ("mid-epoch") or right after epoch 2's
# accelerate state is written but before it is marked finished ("mid-save"), it writes the
# marker file and sleeps, to be killed there.
HANG_AT = """
import inspect, sys, time
from pathlib import Path
import train.train as t

marker, moment, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
real_epoch, real_augment, real_save = t.train_one_epoch, t.augment_batch, t.Accelerator.save_state
now = {"epoch": -1, "step": 0}

def hang():
    marker.write_text(moment)
    time.sleep(600)

def train_one_epoch(*args, **kwargs):
    now["epoch"], now["step"] = inspect.signature(real_epoch).bind(*args, **kwargs).arguments["epoch"], 0
    return real_epoch(*args, **kwargs)

def augment_batch(*args, **kwargs):
    if moment == "mid-epoch" and now["epoch"] == 1 and now["step"] == 2:
        hang()
    now["step"] += 1
    return real_augment(*args, **kwargs)

def save_state(self, *args, **kwargs):
    result = real_save(self, *args, **kwargs)
    if moment == "mid-save" and now["epoch"] == 1:
        hang()
    return result

t.train_one_epoch, t.augment_batch, t.Accelerator.save_state = train_one_epoch, augment_batch, save_state
sys.exit(t.main(argv))
"""


EMA = ["--ema-decay", "0.9"]  # a moving average of the weights, validated and shipped instead of them


def train_args(data_dir: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        *("--model", "simple_cnn_7", "--data", str(data_dir), "--limit-per-class", "8"),
        *("--epochs", "3", "--batch-size", "4", "--evaluate-test", "false", "--out", str(out), *extra),
    ]


def run_training(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "train.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def outcome(out: Path) -> dict:
    """What must not depend on the interruption: final metrics, history without timings, weights, temperature."""
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "history.csv").open() as f:
        history = [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]
    return {
        "validation": metrics["validation"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "history": history,
        "weights": (out / "model.safetensors").read_bytes(),
        "temperature": json.loads((out / "calibration.json").read_text())["temperature"],
    }


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, data_dir) -> dict[tuple[str, ...], dict]:
    """The uninterrupted outcome of each setting, trained when first asked for."""
    runs: dict[tuple[str, ...], dict] = {}

    def run(extra: tuple[str, ...]) -> dict:
        if extra not in runs:
            out = tmp_path_factory.mktemp("straight") / "run"
            run_training(train_args(data_dir, out, extra))
            runs[extra] = outcome(out)
        return runs[extra]

    return run


@pytest.mark.parametrize(("moment", "extra"), [("mid-epoch", ()), ("mid-save", ()), ("mid-save", tuple(EMA))])
def test_resume_after_sigkill_matches_an_uninterrupted_run(straight_runs, data_dir, tmp_path, moment, extra):
    uninterrupted = straight_runs(extra)
    out, marker = tmp_path / "run", tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", HANG_AT, str(marker), moment, *train_args(data_dir, out, extra)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, f"training ended before the kill point:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "training never reached the kill point"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert not (out / "metrics.json").exists()  # it really died before finishing
    assert (out / "resume" / "latest").read_text() == "epoch_1"

    run_training([*train_args(data_dir, out, extra), "--resume"])
    resumed = outcome(out)
    assert resumed["history"] == uninterrupted["history"]
    assert resumed["validation"] == uninterrupted["validation"]
    assert resumed["best_epoch"] == uninterrupted["best_epoch"] and resumed["epochs_run"] == 3
    assert resumed["weights"] == uninterrupted["weights"]
    assert resumed["temperature"] == uninterrupted["temperature"]
    assert not (out / "resume").exists()


def test_an_ema_run_ships_the_moving_average(straight_runs):
    """Same seed and data: with the average validated and shipped, the weights and the validation figures move."""
    plain, averaged = straight_runs(()), straight_runs(tuple(EMA))
    assert averaged["weights"] != plain["weights"]
    assert [r["val_loss"] for r in averaged["history"]] != [r["val_loss"] for r in plain["history"]]
    assert [r["train_loss"] for r in averaged["history"]] == [r["train_loss"] for r in plain["history"]]  # the same training
