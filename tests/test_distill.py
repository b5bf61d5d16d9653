"""Knowledge distillation (train.distill): the loss, the split rule a teacher must meet, and a run end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from test_train_e2e import PER_CLASS, run_train

import train.distill as distill
from train.distill import check_same_validation, distill_loss, teacher_folders, teacher_targets


def test_distill_loss_mixes_the_labels_and_the_teacher_by_weight():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    soft = torch.randn(5, 4).softmax(dim=1)
    hard = F.cross_entropy(logits, labels, label_smoothing=0.1)
    taught = -(soft * logits.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(distill_loss(logits, labels, soft, 0.0, 0.1), hard)
    torch.testing.assert_close(distill_loss(logits, labels, soft, 1.0, 0.1), taught)
    torch.testing.assert_close(distill_loss(logits, labels, soft, 0.3, 0.1), 0.7 * hard + 0.3 * taught)


def test_distill_loss_keeps_the_teachers_probabilities_in_float32_under_bf16():
    """Under CPU autocast the student's logits are bf16; the teacher's probabilities must not be rounded to them."""
    torch.manual_seed(0)
    logits, labels = torch.randn(64, 4).bfloat16(), torch.randint(0, 4, (64,))
    soft = (torch.randn(64, 4) * 3).softmax(dim=1)
    taught = -(soft * logits.float().log_softmax(dim=1)).sum(dim=1).mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = distill_loss(logits, labels, soft, 1.0, 0.0)
    torch.testing.assert_close(got, taught)


class OneScan:
    """A validation split of one scan, ``/d/Training/glioma/<stem>.jpg``: what ``check_same_validation`` reads of it."""

    def __init__(self, stem: str):
        self.stem = stem

    def __len__(self):
        return 1

    def name(self, i):
        return f"/d/Training/glioma/{self.stem}.jpg"


def test_a_teacher_cut_by_another_split_is_refused(tmp_path: Path):
    """A teacher whose training side held one of this run's validation images would leak it into the student."""
    with pytest.raises(ValueError, match="not this run's validation split"):
        check_same_validation(tmp_path, OneScan("b"), "/d")  # no val_split.txt at all
    (tmp_path / "val_split.txt").write_text("# note\nTraining/glioma/a.jpg\n")
    with pytest.raises(ValueError, match="--teacher .* not this run's validation split"):
        check_same_validation(tmp_path, OneScan("b"), "/d")
    (tmp_path / "val_split.txt").write_text("# note\nTraining/glioma/b.jpg\n")
    check_same_validation(tmp_path, OneScan("b"), "/d")  # the same scans: accepted


def test_several_teachers_teach_as_one_by_the_mean_of_their_softmaxes(monkeypatch: pytest.MonkeyPatch):
    assert teacher_folders("a, b,") == [Path("a"), Path("b")]
    with pytest.raises(ValueError, match="names no folder"):
        teacher_folders(" , ")
    own = {"a": torch.tensor([[0.9, 0.1, 0.0, 0.0]]), "b": torch.tensor([[0.5, 0.0, 0.5, 0.0]])}
    monkeypatch.setattr(distill, "_softmax_on", lambda folder, train, batch_size: own[folder.name])

    class Train:
        labels = torch.tensor([0]).numpy()

    torch.testing.assert_close(teacher_targets("a,b", Train()), torch.tensor([[0.7, 0.05, 0.25, 0.0]]))
    torch.testing.assert_close(teacher_targets("b", Train()), own["b"])


def test_a_resumed_run_reads_its_teachers_targets_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Kept in the resume folder, read back while the teacher's weights and the images are the same."""
    calls = []

    def softmax_on(folder, train, batch_size):
        calls.append(folder.name)
        return torch.tensor([[0.9, 0.1, 0.0, 0.0]])

    monkeypatch.setattr(distill, "_softmax_on", softmax_on)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "manifest.json").write_text('{"model.safetensors": "aa"}')
    one = OneScan("a")
    one.labels = torch.tensor([0]).numpy()
    first = teacher_targets(teacher, one, cache=tmp_path / "resume")
    torch.testing.assert_close(teacher_targets(teacher, one, cache=tmp_path / "resume"), first)
    assert calls == ["teacher"]  # the second read it back
    (teacher / "manifest.json").write_text('{"model.safetensors": "bb"}')  # other weights: computed again
    teacher_targets(teacher, one, cache=tmp_path / "resume")
    other = OneScan("b")
    other.labels = one.labels
    teacher_targets(teacher, other, cache=tmp_path / "resume")  # other images: again
    assert calls == ["teacher"] * 3
    (tmp_path / "resume" / distill.TARGETS).write_bytes(b"cut short")  # a run killed while writing: computed again
    teacher_targets(teacher, other, cache=tmp_path / "resume")
    assert calls == ["teacher"] * 4
    (teacher / "manifest.json").unlink()  # nothing to tell its weights by: never kept, never read back
    teacher_targets(teacher, other, cache=tmp_path / "resume")
    teacher_targets(teacher, other, cache=tmp_path / "resume")
    assert calls == ["teacher"] * 6


def test_each_of_several_teachers_must_share_the_split(tmp_path: Path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder, listed in ((good, "Training/glioma/x.jpg"), (bad, "Training/glioma/y.jpg")):
        folder.mkdir()
        (folder / "val_split.txt").write_text(listed + "\n")
    check_same_validation(f"{good},{good}", OneScan("x"), "/d")
    with pytest.raises(ValueError, match=rf"--teacher {re.escape(str(bad))}: its val_split.txt is not"):
        check_same_validation(f"{good},{bad}", OneScan("x"), "/d")


@pytest.mark.slow
def test_a_student_trains_on_its_teachers_soft_targets_and_says_so(data_dir: Path, tmp_path: Path):
    quick = ["--model", "simple_cnn_7", "--fit-ood", "false", "--evaluate-test", "false"]
    teacher = tmp_path / "teacher"
    run_train(data_dir, teacher, *quick)
    student = tmp_path / "student"
    proc = run_train(data_dir, student, *quick, "--teacher", str(teacher), "--distill-weight", "0.7")
    assert "the teacher agrees with" in proc.stderr
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["distilled_from"].startswith("teacher (weights sha256 ") and "weight 0.7 of the loss" in metrics["distilled_from"]
    assert f"- Distilled from: {metrics['distilled_from']}" in (student / "README.md").read_text()
    # The one encoder's class head learns from the same teacher (its split is the classifiers').
    one = tmp_path / "multitask"
    cmd = [sys.executable, "-m", "train.multitask", "--data", str(data_dir), "--out", str(one), "--epochs", "1"]
    cmd += ["--limit-per-class", str(PER_CLASS), "--max-train-batches", "1", "--batch-size", "4", "--teacher", str(teacher)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    taught = json.loads((one / "metrics.json").read_text())["distilled_from"]
    assert taught.startswith("teacher (weights sha256 ") and f"- Class head distilled from: {taught}" in (one / "README.md").read_text()
    assert "--teacher TEACHER --distill-weight 0.5" in (one / "README.md").read_text()
    # Another seed cuts another validation split: the teacher trained on some of it, and the run says so.
    cmd = [sys.executable, "-m", "train.train", "--data", str(data_dir), "--limit-per-class", str(PER_CLASS), "--epochs", "1"]
    cmd += [*quick, "--seed", "1", "--teacher", str(teacher), "--out", str(tmp_path / "refused")]
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "not this run's validation split" in refused.stderr
    assert "Traceback" not in refused.stderr
