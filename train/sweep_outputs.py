"""What a sweep writes as it goes: the device it ran on, sweep.json (a lane's, then the lanes' merged) and the tables
of reports.results and reports.roofline."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from pathlib import Path

import torch

from brainmri.models.checkpoint import SWEEP_SUMMARY

_logger = logging.getLogger(__name__)


def measure_device(peaks: bool = True) -> dict:
    """The device, and on a GPU (with ``peaks``) the measured matrix-product and copy ceilings (reports.roofline)."""
    info = {"device": "cpu", "host": platform.node(), "torch": torch.__version__}
    if torch.cuda.is_available() and not peaks:
        info["device"] = torch.cuda.get_device_name()
    elif torch.cuda.is_available():
        from reports.roofline import measure_peak

        peak = measure_peak("cuda")
        info.update(
            device=torch.cuda.get_device_name(),
            peak_bf16_tflops=round(peak.flops / 1e12, 1),
            peak_tb_per_s=round(peak.bytes_per_s / 1e12, 2),
        )
        _logger.info("device %s: %.0f TFLOP/s bf16 matmul, %.2f TB/s copy", info["device"], peak.flops / 1e12, peak.bytes_per_s / 1e12)
    return info


def write_outputs(plan, records: list[dict], device: dict, elapsed: float, lane: str | None = None) -> None:
    """sweep.json (a lane's: sweep-<lane>.json, then all lanes' merged), the experiments table and the roofline
    table, as they stand. ``plan``: the sweep's SweepPlan."""
    out = Path(plan.out)
    summary = {"plan": dataclasses.asdict(plan), "device": device, "elapsed_s": round(elapsed, 1), "models": records}
    _write_atomic(out / (f"sweep-{lane}.json" if lane else SWEEP_SUMMARY), json.dumps(summary, indent=2) + "\n")
    if lane:
        merge_lanes(out)
    else:
        _write_tables(out, device)


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file, so that a lane reading it never sees half of what another lane writes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_tables(out: Path, device: dict) -> None:
    from reports.results import collect_rows, write_tables
    from reports.roofline import sweep_roofline

    write_tables(collect_rows([out]), out)
    sweep_roofline(out, device)


def merge_lanes(out: str | Path) -> Path:
    """``out/sweep.json`` from the lanes' ``sweep-<lane>.json`` (each model's record in the order the lanes list them),
    and the tables of ``out``."""
    out = Path(out)
    parts = [json.loads(p.read_text()) for p in sorted(out.glob("sweep-*.json"))]
    if not parts:
        raise ValueError(f"{out}: no sweep-<lane>.json to merge")
    merged = {**parts[0], "models": [r for part in parts for r in part["models"]], "lanes": len(parts)}
    merged["elapsed_s"] = max(p["elapsed_s"] for p in parts)
    _write_atomic(out / SWEEP_SUMMARY, json.dumps(merged, indent=2) + "\n")
    _write_tables(out, merged["device"])
    return out / SWEEP_SUMMARY
