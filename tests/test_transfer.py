"""The GPU sweep's device call fits its transfer limit, the checkpoint stash is safe and keeps the served model, and the
data set travels with each duplicate once and comes back whole."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ops import transfer

ROOT = Path(__file__).resolve().parent.parent


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with a committed checkpoints/ folder and a git-ignored data/."""
    repo = tmp_path / "repo"
    (repo / "checkpoints/m").mkdir(parents=True)
    (repo / "checkpoints/m/model.safetensors").write_bytes(b"w" * 3000)
    (repo / "app.py").write_text("print('hi')\n")
    (repo / ".gitignore").write_text("/data/\n")
    (repo / "data").mkdir()
    (repo / "data/x.jpg").write_bytes(b"d" * 500)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return repo


def test_transfer_counts_tracked_and_untracked_files_and_the_carried_folder_but_not_stashed_ones(repo):
    (repo / "notes.txt").write_bytes(b"n" * 70)  # untracked, not ignored: it travels
    sizes = transfer.transfer_bytes(repo)
    tree = len("print('hi')\n") + len("/data/\n") + 70
    assert sizes == {"tree": tree, "carried": 500, "total": tree + 500}
    assert transfer.transfer_bytes(repo, stashed=None)["tree"] == tree + 3000


def test_stash_refuses_uncommitted_checkpoints_and_restore_brings_them_back(repo):
    weights = repo / "checkpoints/m/model.safetensors"
    weights.write_bytes(b"changed")
    with pytest.raises(ValueError, match="uncommitted changes"):
        transfer.stash(repo)
    assert weights.read_bytes() == b"changed"  # nothing was deleted
    _git(repo, "checkout", "--", "checkpoints")
    (repo / "checkpoints/new").mkdir()
    (repo / "checkpoints/new/metrics.json").write_text("{}")  # an untracked new checkpoint is a change too
    with pytest.raises(ValueError, match="checkpoints/new/metrics.json"):
        transfer.stash(repo)
    shutil.rmtree(repo / "checkpoints/new")
    transfer.stash(repo)
    assert not weights.exists()
    transfer.restore(repo)
    assert weights.read_bytes() == b"w" * 3000


def test_stash_keeps_the_app_default_checkpoint_for_the_cuda_check(repo):
    kept = repo / transfer.KEPT / "model.safetensors"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"k" * 700)
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "default model")
    assert transfer.transfer_bytes(repo)["tree"] == transfer.transfer_bytes(repo, stashed=None)["tree"] - 3000  # only m/ is left out
    transfer.stash(repo)
    assert kept.read_bytes() == b"k" * 700 and not (repo / "checkpoints/m/model.safetensors").exists()
    # The training call after the serving call: everything out, the first stash's deletions no obstacle
    assert transfer.transfer_bytes(repo, keep=False)["tree"] == transfer.transfer_bytes(repo)["tree"] - 700
    transfer.stash(repo, keep=False)
    assert not kept.exists()


def test_data_travels_with_each_duplicate_once_and_relinks_byte_for_byte(tmp_path):
    src = tmp_path / "ds"
    for name, data in {"Training/a/1.jpg": b"one", "Training/a/2.jpg": b"two", "Testing/a/1.jpg": b"one", "README.md": b"r"}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (tmp_path / "ds-masks/Training/a").mkdir(parents=True)
    (tmp_path / "ds-masks/masks.csv").write_text("path\n")
    carried = tmp_path / "data"
    assert transfer.copy_data(src, carried / "ds") == {"files": 3, "copies": 1}
    ones = [carried / "ds/Testing/a/1.jpg", carried / "ds/Training/a/1.jpg"]
    assert sum(p.exists() for p in ones) == 1 and (carried / "ds-masks/masks.csv").is_file()  # the copy stays behind
    assert transfer.relink(carried) == 1
    assert [p.read_bytes() for p in ones] == [b"one", b"one"]
    assert sorted(p.relative_to(carried / "ds") for p in (carried / "ds").rglob("*")) == sorted(p.relative_to(src) for p in src.rglob("*"))


@pytest.mark.slow
def test_the_lease_transfer_stays_under_the_target_and_the_device_limit(tmp_path, data_dir):
    """What prepare_device_data.sh carries for the training call (the data set with its duplicates once, and its
    masks) plus this working tree with all of checkpoints/ left out, measured as the device tool measures it."""
    carried = tmp_path / "data"
    transfer.copy_data(data_dir, carried / "brain-tumor-mri")
    sizes = transfer.transfer_bytes(ROOT, carried=carried, keep=False)
    assert sizes["carried"] > 45 * 2**20 and (carried / "brain-tumor-mri-masks/masks.csv").is_file()  # all of it is there
    assert (carried / "brain-tumor-mri-masks-brisc/masks.csv").is_file()  # the second expert's too
    assert sizes["tree"] < transfer.transfer_bytes(ROOT, carried=carried)["tree"] - 12 * 2**20  # Lite0 stays behind
    assert sizes["total"] <= transfer.TARGET_BYTES < transfer.LIMIT_BYTES, f"{sizes['total'] / 1e6:.1f} MB would travel"
