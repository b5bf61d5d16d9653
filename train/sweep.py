"""Train every model of a sweep config under one protocol, one after another, and tabulate them.

    python -m train.sweep --config train/sweeps/full.yaml        # the GPU run (scripts/device_sweep.sh wraps it)
    python -m train.sweep --config train/sweeps/quick.yaml --data ../shared/data/brain-tumor-mri   # CPU check, < 1 min
    python -m train.sweep --config train/sweeps/cpu.yaml --resume    # the CPU plan: skips what finished, continues the rest
    python -m train.sweep --lease train/sweeps/lease.yaml --lane effnet_1 --deadline 400   # one lane of the GPU lease
    python -m train.sweep --config train/sweeps/seed.yaml --whole-schedules --resume --out ../runs/seed_ma
        # a GPU sweep on CPU: every model its whole schedule (epochs, early stopping), no wall-clock budget

A config holds the ``protocol`` (the TrainConfig fields every model shares: data, split,
seed, epochs, batch, optimiser, augmentation, early stopping) and the ``models``, each with
only settings of how it uses the machine: ``time_budget_s`` and ``grad_checkpointing``. A
sweep whose runs are controlled changes (train/sweeps/seed.yaml) names the protocol fields
its entries may set in ``varies``; every other field stays shared.
Each model gets the smaller of its budget and what the sweep's ``deadline_s`` still allows
once every later model is promised ``min_budget_s`` plus ``overhead_s``; within its budget
it fits its cosine schedule to the epochs that fit (see TrainConfig.time_budget_s). A sweep
with ``when_late: drop`` cuts no model short for a later one: a model whose whole budget no
longer fits before the deadline is not started, and its row says so ("not run: ..."), as does
a ``pretrained`` model whose offline ImageNet package is not installed where the sweep runs.

A lease (train/sweeps/lease.yaml) runs several sweeps side by side on one GPU, in lanes: each
lane is one process (``--lane``) running its steps in turn; lanes of one config share its
output folder, each writing ``sweep-<lane>.json``, merged into ``sweep.json`` and the tables.

Data work (thumbnails, split, decoding, the near-dedup Testing subset) is done once for all
models (brainmri.data.cache). A model that runs out of GPU memory is retried once with gradient
checkpointing; one that fails otherwise is logged with its traceback, recorded as failed in
``sweep.json`` and the table, and the sweep goes on and exits 1 at the end.

Writes OUT/<model>/ (checkpoint folders), OUT/experiments.{csv,md}, OUT/roofline.csv and
OUT/sweep.json, refreshed after each model so that a run cut short still leaves its table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from brainmri.cli import add_data_argument, exit_code, setup_logging
from brainmri.data.cache import open_cache
from brainmri.eval.tables import read_metrics
from brainmri.models.registry import get_spec
from train.config import TrainConfig
from train.resume import RESUME, has_resume
from train.sweep_outputs import measure_device, write_outputs
from train.train import fit

_logger = logging.getLogger(__name__)

MACHINE_KEYS = {"model", "time_budget_s", "grad_checkpointing"}  # what a model entry may set; all else is protocol
NOT_PROTOCOL = MACHINE_KEYS | {"out", "resume", "save_resume"}
WHEN_LATE = ("cut", "drop")  # late in the sweep: cut a model's budget to leave later ones theirs, or leave the model out
NOT_RUN = "not run"  # the status of a model the sweep did not start, with the reason after a colon


@dataclass
class SweepPlan:
    """A parsed sweep config."""

    protocol: dict  # TrainConfig fields shared by every model
    models: list[dict]  # each: model, time_budget_s, optionally grad_checkpointing
    out: str  # folder of the model folders and tables
    deadline_s: float  # the whole sweep, evaluation included
    overhead_s: float  # per model, outside its training epochs: build, test, calibration, figures
    min_budget_s: float  # what each model still to come is promised when budgets are cut
    varies: tuple[str, ...] = ()  # protocol fields a model entry may set (a controlled change); none by default
    when_late: str = "cut"  # "cut": shorten budgets so every later model gets its minimum; "drop": don't start what no longer fits
    overrides: dict = dataclasses.field(default_factory=dict)  # fields set over protocol and entries alike (--set: a rehearsal)
    # No wall-clock budgets: each model runs its whole schedule (epochs, early stopping). A GPU sweep's budgets, a
    # few seconds an epoch there, would cut a CPU run of the same protocol to a few epochs.
    whole_schedules: bool = False


def load_plan(
    path: str | Path,
    data: str | None = None,
    out: str | None = None,
    deadline_s: float | None = None,
    only: list[str] | None = None,
    overrides: dict | None = None,
) -> SweepPlan:
    """Read and check a sweep config; ``data``, ``out`` and ``deadline_s`` override the file's, ``only`` keeps those
    models (budgets are then planned over them alone), ``overrides`` sets TrainConfig fields over every model's."""
    raw = yaml.safe_load(Path(path).read_text())
    if "deadline_s" not in raw:
        raise ValueError(f"{path}: no deadline_s (seconds for the whole sweep)")
    protocol = dict(raw.get("protocol") or {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(protocol) - fields) + sorted(set(protocol) & NOT_PROTOCOL)
    if bad:
        raise ValueError(f"{path}: protocol keys {bad} are not shared TrainConfig fields")
    varies = tuple(raw.get("varies") or ())
    bad = sorted(set(varies) - fields) + sorted(set(varies) & NOT_PROTOCOL)
    if bad:
        raise ValueError(f"{path}: varies {bad}: only TrainConfig fields of the protocol may vary")
    if data:
        protocol["data"] = data
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - fields) + sorted(set(overrides) & NOT_PROTOCOL)
    if bad:
        raise ValueError(f"--set {bad}: only TrainConfig fields of the protocol can be set")
    if raw.get("when_late", "cut") not in WHEN_LATE:
        raise ValueError(f"{path}: when_late must be one of {list(WHEN_LATE)}, got {raw['when_late']!r}")
    models = list(raw.get("models") or [])
    unknown = sorted(set(only or []) - {m.get("model") for m in models})
    if unknown:
        raise ValueError(f"{path}: {unknown} not among its models")
    models = [m for m in models if not only or m.get("model") in only]
    if not models:
        raise ValueError(f"{path}: no models")
    for entry in models:
        get_spec(entry.get("model", ""))  # ValueError naming the registry's models
        extra = sorted(set(entry) - MACHINE_KEYS - set(varies))
        if extra:
            allowed = sorted(MACHINE_KEYS | set(varies))
            raise ValueError(f"{path}: model {entry['model']} sets {extra}; a model may only set {allowed}")
        if float(entry.get("time_budget_s", 0)) <= 0:
            raise ValueError(f"{path}: model {entry['model']} needs a positive time_budget_s")
    return SweepPlan(
        protocol=protocol,
        models=models,
        out=out or raw.get("out", "runs/sweep"),
        deadline_s=float(deadline_s or raw["deadline_s"]),
        overhead_s=float(raw.get("overhead_s", 0)),
        min_budget_s=float(raw.get("min_budget_s", 1)),
        varies=varies,
        when_late=raw.get("when_late", "cut"),
        overrides=overrides,
    )


