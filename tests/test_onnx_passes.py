"""ONNX Runtime runs the passes that need no gradient (brainmri.serving.onnx_passes) to torch's numbers: a
classifier's whole forward in its twin, the heatmap model's stem and blocks below its shallowest hooked stage, and
the one encoder's encoder; a gradient still flows in torch, and a hook that would see the wrong tensor fails by name.
Every registry EfficientNet, untrained, at 64 px; then the shipped default through the Predictor, on the examples."""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from shipped import require_shipped
from torch import nn

from brainmri.data.imageio import load_image
from brainmri.explain import gradcam_batch, prepare_for_cam
from brainmri.models import registry
from brainmri.models.segmenters import SEGMENTERS, create_segmenter
from brainmri.ood import logits_and_features
from brainmri.segmentation import OutlineRule, tumour_probability_and_class
from brainmri.serving import Predictor, onnx_passes
from brainmri.serving.loading import load_model
from brainmri.serving.onnx_passes import (
    OnnxForward,
    encoder_through_onnx,
    features_through_onnx,
    is_efficientnet,
    onnx_serving,
    prefix_through_onnx,
)
from brainmri.serving.overlap import shared_weights_copy
from brainmri.serving.rewrites import fold_batchnorm, same_padding_in_kernel
from brainmri.settings import checkpoint_dir, onnx_runtime_as

SIZE = 64
EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))
# The EfficientNets up to B3 and the Lites: B4-B7 are the same blocks, wider and deeper, and slow to export at every run.
EFFICIENTNETS = [n for n, s in registry.REGISTRY.items() if s.family == "efficientnet" and n[-2:] not in {"b4", "b5", "b6", "b7"}]
MULTITASK = [name for name, spec in SEGMENTERS.items() if spec.num_classes]


def served(name: str) -> tuple[nn.Module, list[nn.Module]]:
    """An untrained registry model prepared as brainmri.serving.loading prepares one, and its heatmap's layers."""
    torch.manual_seed(0)
    model = registry.create_model(name, num_classes=4).eval()
    for m in model.modules():  # statistics a trained model's batch norms would hold
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    layers = [registry.cam_layer(model, name), *registry.get_spec(name).cam_stages(model)]
    fold_batchnorm(model, keep=layers)
    same_padding_in_kernel(model, keep=layers)
    prepare_for_cam(model)
    return model.to(memory_format=torch.channels_last), layers


def test_the_registry_efficientnets_are_what_the_passes_expect():
    assert EFFICIENTNETS and all(is_efficientnet(registry.create_model(n)) for n in EFFICIENTNETS)
    assert not is_efficientnet(registry.create_model("simple_cnn_10"))


