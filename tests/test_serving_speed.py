"""The serving speed-ups compute the same answers: batch norm folded into the convolutions
(brainmri.serving.rewrites.fold_batchnorm), TensorFlow's "SAME" padding moved into the kernel
(brainmri.serving.rewrites.same_padding_in_kernel) and a backward pass that starts at the CAM layers with every
parameter frozen (brainmri.explain.prepare_for_cam). Every registry model, untrained, at 64 px.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from brainmri.explain import gradcam_batch, prepare_for_cam
from brainmri.models import registry
from brainmri.models.segmenters import SEGMENTERS, create_segmenter
from brainmri.serving.rewrites import FOLDABLE_NORMS, Conv2dSameInKernel, fold_batchnorm, same_padding_in_kernel

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


# The models built on TensorFlow-ported timm weights (tf_*), whose stride-2 convolutions pad "SAME"; the others have none.
SAME_PADDED = [n for n in dict.fromkeys([*registry.REGISTRY, *SEGMENTERS]) if "lite" in n]


@pytest.mark.parametrize("name", SAME_PADDED)
def test_same_padding_in_the_kernel_gives_the_same_numbers_at_odd_and_even_sizes(name: str):
    """Sizes whose stride-2 steps meet even sides (64) and odd ones (65; Lite2's heatmap at 390 px meets 195)."""
    torch.manual_seed(0)
    model = create_segmenter(name) if name in SEGMENTERS else untrained(name)
    model.eval()
    moved = copy.deepcopy(model)
    count = same_padding_in_kernel(moved)
    assert count == sum(type(m) is Conv2dSame for m in model.modules()) > 0, f"{name}: {count} replaced"
    assert sum(type(m) is Conv2dSame for m in moved.modules()) == 0
    assert moved.state_dict().keys() == model.state_dict().keys()
    for size in (64, 65):
        x = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            before, after = model(x), moved(x)
        before, after = (before[0], after[0]) if isinstance(before, tuple) else (before, after)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()), msg=f"{name} at {size} px")


def test_a_shifted_kernel_trains_like_the_padded_copy():
    """The gradient reaches the one weight tensor (the leading zero row is padding, not a parameter)."""
    torch.manual_seed(0)
    conv = Conv2dSame(4, 4, 3, stride=2, groups=4)
    moved = copy.deepcopy(conv)
    parent = nn.Sequential(moved)
    assert same_padding_in_kernel(parent) == 1 and isinstance(parent[0], Conv2dSameInKernel)
    x = torch.randn(1, 4, 10, 10)
    conv(x).square().sum().backward()
    parent(x).square().sum().backward()
    torch.testing.assert_close(parent[0].weight.grad, conv.weight.grad)
