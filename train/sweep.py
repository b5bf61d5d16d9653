"""Train every model of a sweep config under one protocol, one after another, and tabulate them.

    python -m train.sweep --config train/sweeps/full.yaml        # the GPU run (scripts/device_sweep.sh wraps it)
    python -m train.sweep --config train/sweeps/quick.yaml --data ../shared/data/brain-tumor-mri   # CPU check, < 1 min
    python -m train.sweep --config train/sweeps/cpu.yaml --resume    # the CPU plan: skips what finished, continues the rest

A config holds the ``protocol`` (the TrainConfig fields every model shares: data, split,
seed, epochs, batch, optimiser, augmentation, early stopping) and the ``models``, each with
only settings of how it uses the machine: ``time_budget_s`` and ``grad_checkpointing``. A
sweep whose runs are controlled changes (train/sweeps/seed.yaml) names the protocol fields
its entries may set in ``varies``; every other field stays shared.
Each model gets the smaller of its budget and what the sweep's ``deadline_s`` still allows
once every later model is promised ``min_budget_s`` plus ``overhead_s``; within its budget
it fits its cosine schedule to the epochs that fit (see TrainConfig.time_budget_s).

Data work (thumbnails, split, decoding, the near-dedup Testing subset) is done once for all
models (brainmri.datacache). A model that runs out of GPU memory is retried once with gradient
checkpointing; one that fails otherwise is logged with its traceback, recorded as failed in
``sweep.json`` and the table, and the sweep goes on and exits 1 at the end.

Writes OUT/<model>/ (checkpoint folders), OUT/experiments.{csv,md}, OUT/roofline.csv and
OUT/sweep.json, refreshed after each model so that a run cut short still leaves its table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from brainmri.checkpoint import read_metrics
from brainmri.cli import add_data_argument, setup_logging
from brainmri.datacache import open_cache
from brainmri.registry import get_spec
from train.config import TrainConfig
from train.train import fit

_logger = logging.getLogger(__name__)

MACHINE_KEYS = {"model", "time_budget_s", "grad_checkpointing"}  # what a model entry may set; all else is protocol
NOT_PROTOCOL = MACHINE_KEYS | {"out", "resume", "save_resume"}


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


def load_plan(path: str | Path, data: str | None = None, out: str | None = None, deadline_s: float | None = None) -> SweepPlan:
    """Read and check a sweep config; ``data``, ``out`` and ``deadline_s`` override the file's."""
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
    models = list(raw.get("models") or [])
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
    )


def budget_for(plan: SweepPlan, index: int, elapsed: float) -> float:
    """Seconds of training for model ``index``: its own budget, cut to leave every later model its minimum."""
    later = len(plan.models) - index - 1
    left = plan.deadline_s - elapsed - plan.overhead_s - later * (plan.min_budget_s + plan.overhead_s)
    return max(plan.min_budget_s, min(float(plan.models[index]["time_budget_s"]), left))


def model_config(plan: SweepPlan, entry: dict, budget: float, resumable: bool = False) -> TrainConfig:
    """The model's TrainConfig; ``resumable`` writes the --resume state each epoch and continues from one left there."""
    changes = {k: entry[k] for k in plan.varies if k in entry}
    out = Path(plan.out) / entry["model"]
    return TrainConfig(
        **{**plan.protocol, **changes},
        model=entry["model"],
        out=str(out),
        time_budget_s=budget,
        grad_checkpointing=bool(entry.get("grad_checkpointing", False)),
        save_resume=resumable,
        resume=resumable and (out / "resume" / "latest").is_file(),
    )


def finished(folder: Path) -> bool:
    """A model folder whose run ended: tested (metrics.json with a test entry) and no --resume state left."""
    try:
        done = "test" in read_metrics(folder)
    except ValueError:
        return False
    return done and not (folder / "resume").exists()


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


def run_sweep(plan: SweepPlan, resume: bool = False, only: list[str] | None = None) -> list[dict]:
    """Train, test and tabulate each model of the plan in turn; one record per model.

    With ``resume`` a finished model is skipped and an interrupted one continues from its last epoch
    (each run writes its --resume state); ``only`` restricts the run to those models.
    """
    start = time.perf_counter()
    out = Path(plan.out)
    out.mkdir(parents=True, exist_ok=True)
    device = measure_device()
    records: list[dict] = []
    with open_cache():
        for i, entry in enumerate(plan.models):
            if only and entry["model"] not in only:
                continue
            if resume and finished(out / entry["model"]):
                _logger.info("== %s (%d/%d): finished before, skipped", entry["model"], i + 1, len(plan.models))
                records.append({"model": entry["model"], "status": "ok", "skipped": "finished before"})
                continue
            budget = budget_for(plan, i, time.perf_counter() - start)
            record = {"model": entry["model"], "time_budget_s": round(budget, 1), "status": "ok"}
            _logger.info("== %s (%d/%d): %.0f s of training", entry["model"], i + 1, len(plan.models), budget)
            t0 = time.perf_counter()
            try:
                train_model(model_config(plan, entry, budget, resumable=resume))
            except Exception as e:  # recorded in sweep.json and the table; the sweep exits 1 at the end
                _logger.exception("%s failed", entry["model"])
                record["status"] = f"failed: {type(e).__name__}: {e}"
            record["wall_s"] = round(time.perf_counter() - t0, 1)
            records.append(record)
            free_accelerator_memory()
            write_outputs(plan, records, device, time.perf_counter() - start)
    return records


def measure_device() -> dict:
    """The device, and on a GPU the measured matrix-product and copy ceilings (train.roofline)."""
    info = {"device": "cpu", "host": platform.node(), "torch": torch.__version__}
    if torch.cuda.is_available():
        from train.roofline import measure_peak

        peak = measure_peak("cuda")
        info.update(
            device=torch.cuda.get_device_name(),
            peak_bf16_tflops=round(peak.flops / 1e12, 1),
            peak_tb_per_s=round(peak.bytes_per_s / 1e12, 2),
        )
        _logger.info("device %s: %.0f TFLOP/s bf16 matmul, %.2f TB/s copy", info["device"], peak.flops / 1e12, peak.bytes_per_s / 1e12)
    return info


def write_outputs(plan: SweepPlan, records: list[dict], device: dict, elapsed: float) -> None:
    """sweep.json, the experiments table and the roofline table, as they stand."""
    from train.results import collect_rows, write_tables
    from train.roofline import sweep_roofline

    out = Path(plan.out)
    summary = {"plan": dataclasses.asdict(plan), "device": device, "elapsed_s": round(elapsed, 1), "models": records}
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_tables(collect_rows([out]), out)
    sweep_roofline(out, device)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="sweep YAML (train/sweeps/*.yaml)")
    add_data_argument(parser, overrides="the config's")
    parser.add_argument("--out", help="output folder, instead of the config's")
    parser.add_argument("--deadline", type=float, help="seconds for the whole sweep, instead of the config's deadline_s")
    parser.add_argument("--resume", action="store_true", help="skip finished models, continue an interrupted one from its last epoch")
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="train only these models of the config")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.config, args.data, args.out, args.deadline)
    except (ValueError, yaml.YAMLError) as e:
        _logger.error("%s", e)
        return 2
    unknown = sorted(set(args.only or []) - {m["model"] for m in plan.models})
    if unknown:
        _logger.error("--only %s: not in %s", " ".join(unknown), args.config)
        return 2
    records = run_sweep(plan, resume=args.resume, only=args.only)
    failed = [r["model"] for r in records if r["status"] != "ok"]
    if failed:
        _logger.error("failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
