"""ZeroGPU's rules in the serving path, on a CPU (brainmri.serving.zerogpu): inputs checked before the decorated call,
results with no tensor off the CPU, a duration from the batch's size; and the real ``spaces`` wrapper, forked and
pickled as on a Space, through tests/zerogpu_stand_in.py. What only a GPU shows runs in the lease (docs/space.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from shipped import require_shipped

from brainmri.serving import Predictor, zerogpu

SLICE = ROOT / "examples" / "glioma_1.jpg"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(require_shipped())


def test_the_duration_asked_for_grows_with_the_batch_and_stays_under_the_default():
    assert zerogpu.gpu_seconds([object()]) == zerogpu.FIRST_S
    assert zerogpu.gpu_seconds([object()] * 8, "simple_cnn_7", "LayerCAM") == zerogpu.FIRST_S + 7 * zerogpu.PER_IMAGE_S
    assert zerogpu.gpu_seconds([object()] * 500) == zerogpu.MAX_S == 60


@dataclass
class _Held:
    values: list


def test_a_result_holding_a_tensor_off_the_cpu_is_refused_naming_where():
    fine = {"cam": np.zeros((2, 2)), "logits": torch.zeros(2), "image": Image.new("RGB", (2, 2))}
    assert zerogpu.host_only(fine) is fine
    with pytest.raises(TypeError, match=r"result\.values\[1\]\['x'\] is a tensor on meta"):  # meta: CUDA's stand-in
        zerogpu.host_only(_Held([1, {"x": torch.zeros(1, device="meta")}]))


def test_on_zerogpu_the_task_checks_its_own_result(monkeypatch):
    def task():
        return [torch.zeros(1, device="meta")]

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert zerogpu.gpu_task(task) is task
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # spaces read its setting at import: its GPU() passes the task through
    with pytest.raises(TypeError, match=r"task\(\)\[0\] is a tensor on meta"):
        zerogpu.gpu_task(task)()


@pytest.mark.parametrize(
    "images, model, method, message",
    [
        ([], "simple_cnn_7", "LayerCAM", "no image given"),
        (["scan.jpg"], "simple_cnn_7", "LayerCAM", "expected a decoded image"),
        ([Image.new("L", (64, 64))], "simple_cnn_7", "LayerCAM", "expected an RGB image"),
        ([Image.new("RGB", (64, 64))], "simple_cnn_7", "NoSuchCAM", "unknown CAM method 'NoSuchCAM'"),
        ([Image.new("RGB", (64, 64))], "resnet999", "LayerCAM", "unknown model 'resnet999'"),
    ],
)
def test_bad_input_is_refused_before_the_gpu_call(predictor: Predictor, monkeypatch, images, model, method, message):
    calls = []
    monkeypatch.setattr(predictor, "run_passes_on_gpu", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=message):
        predictor.predict_many(images, model, method)
    if images:
        with pytest.raises(ValueError, match=message):
            predictor.predict(images[0], model, method)
    assert calls == []


@pytest.mark.slow
def test_the_real_spaces_wrapper_forks_pickles_and_is_asked_for_a_duration():
    """spaces.GPU as on a Space, its device API stood in: the answer comes back from a forked worker the same as in
    process; bad input costs no scheduled call; and the same mistake inside the call would read as a bare error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "zerogpu_stand_in.py"), str(SLICE)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["decorated"] and not report["forked_in_parent"]
    assert report["same_answer"] and report["top_class"] == "glioma" and report["tumour_box"]
    assert report["parent_pid"] not in report["worker_pids"] and report["worker_pids"]
    assert report["scheduled_after_good"] == [zerogpu.FIRST_S]  # one image: the shortest request
    assert "unknown CAM method 'NoSuchCAM'" in report["bad_method"] and "unknown model 'resnet999'" in report["bad_model"]
    assert report["scheduled_after_bad"] == report["scheduled_after_good"]  # refused before any GPU was asked for
    assert "NoSuchCAM" not in report["inside"] and "ValueError" in report["inside"]  # why the checks come first
    assert report["device_tensor"].endswith("'TypeError'")  # an error, not a hang
    assert report["scheduled_at_end"] == [zerogpu.FIRST_S, zerogpu.FIRST_S, 5]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the lease: scripts/device_sweep.sh --serving)")
def test_a_cuda_tensor_in_a_result_is_refused():
    with pytest.raises(TypeError, match="is a tensor on cuda"):
        zerogpu.host_only({"logits": torch.zeros(1, device="cuda")})