def budget_for(plan: SweepPlan, index: int, elapsed: float) -> float:
    """Seconds of training for model ``index``: its own budget, cut to leave every later model its minimum
    (with ``when_late: drop``, its own budget: a model that cannot have it is not started, see :func:`why_not_run`)."""
    own = float(plan.models[index]["time_budget_s"])
    if plan.when_late == "drop":
        return own
    later = len(plan.models) - index - 1
    left = plan.deadline_s - elapsed - plan.overhead_s - later * (plan.min_budget_s + plan.overhead_s)
    return max(plan.min_budget_s, min(own, left))


def why_not_run(plan: SweepPlan, index: int, elapsed: float, cfg: TrainConfig) -> str | None:
    """Why model ``index`` is not started now, or None: its offline ImageNet weights are missing here, or, with
    ``when_late: drop``, its whole budget and overhead no longer fit before the deadline."""
    package = get_spec(cfg.model).imagenet_init
    if cfg.pretrained and package and importlib.util.find_spec(package.replace("-", "_")) is None:
        return f"{NOT_RUN}: no offline ImageNet weights here (pip package {package})"
    need = float(plan.models[index]["time_budget_s"]) + plan.overhead_s
    left = plan.deadline_s - elapsed
    if plan.when_late == "drop" and left < need:
        return f"{NOT_RUN}: {max(left, 0):.0f} s left before the sweep's deadline, {need:.0f} s needed (dropped, not cut short)"
    return None


