"""LayerCAM with its backward written out for ONNX Runtime (brainmri.serving.cam_onnx) gives autograd's heatmap: each
convolution's input gradient against autograd's, then every registry EfficientNet-Lite's fused map, untrained at 64
px, against brainmri.explain's; what it cannot write out (squeeze-excitation, a hook inside a block) it declines,
and the served default uses it."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from test_onnx_passes import EFFICIENTNETS, EXAMPLES, MULTITASK, SIZE, served
from torch import nn

from brainmri.data.imageio import load_image
from brainmri.explain import gradcam_batch
from brainmri.models import registry
from brainmri.serving import Predictor, cam_onnx, onnx_passes
from brainmri.serving.cam_graphs import conv_input_grad, writable
from brainmri.serving.cam_onnx import layercam_runner
from brainmri.serving.classify import heatmaps
from brainmri.serving.rewrites import Conv2dSameInKernel

needs_onnx = pytest.mark.skipif(not onnx_passes.onnx_serving(torch.device("cpu")), reason="needs onnxruntime, onnx")

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


@needs_onnx
def test_the_lites_are_written_out_and_the_others_are_not():
    assert LITES
    for name in EFFICIENTNETS:
        model, layers = served(name)
        assert (writable(model, layers) is not None) == (name in LITES), name


def test_a_runner_is_built_for_the_lites_and_the_one_encoder_alone():
    """Which models export LayerCAM's graphs as they load (brainmri.serving.loading): a registry entry that starts to
    would show here. No side given, so nothing is exported."""
    for name in [*EFFICIENTNETS, *MULTITASK]:
        model, layers = served(name)
        assert (layercam_runner(model, layers, f"test-which-{name}") is not None) == (name in LITES or name in MULTITASK), name


@pytest.mark.parametrize("side", [SIZE, 72, 75])  # 72, 75: odd sides inside (9 at stride 8; 75 itself), where "SAME" pads after only
@pytest.mark.parametrize("name", LITES)
def test_the_written_out_gradients_are_autograds(name: str, side: int):
    """The two graphs run in torch, against autograd's gradient at each hooked layer: the writing out alone, without
    ONNX Runtime's rounding (which a ReLU6 mask can turn into a different gradient for one unit)."""
    model, layers = served(name)
    runner = layercam_runner(model, layers, f"test-grads-{name}")  # no side: nothing exported
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        outputs = runner.forward_graph(x)
        written = runner.backward_graph(model.classifier.weight[1][None], outputs[1], *outputs[runner.saved_from :])
    kept = {}

    def keep(index: int):
        def hook(_module, _args, output):
            output.retain_grad()
            kept[index] = output

        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    model(x.clone().requires_grad_())[0, 1].backward()
    for handle in handles:
        handle.remove()
    assert len(written) == len(layers)
    for i, layer_grad in enumerate(written):
        expected = kept[i].grad
        assert layer_grad.shape == expected.shape
        assert (layer_grad - expected).abs().max() <= 1e-5 * expected.abs().max()


@needs_onnx
@pytest.mark.parametrize("name", LITES)
def test_the_heatmap_through_onnx_is_autograds(name: str):
    side = SIZE
    model, layers = served(name)
    runner = layercam_runner(model, layers, f"test-cam-{name}", side)  # exporting in the background meanwhile
    assert runner is not None
    x = torch.randn(2, 3, side, side).contiguous(memory_format=torch.channels_last)
    for classes in ([0, 3], [2, 1]):
        expected, _ = gradcam_batch(model, layers, x, "LayerCAM", classes)
        got = runner(x, lambda c=classes: c)
        assert got.shape == expected.shape == (2, side, side)
        assert np.abs(got - expected).max() < 1e-3


@needs_onnx
def test_a_hook_inside_a_block_keeps_the_torch_path():
    model, layers = served("tf_efficientnet_lite0")
    handle = model.blocks[5][0].conv_dw.register_forward_hook(lambda *_: None)
    assert writable(model, layers) is None
    handle.remove()
    assert writable(model, layers) is not None


@needs_onnx
def test_its_sessions_live_while_the_runner_does():
    model, layers = served("tf_efficientnet_lite0")
    runner = layercam_runner(model, layers, "test-cam-lifetime")
    runner.prepare(SIZE).join()  # the thread holds the runner while it runs
    keys = [k for k in onnx_passes._sessions if k[0].startswith("test-cam-lifetime:")]
    assert len(keys) == 2  # its forward and its backward
    del runner
    gc.collect()
    assert not any(k[0].startswith("test-cam-lifetime:") for k in onnx_passes._sessions)


@needs_onnx
def test_an_export_that_fails_leaves_the_heatmap_to_autograd(monkeypatch, caplog):
    model, layers = served("tf_efficientnet_lite0")

    def refuse(*_args):
        raise RuntimeError("the tracer cannot follow this module")

    monkeypatch.setattr(cam_onnx, "export_graph", refuse)
    runner = layercam_runner(model, layers, "test-cam-refused")
    x = torch.randn(1, 3, SIZE, SIZE)
    assert runner(x, lambda: [0]) is None  # the caller then runs gradcam_batch (brainmri.serving.classify.heatmaps)
    assert "test-cam-refused:cam+blocks.4+blocks.2:forward at (3, 64, 64) stays in torch: its ONNX export failed" in caplog.text


