"""Grad-CAM works on every registry model, not only the shipped ones: the heatmap has the input's size,
lies in [0, 1], is finite, and moves when the explained class changes.

Untrained models (``pretrained=False``) at 64 px keep it fast; every model here is fully
convolutional, so its Grad-CAM layer still gives a (at least 2 x 2) map at that size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainmri.explain import fuse_stage_maps, gradcam_batch, prepare_for_cam
from brainmri.models import registry

NUM_CLASSES = 4
SIZE = 64


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_gradcam_has_the_input_size_and_moves_with_the_class(name: str):
    torch.manual_seed(0)
    model = registry.create_model(name, num_classes=NUM_CLASSES, pretrained=False).eval()
    layer = registry.cam_layer(model, name)
    prepare_for_cam(model)  # as the app does: the backward runs from the layer on
    x = torch.randn(1, 3, SIZE, SIZE)

    def explain(target: int) -> np.ndarray:
        cams, logits = gradcam_batch(model, layer, x, targets=[target])
        cam = cams[0]
        assert logits.shape == (1, NUM_CLASSES) and torch.isfinite(logits).all()
        assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32, f"{name}: heatmap {cam.shape} {cam.dtype}"
        assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0, f"{name}: heatmap outside [0, 1]"
        return cam

    # An untrained head can leave one class's map empty (every weighted activation negative), so the
    # first class is compared with each other one until one differs; a CAM that ignored its target never would.
    first = explain(0)
    assert any(not np.array_equal(first, explain(k)) for k in range(1, NUM_CLASSES)), f"{name}: the heatmap ignores the class"


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "simple_cnn_7"])  # three stages fused, and one alone
def test_layercam_over_the_registry_stages_has_the_input_size_and_moves_with_the_class(name: str):
    torch.manual_seed(0)
    model = registry.create_model(name, num_classes=NUM_CLASSES, pretrained=False).eval()
    layers = [registry.cam_layer(model, name), *registry.get_spec(name).cam_stages(model)]
    assert all(any(m is layer for m in model.modules()) for layer in layers)
    prepare_for_cam(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    maps = [gradcam_batch(model, layers, x, "LayerCAM", [k])[0][0] for k in range(NUM_CLASSES)]
    for cam in maps:
        assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
        assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0
    assert any(np.abs(maps[0] - m).mean() > 1e-3 for m in maps[1:]), f"{name}: the fused heatmap ignores the class"


def test_layercam_fusion_peaks_where_the_stages_agree():
    """Two stages: one lights a spot and a lone pixel on the rim, the other the spot alone; the fused peak is the spot."""
    spot = np.zeros((64, 64), np.float32)
    spot[20:28, 36:44] = 0.8
    rim = spot.copy()
    rim[0, 5] = 1.0  # the brightest single pixel of one stage
    fused = fuse_stage_maps(np.stack([rim, spot])[None])[0]
    assert fused.shape == (64, 64) and fused.min() >= 0.0 and fused.max() == pytest.approx(1.0, abs=1e-5)
    y, x = np.unravel_index(fused.argmax(), fused.shape)
    assert 20 <= y < 28 and 36 <= x < 44