@pytest.mark.parametrize("name", EFFICIENTNETS)
def test_the_twin_through_onnx_gives_torchs_logits_and_features(name: str):
    model, _ = served(name)
    twin = shared_weights_copy(model)
    assert features_through_onnx(twin, f"test-{name}")
    x = torch.randn(3, 3, SIZE, SIZE)  # a batch of three: the export's batch axis is free
    with torch.no_grad():
        (logits, features), (onnx_logits, onnx_features) = logits_and_features(model, x), logits_and_features(twin, x)
    assert any(isinstance(m, OnnxForward) for m in twin.modules())
    torch.testing.assert_close(onnx_features, features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(onnx_logits, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", EFFICIENTNETS)
def test_the_heatmap_model_with_its_prefix_through_onnx_gives_torchs_heatmap(name: str):
    model, layers = served(name)
    reference = copy.deepcopy(model)
    reference_layers = [dict(reference.named_modules())[n] for n in (_name(model, m) for m in layers)]
    moved = prefix_through_onnx(model, layers, f"test-{name}")
    spec = registry.get_spec(name)
    assert moved == (2 if spec.cam_size else len(model.blocks)), f"{name}: {moved} blocks moved"
    x = torch.randn(2, 3, SIZE, SIZE)
    cams, logits = gradcam_batch(model, layers, x, "LayerCAM")
    expected_cams, expected_logits = gradcam_batch(reference, reference_layers, x, "LayerCAM")
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    assert np.abs(cams - expected_cams).mean() < 1e-3 and np.abs(cams - expected_cams).max() < 0.05


def _name(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


@pytest.mark.parametrize("name", MULTITASK)
def test_the_one_encoders_encoder_through_onnx_gives_torchs_outline_and_class(name: str):
    torch.manual_seed(0)
    net = create_segmenter(name).eval()
    net.input_size = SIZE
    fold_batchnorm(net)
    same_padding_in_kernel(net)
    net = net.requires_grad_(False).to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    rule = OutlineRule(gate=False)
    probability, logits = tumour_probability_and_class(net, images, rule)
    encoder_through_onnx(net, f"test-{name}")
    onnx_probability, onnx_logits = tumour_probability_and_class(net, images, rule)
    torch.testing.assert_close(onnx_logits, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(onnx_probability, probability, atol=1e-4, rtol=1e-4)


def test_a_pass_that_needs_a_gradient_runs_in_torch():
    conv = nn.Conv2d(3, 4, 3).requires_grad_(False)
    wrapped = OnnxForward(conv, "test-gradient")
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    wrapped(x).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    conv(x).sum().backward()
    assert torch.equal(x.grad, expected)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), conv(x), atol=1e-5, rtol=1e-5)


def test_a_hook_on_a_block_moved_into_onnx_is_refused_by_name():
    model, layers = served("tf_efficientnet_lite0")
    prefix_through_onnx(model, layers, "test-hook")
    model.blocks[0].register_forward_hook(lambda *args: None)
    with pytest.raises(RuntimeError, match=r"blocks\.0 runs inside ONNX Runtime.*BRAIN_MRI_ONNX=0"):
        with torch.no_grad():
            model(torch.randn(1, 3, SIZE, SIZE))


def test_switched_off_the_served_model_is_torch_alone(monkeypatch):
    require_shipped()
    folder = checkpoint_dir() / registry.DEFAULT_CLASSIFIER
    monkeypatch.setenv("BRAIN_MRI_ONNX", "0")
    assert not onnx_serving(torch.device("cpu"))
    loaded = load_model(registry.DEFAULT_CLASSIFIER, folder)
    assert not any(isinstance(m, OnnxForward) for m in [*loaded.model.modules(), *loaded.twin.modules()])
    monkeypatch.setenv("BRAIN_MRI_ONNX", "2")
    with pytest.raises(ValueError, match="BRAIN_MRI_ONNX must be 0 or 1"):
        onnx_serving(torch.device("cpu"))
    monkeypatch.setenv("BRAIN_MRI_ONNX", "1")
    assert not onnx_serving(torch.device("cuda"))
    with onnx_runtime_as(False):  # a heatmap sweep's block (reports.cam_localisation), and as it was after
        assert not onnx_serving(torch.device("cpu"))
    assert onnx_serving(torch.device("cpu"))


def test_the_shipped_default_answers_as_torch_does(monkeypatch):
    """Every shipped example through the app's default, with ONNX Runtime and without: the same class and OOD
    verdict, probabilities to float rounding, the same outline, and the heatmap to a few hundredths at worst."""
    sources = require_shipped()
    images = [load_image(path) for path in EXAMPLES]
    answers = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("BRAIN_MRI_ONNX", flag)
        predictor = Predictor(sources)
        answers[flag] = [predictor.predict(image, registry.APP_DEFAULT) for image in images]
    assert any(isinstance(m, OnnxForward) for m in predictor.model(registry.DEFAULT_CLASSIFIER).twin.modules())
    for torch_answer, onnx_answer in zip(answers["0"], answers["1"]):
        assert onnx_answer.top_class == torch_answer.top_class
        for label, p in torch_answer.probabilities.items():
            assert abs(onnx_answer.probabilities[label] - p) < 1e-5
        assert (onnx_answer.ood is None) == (torch_answer.ood is None)
        if torch_answer.ood is not None:
            assert onnx_answer.ood.in_distribution == torch_answer.ood.in_distribution
        assert (onnx_answer.outline is None) == (torch_answer.outline is None)
        if torch_answer.outline is not None:
            assert np.array_equal(onnx_answer.outline.mask, torch_answer.outline.mask)
        assert np.abs(onnx_answer.cam - torch_answer.cam).max() < 0.05


def test_a_session_lives_while_a_copy_of_its_model_does():
    model, layers = served("tf_efficientnet_lite0")
    prefix_through_onnx(model, layers, "test-lifetime", SIZE)
    copy_ = shared_weights_copy(model)  # as a LoadedModel's twin is made: the copy shares the session
    assert copy_.conv_stem.session((3, SIZE, SIZE)) is model.conv_stem.session((3, SIZE, SIZE))
    assert ("test-lifetime:blocks[:2]", (3, SIZE, SIZE)) in onnx_passes._sessions
    del model, copy_
    gc.collect()
    assert ("test-lifetime:blocks[:2]", (3, SIZE, SIZE)) not in onnx_passes._sessions  # evicted with its model


def test_a_module_the_exporter_cannot_take_runs_in_torch(monkeypatch, caplog):
    model, layers = served("tf_efficientnet_lite0")
    reference = copy.deepcopy(model)

    def refuse(*_args):
        raise RuntimeError("the tracer cannot follow this module\n(details)")

    monkeypatch.setattr(onnx_passes, "_export", refuse)
    prefix_through_onnx(model, layers, "test-refused", SIZE)  # exported at once: the failure is met at load
    assert "test-refused:blocks[:2] at (3, 64, 64) stays in torch: its ONNX export failed (the tracer cannot follow" in caplog.text
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_on_zerogpu_the_passes_stay_in_torch(monkeypatch):
    monkeypatch.setenv("BRAIN_MRI_ONNX", "1")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert not onnx_serving(torch.device("cpu"))


def test_a_session_takes_as_many_threads_as_each_workers_torch():
    """One rule for a batch worker's threads (brainmri.runtime.configure_torch_threads), torch's and ONNX Runtime's."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    before = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            options = onnx_passes._new_session(model.SerializeToString()).get_session_options()
            assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)
    finally:
        torch.set_num_threads(before)