@needs_onnx
def test_the_served_default_draws_its_heatmap_through_onnx_as_autograd_does(monkeypatch):
    """The shipped default's classifier at its heatmap size, trained weights (ReLU6 clips at 6 there): the heatmap as
    served through ONNX Runtime, and through autograd once the runner is gone or declines (a non-square input)."""
    from shipped import require_shipped

    sources = require_shipped()
    monkeypatch.setenv("BRAIN_MRI_ONNX", "0")
    assert Predictor(sources).model(registry.DEFAULT_CLASSIFIER).layercam is None
    monkeypatch.setenv("BRAIN_MRI_ONNX", "1")
    loaded = Predictor(sources).model(registry.DEFAULT_CLASSIFIER)
    assert loaded.layercam is not None and loaded.layercam.sessions(loaded.cam_size) is not None
    x = torch.cat([loaded.cam_transform(load_image(path))[None] for path in EXAMPLES[:3]])
    through_onnx = heatmaps(loaded, x, "LayerCAM", lambda: [0, 1, 2])
    assert loaded.layercam(x[..., :-1], lambda: [0, 1, 2]) is None  # non-square: declined
    loaded.layercam = None
    through_autograd = heatmaps(loaded, x, "LayerCAM", lambda: [0, 1, 2])
    assert through_onnx.shape == through_autograd.shape == (3, loaded.cam_size, loaded.cam_size)
    assert np.abs(through_onnx - through_autograd).max() < 0.05


@pytest.mark.parametrize("side", [SIZE, 96])
def test_the_one_encoders_forward_classifies_and_keeps_its_decoders_stages(side: int):
    """The multi-task model's runner is its classifier's, whose forward also returns what its decoder reads: the class
    logits and the stage outputs are its torch forward's (the graph run in torch: the writing out alone)."""
    model, layers = served("multitask_lite0")
    runner = layercam_runner(model, layers, "test-cam-multitask")  # no side: nothing exported
    assert runner is not None and runner.kept == [0, 1, 2, 4, 6]  # timm's stage ends: the decoder's five stages
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        outputs = runner.forward_graph(x)
        final, stages = model.net.features(x)
        logits = model.net.classifier.forward_head(final)
    torch.testing.assert_close(outputs[0], logits, atol=1e-5, rtol=1e-5)
    kept = outputs[2 + len(runner.stages) : runner.saved_from]
    assert [k.shape for k in kept] == [s.shape for s in stages]
    for got, expected in zip(kept, stages):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@needs_onnx
def test_the_one_encoder_picked_answers_through_onnx_as_through_autograd(monkeypatch):
    """The shipped multi-task model, trained weights, at its input size, where the heatmap's forward classifies and
    outlines too (brainmri.serving.classify.own_size_pass): the same logits, OOD features, heatmap and outline."""
    from shipped import require_shipped

    from brainmri.serving.classify import own_size_pass
    from brainmri.serving.segment import own_outlines

    monkeypatch.setenv("BRAIN_MRI_ONNX", "1")
    loaded = Predictor(require_shipped()).model("multitask_lite0")
    side = loaded.cfg["input_size"][-1]
    assert loaded.layercam is not None and loaded.layercam.sessions(side) is not None
    images = [load_image(path) for path in EXAMPLES]
    x = torch.cat([loaded.transform(image)[None] for image in images])

    def answer() -> tuple:
        cams, logits, pooled = own_size_pass(loaded, x, "LayerCAM")
        outlines = own_outlines(loaded.model, images, loaded.outline_rule)
        return cams, logits, pooled, [o.mask for o in outlines]

    through_onnx = answer()
    loaded.model.forget_last()
    done = loaded.layercam.forward(x)
    torch.testing.assert_close(loaded.model.last_class_logits, done.logits)  # the runner's forward kept its pass
    assert loaded.model.decode_last() is not None
    with torch.no_grad():
        _, stages = loaded.model.net.features(x)
    for got, expected in zip(done.kept, stages, strict=True):  # what the decoder reads, to ONNX Runtime's rounding
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    runner, loaded.layercam = loaded.layercam, None
    through_autograd = answer()
    loaded.layercam = runner
    monkeypatch.setattr(runner, "backward", lambda *_: None)  # ONNX Runtime refusing the backward after the forward
    after_refusal = answer()
    monkeypatch.undo()
    np.testing.assert_array_equal(after_refusal[0], through_autograd[0])  # autograd's heatmap, and its outline
    assert all((a == b).all() for a, b in zip(after_refusal[3], through_autograd[3], strict=True))
    torch.testing.assert_close(through_onnx[1], through_autograd[1].detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(through_onnx[2], through_autograd[2], atol=1e-4, rtol=1e-4)
    assert through_onnx[0].shape == through_autograd[0].shape == (len(images), side, side)
    assert np.abs(through_onnx[0] - through_autograd[0]).max() < 0.05
    assert any(mask.any() for mask in through_onnx[3])  # the examples include tumours the gate lets through
    for got, expected in zip(through_onnx[3], through_autograd[3]):
        assert (got != expected).mean() < 1e-3  # a pixel on the threshold may fall either way
    # Another method keeps autograd, the runner present, and still outlines from its own forward
    cams, logits, _ = own_size_pass(loaded, x, "Grad-CAM")
    assert cams.shape == through_onnx[0].shape
    torch.testing.assert_close(logits.detach(), through_onnx[1], atol=1e-4, rtol=1e-4)
    assert [o.mask.any() for o in own_outlines(loaded.model, images, loaded.outline_rule)] == [m.any() for m in through_onnx[3]]
