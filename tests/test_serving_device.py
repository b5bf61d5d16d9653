"""The serving device and ZeroGPU, on a CPU: the device chosen, ``@spaces.GPU`` a no-op off ZeroGPU with the answers
unchanged, a forked GPU worker not stuck on a lock held at the fork, and scripts/cuda_check.py rehearsed CPU vs CPU."""

from __future__ import annotations

import multiprocessing
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from shipped import SHIPPED, require_shipped

from brainmri.data.records import limit_per_class, load_records
from brainmri.serving import Predictor, resolve_device, zerogpu

sys.path.insert(0, str(ROOT / "scripts"))
import cuda_check  # noqa: E402


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    # On the CPU even where a GPU is seen (the lease runs these tests there): the answers compared below are the CPU's,
    # and a forked worker cannot use a CUDA context its parent made.
    return Predictor(require_shipped(), device="cpu")


@pytest.fixture(scope="module")
def images(data_dir):
    records = limit_per_class(load_records(data_dir, "test"), 1)
    return [records.open(i) for i in range(len(records))]


def test_the_device_is_the_cpu_here_unless_asked(monkeypatch, tf32_on):
    monkeypatch.delenv("BRAIN_MRI_DEVICE", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="'cuda' asked for, but torch .* sees no GPU"):
        resolve_device("cuda")
    monkeypatch.setenv("BRAIN_MRI_DEVICE", "cuda:0")
    with pytest.raises(ValueError, match="'cuda:0' asked for"):
        resolve_device()
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # ZeroGPU: the GPU appears inside a decorated call only
    assert resolve_device() == torch.device("cuda:0")
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False  # float32 as on the CPU


def test_spaces_is_installed_and_its_decorator_is_a_no_op_off_zerogpu():
    import spaces

    assert zerogpu.spaces is spaces  # requirements.txt installs it, so the Space gets the real decorator

    def task(x: int) -> int:
        return x + 1

    assert zerogpu.gpu_task(task) is task and spaces.GPU(task) is task


def test_on_zerogpu_without_spaces_is_an_error_naming_it(monkeypatch):
    monkeypatch.setattr(zerogpu, "spaces", None)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    with pytest.raises(ValueError, match="spaces package is not installed"):
        zerogpu.gpu_task(len)
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert zerogpu.gpu_task(len) is len


@pytest.mark.parametrize("name", SHIPPED)
def test_the_decorated_entry_point_answers_exactly_as_the_plain_passes(predictor: Predictor, images, name: str):
    """With ``spaces`` installed but not on ZeroGPU: what the app calls is the plain method, bit for bit."""
    assert predictor.run_passes_on_gpu == predictor.run_passes
    through, plain = predictor.predict_many(images, name), predictor.run_passes(images, name, "LayerCAM")
    for a, b in zip(through, plain):
        assert a.probabilities == b.probabilities and np.array_equal(a.cam, b.cam) and a.device == b.device == "cpu"
        assert (a.ood is None) == (b.ood is None) and (a.ood is None or a.ood.distance == b.ood.distance)


def _predict_in_child(predictor: Predictor, image, name: str, out) -> None:
    torch.set_num_threads(1)
    out.put(predictor.predict(image, name).top_class)


def test_a_forked_worker_is_not_stuck_on_a_lock_held_at_the_fork(predictor: Predictor, images):
    """ZeroGPU forks its GPU worker from the app's process: locks another thread held then are fresh in the child."""
    name = SHIPPED[1]
    loaded = predictor.model(name)
    expected = predictor.predict(images[0], name).top_class
    out = multiprocessing.get_context("fork").Queue()
    with loaded.lock, predictor.cache._lock:  # as if another request were mid-pass and another mid-load
        child = multiprocessing.get_context("fork").Process(target=_predict_in_child, args=(predictor, images[0], name, out))
        child.start()
        child.join(30)
    stuck = child.is_alive()
    if stuck:
        child.kill()
    assert not stuck and child.exitcode == 0
    assert out.get(timeout=5) == expected


def test_the_cuda_check_rehearsal_agrees_with_itself(data_dir, capsys):
    assert cuda_check.main(["--device", "cpu", "--n", "2", "--data", str(data_dir), "--model", "simple_cnn_7"]) == 0
    out = capsys.readouterr().out
    assert "2 images, simple_cnn_7: CPU" in out and "0 disagree" in out and "probability difference 0.0e+00" in out


def test_the_cuda_check_names_each_disagreement():
    same = cuda_check.Agreement("a.jpg", "glioma", "glioma", 2e-4, 1.0, False, True, 3.0)
    assert same.problems(1e-3, 4) == []
    off = cuda_check.Agreement("b.jpg", "glioma", "meningioma", 5e-3, 9.0, False, False, 3.0)
    assert off.problems(1e-3, 4) == [
        "class meningioma on the device, glioma on the CPU",
        "probabilities differ by 5.00e-03 > 0.001",
        "heatmap peaks 9.0 px apart > 4",
        "a different OOD verdict",
    ]
    assert cuda_check.Agreement("c.jpg", "glioma", "glioma", 0.0, 9.0, True, True, 3.0).problems(1e-3, 4) == []  # a tie
    outlined = cuda_check.Agreement("d.jpg", "glioma", "glioma", 0.0, 0.0, False, True, 3.0, outline_dice=0.95)
    assert outlined.problems(1e-3, 4, outline_dice=0.98) == ["outlines at Dice 0.950 < 0.98"]
    alone = cuda_check.Agreement("e.jpg", "glioma", "glioma", 0.0, 0.0, False, True, 3.0, outline_missing="device")
    assert alone.problems(1e-3, 4) == ["an outline on the device alone"]


def test_the_outlines_dice_counts_two_empty_masks_as_the_same():
    empty, blob = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    blob[2:6, 2:6] = True
    shifted = np.roll(blob, 1, axis=1)
    assert cuda_check.mask_dice(empty, empty) == 1.0 and cuda_check.mask_dice(blob, empty) == 0.0
    assert cuda_check.mask_dice(blob, shifted) == 2 * 12 / 32
