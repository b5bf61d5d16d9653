"""The serving speed-ups compute the same answers: batch norm folded into the convolutions
(brainmri.runtime.fold_batchnorm) and a backward pass that starts at the CAM layers with every
parameter frozen (brainmri.explain.prepare_for_cam). Every registry model, untrained, at 64 px.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from brainmri.explain import gradcam_batch, prepare_for_cam
from brainmri.models import registry
from brainmri.runtime import FOLDABLE_NORMS, fold_batchnorm

NUM_CLASSES = 4
SIZE = 64


def untrained(name: str) -> nn.Module:
    """An eval-mode registry model whose batch norms hold non-trivial statistics, as a trained one's do."""
    torch.manual_seed(0)
    model = registry.create_model(name, num_classes=NUM_CLASSES, pretrained=False).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_folding_batch_norm_keeps_the_logits_and_the_cam_layers(name: str):
    model = untrained(name)
    layers = [registry.cam_layer(model, name), *registry.get_spec(name).cam_stages(model)]
    folded = copy.deepcopy(model)
    kept = [registry.cam_layer(folded, name), *registry.get_spec(name).cam_stages(folded)]
    count = fold_batchnorm(folded, keep=kept)
    has_norm = any(type(m) in FOLDABLE_NORMS for m in model.modules())
    assert (count > 0) == has_norm, f"{name}: folded {count} batch norms"
    assert all(any(m is k for m in folded.modules()) for k in kept), f"{name}: a CAM layer was replaced"
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        before, after = model(x), folded(x)
    assert torch.allclose(before, after, rtol=1e-3, atol=1e-4 * float(before.abs().max())), f"{name}: folding moved the logits"
    prepare_for_cam(model)
    prepare_for_cam(folded)
    cam_before, _ = gradcam_batch(model, layers, x[:1], "LayerCAM", [1])
    cam_after, _ = gradcam_batch(folded, kept, x[:1], "LayerCAM", [1])
    assert np.abs(cam_before - cam_after).max() < 0.02, f"{name}: folding moved the heatmap"


def test_folding_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(registry.create_model("simple_cnn_7", num_classes=NUM_CLASSES, pretrained=False).train())


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "simple_cnn_7", "resnet18"])
def test_a_frozen_model_gives_the_heatmap_of_a_trainable_one_and_no_weight_gradient(name: str):
    """Freezing only shortens the backward: the heatmap is the one of a model whose every parameter is trainable."""
    model = untrained(name)
    layers = [registry.cam_layer(model, name), *registry.get_spec(name).cam_stages(model)]
    x = torch.randn(1, 3, SIZE, SIZE)
    trainable, _ = gradcam_batch(model, layers, x, "LayerCAM", [2])
    model.zero_grad(set_to_none=True)
    prepare_for_cam(model)
    frozen, _ = gradcam_batch(model, layers, x, "LayerCAM", [2])
    np.testing.assert_allclose(frozen, trainable, atol=1e-5)
    assert all(p.grad is None for p in model.parameters()), "the frozen CAM pass computed weight gradients"
