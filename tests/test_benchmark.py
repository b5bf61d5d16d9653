"""reports.benchmark on a tiny checkpoint with tiny repeat counts: the table's shape, not its timings."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import write_checkpoint

from brainmri.models import registry
from reports import benchmark


def test_benchmark_prints_one_row_per_checkpoint(tmp_path: Path, capsys):
    folders = []
    for name in ("simple_cnn_7", "simple_cnn_10"):
        folders.append(write_checkpoint(tmp_path / name, name))
    threads = str(torch.get_num_threads())  # main() sets the thread count: keep the suite's
    argv = [*map(str, folders), "--threads", threads, "--repeats", "3", "--warmup", "1", "--batch-size", "4", "--train-steps", "1"]
    assert benchmark.main([*argv, "--out", str(tmp_path / "bench.json")]) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + len(folders)
    assert all(line.startswith("|") and line.endswith("|") and line.count("|") == 7 for line in lines)
    assert "latency ms, batch 1" in lines[0] and "train img/s" in lines[0]
    for line, name in zip(lines[2:], ("simple_cnn_7", "simple_cnn_10")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == name and cells[2] == "128"
        assert int(cells[1].replace(",", "")) == registry.count_parameters(registry.create_model(name))
        assert all(float(c) > 0 for c in cells[3:])
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["simple_cnn_7", "simple_cnn_10"]
    assert all(r["latency_ms_p90"] >= r["latency_ms_median"] > 0 for r in rows)


def test_benchmark_refuses_a_folder_without_checkpoint(tmp_path: Path, caplog):
    assert benchmark.main([str(tmp_path), "--threads", str(torch.get_num_threads()), "--repeats", "1"]) == 2
    assert "config.json" in caplog.text