def model_config(plan: SweepPlan, entry: dict, budget: float, resumable: bool = False) -> TrainConfig:
    """The model's TrainConfig; ``resumable`` writes the --resume state each epoch and continues from one left there."""
    changes = {k: entry[k] for k in plan.varies if k in entry}
    out = Path(plan.out) / entry["model"]
    return TrainConfig(
        **{**plan.protocol, **changes, **plan.overrides},
        model=entry["model"],
        out=str(out),
        time_budget_s=budget,
        grad_checkpointing=bool(entry.get("grad_checkpointing", False)),
        save_resume=resumable,
        resume=resumable and has_resume(out),
    )


def finished(folder: Path) -> bool:
    """A model folder whose run ended: tested (metrics.json with a test entry) and no --resume state left."""
    try:
        done = "test" in read_metrics(folder)
    except ValueError:
        return False
    return done and not (folder / RESUME).exists()


def free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_model(cfg: TrainConfig) -> Path:
    """fit(cfg); on running out of GPU memory, once more with gradient checkpointing."""
    try:
        return fit(cfg)
    except torch.cuda.OutOfMemoryError:
        if cfg.grad_checkpointing:
            raise
        _logger.warning("%s ran out of GPU memory; retrying with gradient checkpointing", cfg.model)
    free_accelerator_memory()  # outside the except block, so that the failed step's tensors are gone
    return fit(dataclasses.replace(cfg, grad_checkpointing=True))


def run_sweep(plan: SweepPlan, resume: bool = False, only: list[str] | None = None, lane: str | None = None) -> list[dict]:
    """Train, test and tabulate each model of the plan in turn; one record per model.

    With ``resume`` a finished model is skipped and an interrupted one continues from its last epoch
    (each run writes its --resume state); ``only`` restricts the run to those models; ``lane`` names the
    lease lane this sweep runs in (it then shares its folder and the GPU with other lanes).
    """
    start = time.perf_counter()
    out = Path(plan.out)
    out.mkdir(parents=True, exist_ok=True)
    device = measure_device(peaks=lane is None)  # lanes share the GPU: ceilings measured there would mean little
    records: list[dict] = []
    with open_cache():
        for i, entry in enumerate(plan.models):
            if only and entry["model"] not in only:
                continue
            if resume and finished(out / entry["model"]):
                _logger.info("== %s (%d/%d): finished before, skipped", entry["model"], i + 1, len(plan.models))
                records.append({"model": entry["model"], "status": "ok", "skipped": "finished before"})
                continue
            budget = 0.0 if plan.whole_schedules else budget_for(plan, i, time.perf_counter() - start)
            cfg = model_config(plan, entry, budget, resumable=resume)
            reason = why_not_run(plan, i, time.perf_counter() - start, cfg)
            if reason:
                _logger.info("== %s (%d/%d): %s", entry["model"], i + 1, len(plan.models), reason)
                records.append({"model": entry["model"], "status": reason, **({"lane": lane} if lane else {})})
                write_outputs(plan, records, device, time.perf_counter() - start, lane)
                continue
            record = {"model": entry["model"], "time_budget_s": round(budget, 1) or None, "status": "ok"}
            record |= {"lane": lane} if lane else {}
            what = f"{budget:.0f} s of training" if budget else f"its whole schedule ({cfg.epochs} epochs at most)"
            _logger.info("== %s (%d/%d): %s", entry["model"], i + 1, len(plan.models), what)
            t0 = time.perf_counter()
            try:
                train_model(cfg)
            except Exception as e:  # recorded in sweep.json and the table; the sweep exits 1 at the end
                _logger.exception("%s failed", entry["model"])
                record["status"] = f"failed: {type(e).__name__}: {e}"
            record["wall_s"] = round(time.perf_counter() - t0, 1)
            records.append(record)
            free_accelerator_memory()
            write_outputs(plan, records, device, time.perf_counter() - start, lane)
    return records


