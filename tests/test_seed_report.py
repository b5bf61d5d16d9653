"""The seed comparison: rows and claim sentences computed from checkpoints' metrics.json, never typed."""

from __future__ import annotations

import json
from pathlib import Path

from brainmri.eval import seeds as seed_report
from brainmri.models.registry import REGISTRY


def _checkpoint(root: Path, name: str, val: float, test: float, **extra) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    metrics = {"model": name, "validation": {"accuracy": val}, "test": {"accuracy": test}, "test_unseen": {"accuracy": test - 0.01}}
    metrics.update({"parameters": 420_000, "epochs_run": 60, "best_epoch": 50, "epochs_planned": 60, "train_seconds": 30.0})
    metrics.update({"device": "NVIDIA H200", "stopped": "epochs", **extra})
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_every_run_and_claim_names_a_registry_model():
    assert set(seed_report.RUNS) <= set(REGISTRY) and set(seed_report.SEED_ACCURACY) <= set(seed_report.RUNS)
    assert all(c.base == seed_report.BASE for c in seed_report.CLAIMS[4:])  # the seed's other claims: changes to Sequential 4


def test_sentences_follow_the_numbers_and_the_seed_direction(tmp_path):
    _checkpoint(tmp_path, "simple_cnn_7", 0.95, 0.90)
    _checkpoint(tmp_path, "simple_cnn_7_e60", 0.98, 0.97)  # better, as the seed found: agree
    _checkpoint(tmp_path, "simple_cnn_10", 0.955, 0.93)  # within a point of simple_cnn_7: no clear difference
    _checkpoint(tmp_path, "simple_cnn_10_e60", 0.94, 0.88, stopped="early stop", epochs_run=17, best_epoch=7)
    _checkpoint(tmp_path, "simple_cnn_10_e60_k5", 0.99, 0.987)
    sentences = seed_report.claim_sentences(tmp_path)
    assert sentences[0].startswith("**60 epochs against 20 (7 layers)**: better") and "we agree" in sentences[0]
    assert "no clear difference" in sentences[2] and "we do not agree" in sentences[2]
    assert (
        "worse on validation (94.0% vs 98.0%" in sentences[3]
        and "Weak evidence: early stopping ended Sequential 4 at epoch 17" in sentences[3]
    )
    k5 = next(s for s in sentences if s.startswith("**5x5"))
    assert "better on validation (99.0% vs 94.0%" in k5 and "seed found" not in k5  # the seed gave no figure for it
    assert len(sentences) == 5  # claims whose runs are missing are left out, not guessed


def test_table_puts_the_seed_figure_beside_ours_and_says_where_it_was_measured(tmp_path):
    _checkpoint(tmp_path, "simple_cnn_7", 0.95, 0.898)
    rows = seed_report.seed_rows(tmp_path)
    assert rows == [{**rows[0], "run": "Sequential 1: 7 layers, up to 20 epochs", "test acc": "89.8%", "seed (on Testing)": "79.3%"}]
    text = seed_report.seed_markdown(tmp_path)
    assert "| Sequential 1: 7 layers, up to 20 epochs | simple_cnn_7 |" in text and "measured on the official **Testing** split" in text
    assert seed_report.seed_markdown(tmp_path / "none").startswith("No seed runs shipped yet")


def test_the_note_says_whether_the_runs_share_their_validation_images(tmp_path):
    _checkpoint(tmp_path, "simple_cnn_7", 0.95, 0.90)
    _checkpoint(tmp_path, "simple_cnn_10", 0.955, 0.93)
    assert seed_report.same_validation_note(tmp_path).startswith("Which validation images simple_cnn_7, simple_cnn_10")
    for name, images in (("simple_cnn_7", "a.jpg\nb.jpg"), ("simple_cnn_10", "b.jpg\na.jpg")):
        (tmp_path / name / "val_split.txt").write_text(f"# a note\n{images}\n")
    assert seed_report.same_validation_note(tmp_path) == "All 2 runs are chosen on the same 2 validation images."
    (tmp_path / "simple_cnn_10" / "val_split.txt").write_text("a.jpg\nc.jpg\n")
    assert seed_report.same_validation_note(tmp_path).startswith("Their validation images differ")
