"""Every registry model builds, runs forward and backward, and names a Grad-CAM layer that exists."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainmri.models import registry
from brainmri.ood import logits_and_features

NUM_CLASSES = 4


def family(name: str) -> list[str]:
    return [n for n, s in registry.REGISTRY.items() if s.family == name]


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_model_forward_backward_and_cam_layer(name: str):
    torch.manual_seed(0)
    spec = registry.get_spec(name)
    model = registry.create_model(name, num_classes=NUM_CLASSES, pretrained=False).train()
    # Preprocessing is derived from the pretrained_cfg, so it must carry the registry's input size.
    assert model.pretrained_cfg["input_size"] == (3, spec.input_size, spec.input_size)
    assert model.pretrained_cfg["crop_pct"] == 1.0
    assert spec.hub_repo_id.endswith(f"/{name}") and spec.local_dir.name == name
    layer = registry.cam_layer(model, name)
    assert isinstance(layer, nn.Module)
    assert any(m is layer for m in model.modules()), f"{name}: Grad-CAM layer is not part of the model"
    layers = [registry.cam_layer(model, name), *registry.get_spec(name).cam_stages(model)]
    assert layers[0] is layer
    assert all(any(m is s for m in model.modules()) for s in layers), f"{name}: a fused stage is not part of the model"
    assert spec.cam_size is None or spec.cam_size > spec.input_size

    # Grad-CAM needs the layer's output to be a (B, C, H, W) map that the logits depend on.
    feats = []
    handle = layer.register_forward_hook(lambda _m, _i, out: feats.append(out))
    x = torch.randn(2, 3, 64, 64)  # small input keeps B7 fast; every model here is fully convolutional
    out = model(x)
    handle.remove()
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    assert len(feats) == 1 and feats[0].ndim == 4 and feats[0].shape[0] == 2

    # The OOD features' one definition (timm's forward_head(pre_logits=True)) is what the classifier reads.
    with torch.no_grad():
        logits, features = logits_and_features(model.eval(), x)
        torch.testing.assert_close(logits, model(x))
    assert features.shape[0] == 2 and features.ndim == 2
    model.train()

    nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
    outline = ()
    if spec.segmenter:  # the same forward kept the outline; its decoder learns from the outline's loss (test_multitask)
        assert model.decode_last().shape == (2, 1, 64, 64)
        outline = ("net.decoder.", "net.segmentation_head.")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and not n.startswith(outline)]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'nope'.*simple_cnn_7.*tf_efficientnet_lite0"):
        registry.get_spec("nope")
    with pytest.raises(ValueError, match="nope"):
        registry.create_model("nope")


def test_families_partition_the_registry():
    families = {registry.get_spec(n).family for n in registry.REGISTRY}
    assert sorted(n for f in families for n in family(f)) == sorted(registry.REGISTRY)
    simple = family("simple")
    assert simple[:4] == ["simple_cnn_7", "simple_cnn_7_e60", "simple_cnn_10", "simple_cnn_10_e60"]  # Sequential 1-4
    assert all(n.startswith("simple_cnn_") for n in simple) and len(simple) == 9


def test_every_model_says_what_it_is_and_variants_differ_only_as_named():
    for name in list(registry.REGISTRY):
        assert registry.get_spec(name).about, f"{name}: no 'about' line for labels"
    args = {n: registry.get_spec(n).model_args for n in family("simple")}
    assert args["simple_cnn_10_e60_k5"] == {"kernel_size": 5} and args["simple_cnn_10_e60_k7"] == {"kernel_size": 7}
    assert args["simple_cnn_10_e60_tanh"] == {"act": "tanh"} and args["simple_cnn_10_e60_nopad"] == {"padding": False}
    assert args["simple_cnn_10_e60"] == args["simple_cnn_10_e60_plateau"] == {}  # the schedule is train/sweeps/seed.yaml's
    k7 = registry.create_model("simple_cnn_10_e60_k7")
    assert k7.features[0].conv.kernel_size == (7, 7) and registry.get_spec("tf_efficientnet_lite0_scratch").imagenet_init is None


def test_the_package_exports_its_public_names():
    import brainmri

    assert set(brainmri.__all__) <= set(dir(brainmri))
    for name in brainmri.__all__:
        assert getattr(brainmri, name) is not None, name
    assert brainmri.create_model is registry.create_model
    with pytest.raises(AttributeError):
        brainmri.nope  # noqa: B018


def test_a_misspelt_model_argument_fails_rather_than_building_the_default():
    with pytest.raises(TypeError, match="kernal_size"):
        registry.create_model("simple_cnn_7", kernal_size=5)
    with pytest.raises(ValueError, match=r"multitask_lite0 takes no model arguments .*\['drop_rate'\]"):
        registry.create_model("multitask_lite0", drop_rate=0.1)