def load_lease(path: str | Path) -> dict:
    """A lease config: ``out`` and ``lanes``, each lane a list of steps ``{config, models}`` (models: all when left out)."""
    raw = yaml.safe_load(Path(path).read_text())
    lanes = raw.get("lanes") or {}
    if not lanes:
        raise ValueError(f"{path}: no lanes")
    for steps in lanes.values():
        for step in steps:
            load_plan(step["config"], only=step.get("models"))  # ValueError naming what is wrong
    return raw


def run_lane(
    lease: str | Path, lane: str, deadline_s: float, data: str | None = None, out: str | None = None, overrides: dict | None = None
) -> list[dict]:
    """The steps of one lease lane in turn, each a sweep into ``<out, default the lease's>/<its config's out folder
    name>``, all of them within ``deadline_s`` seconds from now."""
    raw = load_lease(lease)
    if lane not in raw["lanes"]:
        raise ValueError(f"{lease}: no lane {lane!r}; lanes: {', '.join(raw['lanes'])}")
    start, records = time.perf_counter(), []
    for step in raw["lanes"][lane]:
        left = deadline_s - (time.perf_counter() - start)
        folder = Path(out or raw.get("out", "runs/lease")) / Path(load_plan(step["config"]).out).name
        plan = load_plan(step["config"], data, str(folder), max(left, 1e-3), step.get("models"), overrides)
        _logger.info("lane %s: %s, %s, %.0f s left", lane, step["config"], ", ".join(m["model"] for m in plan.models), left)
        records += run_sweep(plan, lane=lane)
    return records


def _settings(pairs: list[str]) -> dict:
    """--set KEY=VALUE pairs as TrainConfig values (YAML scalars: 4, 0.5, true)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="sweep YAML (train/sweeps/*.yaml)")
    what.add_argument("--lease", help="lease YAML (train/sweeps/lease.yaml): run one of its lanes, named by --lane")
    add_data_argument(parser, overrides="the config's")
    parser.add_argument("--out", help="output folder, instead of the config's")
    parser.add_argument("--deadline", type=float, help="seconds for the whole sweep (or lane), instead of the config's deadline_s")
    parser.add_argument("--resume", action="store_true", help="skip finished models, continue an interrupted one from its last epoch")
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="train only these models of the config")
    parser.add_argument("--lane", help="with --lease: the lane to run")
    # extend: `--set a=1 --set b=2` keeps both (a plain nargs="+" kept only the last, silently)
    set_help = "TrainConfig fields over every model's (a rehearsal); repeatable"
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=set_help)
    whole = "no wall-clock budgets: every model runs its whole schedule (a GPU sweep's protocol on CPU)"
    parser.add_argument("--whole-schedules", action="store_true", help=whole)
    args = parser.parse_args(argv)
    failed: list[str] = []

    def run() -> None:
        overrides = _settings(args.set)
        if args.lease:
            if not (args.lane and args.deadline):
                parser.error("--lease needs --lane and --deadline")
            records = run_lane(args.lease, args.lane, args.deadline, args.data, args.out, overrides)
        else:
            plan = load_plan(args.config, args.data, args.out, args.deadline, args.only, overrides)
            records = run_sweep(dataclasses.replace(plan, whole_schedules=args.whole_schedules), resume=args.resume)
        failed.extend(r["model"] for r in records if r["status"].startswith("failed"))
        if failed:
            _logger.error("failed: %s", ", ".join(failed))

    return exit_code(run, _logger, errors=(ValueError, yaml.YAMLError)) or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
