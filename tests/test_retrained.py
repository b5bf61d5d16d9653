"""The before-and-after table of the mirror-aware retrain (reports.retrained): both rows once a model is retrained,
one row while it still ships its as-is weights."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import write_checkpoint

from reports.retrained import figures, retrained_markdown


def _metrics(accuracy: float) -> dict:
    return {
        "validation": {"accuracy": accuracy, "n": 816},
        "test": {"accuracy": accuracy},
        "test_unseen": {"accuracy": accuracy - 0.02, "accuracy_ci95": [accuracy - 0.05, accuracy], "n": 335},
        "calibration": {"test_unseen_ece_after": 0.01},
    }


def _shipped(root: Path, name: str, split: str, accuracy: float) -> dict:
    folder = write_checkpoint(root / name, name)
    (folder / "metrics.json").write_text(json.dumps(_metrics(accuracy)))
    (folder / "train_config.json").write_text(json.dumps({"model": name, "split": split}))
    return figures(_metrics(accuracy))


def test_a_retrained_model_shows_both_rows_and_one_not_retrained_one(tmp_path: Path):
    before = {"simple_cnn_7": {"commit": "abc1234", **figures(_metrics(0.90))}}
    _shipped(tmp_path, "simple_cnn_7", "mirror-aware", 0.85)
    before["simple_cnn_10"] = {"commit": "abc1234", **_shipped(tmp_path, "simple_cnn_10", "as-is", 0.91)}
    snapshot = tmp_path / "as_is_split.json"
    snapshot.write_text(json.dumps({"models": before}))
    table = retrained_markdown(tmp_path, snapshot)
    assert table.startswith("**1 of 2** shipped classifiers")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| `simple_cnn_10`", "as-is (not retrained yet)"],
        ["| `simple_cnn_7`", "as-is (before)"],
        ["| `simple_cnn_7`", "**mirror-aware**"],
    ]
    assert "88.00% (85.00-90.00)" in rows[1] and "83.00% (80.00-85.00)" in rows[2]
