"""The GPU sweep's device call fits its transfer limit with room to spare, and the checkpoint stash is safe."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from train import transfer

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


@pytest.mark.slow
def test_the_gpu_sweep_transfer_stays_six_mib_under_the_device_limit(tmp_path, data_dir):
    """What prepare_device_data.sh carries (the data set and the pinned timm wheel) plus this working
    tree without checkpoints/, measured as the device tool measures it."""
    carried = tmp_path / "data"
    (carried / "brain-tumor-mri").mkdir(parents=True)
    for split in ("Training", "Testing"):
        shutil.copytree(data_dir / split, carried / "brain-tumor-mri" / split)
    pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("timm=="))
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    pip += ["--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "-d", str(carried / "wheels"), pin]
    subprocess.run(pip, check=True, timeout=300)
    sizes = transfer.transfer_bytes(ROOT, carried=carried)
    assert sizes["carried"] > 40 * 2**20  # the whole data set really is in there
    assert sizes["total"] <= 58 * 2**20, f"{sizes['total'] / 2**20:.1f} MiB would travel"
