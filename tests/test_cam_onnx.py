"""LayerCAM with its backward written out for ONNX Runtime (brainmri.serving.cam_onnx) gives autograd's heatmap: each
convolution's input gradient against autograd's, then every registry EfficientNet-Lite's fused map, untrained at 64
px, against brainmri.explain's; what it cannot write out (squeeze-excitation, a hook inside a block) it declines,
and the served default uses it."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from test_onnx_passes import EFFICIENTNETS, SIZE, served
from torch import nn

from brainmri.explain import gradcam_batch
from brainmri.models import registry
from brainmri.runtime import Conv2dSameInKernel
from brainmri.serving import Predictor, cam_onnx, onnx_passes
from brainmri.serving.cam_onnx import conv_input_grad, layercam_runner, writable

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# The Lites that fuse stages at a heatmap size of their own, where the runner serves (the scratch Lite0 weighs bn2 alone,
# in the forward that classifies)
LITES = [n for n in EFFICIENTNETS if "lite" in n and registry.get_spec(n).cam_size]


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "groups", "same", "side"),
    [
        (8, 16, 1, 1, 1, False, 9),  # a pointwise expansion
        (16, 8, 1, 1, 1, False, 10),  # a projection
        (8, 8, 3, 1, 8, False, 9),  # depthwise, stride 1
        (8, 8, 5, 1, 8, False, 10),
        (8, 8, 3, 2, 8, True, 9),  # depthwise, stride 2, TensorFlow's "SAME": odd and even sides pad differently
        (8, 8, 3, 2, 8, True, 10),
        (8, 8, 5, 2, 8, True, 11),
        (8, 8, 5, 2, 8, True, 12),
        (4, 6, 3, 2, 1, False, 9),  # a dense strided convolution, symmetric padding
        (4, 6, 3, 1, 1, True, 8),
    ],
)
def test_a_convolutions_input_gradient_is_autograds(cin: int, cout: int, kernel: int, stride: int, groups: int, same: bool, side: int):
    torch.manual_seed(0)
    kind = Conv2dSameInKernel if same else nn.Conv2d
    conv = kind(cin, cout, kernel, stride, padding=0 if same else kernel // 2, groups=groups)
    x = torch.randn(1, cin, side, side, requires_grad=True)
    y = conv(x)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(conv_input_grad(conv, g, (side, side)), expected, atol=1e-5, rtol=1e-5)


def test_the_lites_are_written_out_and_the_others_are_not():
    assert LITES
    for name in EFFICIENTNETS:
        model, layers = served(name)
        assert (writable(model, layers) is not None) == (name in LITES), name


@pytest.mark.parametrize("name", LITES)
def test_the_heatmap_through_onnx_is_autograds(name: str):
    model, layers = served(name)
    runner = layercam_runner(model, layers, f"test-cam-{name}", SIZE)
    assert runner is not None
    x = torch.randn(2, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    for classes in ([0, 3], [2, 1]):
        expected, _ = gradcam_batch(model, layers, x, "LayerCAM", classes)
        got = runner(x, lambda c=classes: c)
        assert got.shape == expected.shape == (2, SIZE, SIZE)
        assert np.abs(got - expected).max() < 1e-3


def test_a_hook_inside_a_block_keeps_the_torch_path():
    model, layers = served("tf_efficientnet_lite0")
    handle = model.blocks[5][0].conv_dw.register_forward_hook(lambda *_: None)
    assert writable(model, layers) is None
    handle.remove()
    assert writable(model, layers) is not None


def test_its_sessions_live_while_the_runner_does():
    model, layers = served("tf_efficientnet_lite0")
    runner = layercam_runner(model, layers, "test-cam-lifetime", SIZE)  # begun in the background
    assert runner.sessions(SIZE) is not None  # waits for them
    keys = [k for k in onnx_passes._sessions if k[0].startswith("test-cam-lifetime:")]
    assert len(keys) == 2  # its forward and its backward
    del runner
    gc.collect()
    assert not any(k[0].startswith("test-cam-lifetime:") for k in onnx_passes._sessions)


def test_an_export_that_fails_leaves_the_heatmap_to_autograd(monkeypatch, caplog):
    model, layers = served("tf_efficientnet_lite0")

    def refuse(*_args):
        raise RuntimeError("the tracer cannot follow this module")

    monkeypatch.setattr(cam_onnx, "export_graph", refuse)
    runner = layercam_runner(model, layers, "test-cam-refused")
    x = torch.randn(1, 3, SIZE, SIZE)
    assert runner(x, lambda: [0]) is None  # the caller then runs gradcam_batch (brainmri.serving.classify.heatmaps)
    assert "test-cam-refused:cam-forward at (3, 64, 64) stays in torch: its ONNX export failed" in caplog.text


def test_the_served_default_draws_its_heatmap_through_onnx(monkeypatch):
    from shipped import require_shipped

    sources = require_shipped()
    for flag, expected in (("1", True), ("0", False)):
        monkeypatch.setenv("BRAIN_MRI_ONNX", flag)
        loaded = Predictor(sources).model(registry.DEFAULT_CLASSIFIER)
        assert (loaded.layercam is not None) == expected
