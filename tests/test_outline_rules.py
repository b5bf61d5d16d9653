"""How a probability map becomes an outline: the folder's rule (outline.json), the multi-task model's gate by its own
class head, in both serving paths, and how train.outline_rules chooses a rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brainmri import segmentation
from brainmri.models.catalog import CHECKPOINT_FILES, ModelSource
from brainmri.models.checkpoint import OUTLINE_RULE, verify_checkpoint, write_manifest
from brainmri.models.segmenters import SEGMENTER_DEFAULT, SEGMENTERS, create_segmenter
from brainmri.segmentation import (
    OutlineRule,
    binary_mask,
    gated,
    mask_logits,
    normalise,
    read_rule,
    tumour_probability,
    tumour_probability_and_class,
    write_rule,
)
from brainmri.settings import checkpoint_dir

MULTITASK = next(name for name, spec in SEGMENTERS.items() if spec.num_classes)
IMAGE = Image.effect_mandelbrot((200, 180), (-2, -1.2, 1, 1.2), 60).convert("RGB")


def multitask_folder(folder: Path, head_says: str, rule: OutlineRule | None = None) -> Path:
    """A multi-task folder whose decoder marks every pixel and whose class head always says ``head_says``."""
    net = create_segmenter(MULTITASK).eval()
    with torch.no_grad():
        net.segmentation_head[0].bias.fill_(20.0)
        head = net.classifier.get_classifier()
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[net.label_names.index(head_says)] = 10.0
    net.save_pretrained(folder)
    write_manifest(folder)
    if rule is not None:
        write_rule(folder, rule, note="test")
    return folder


def test_the_rule_thresholds_and_drops_specks():
    p = np.zeros((100, 100))
    p[:20, :20] = 0.45  # 4% of the image
    p[50, 50] = 0.9  # one pixel: 0.01%, under the fixed smallest outline (0.1%)
    assert not binary_mask(p).any()
    assert binary_mask(p, OutlineRule(threshold=0.4)).sum() == 401
    assert not binary_mask(p, OutlineRule(threshold=0.4, min_area=0.05)).any()
    assert binary_mask(p, OutlineRule(threshold=0.5, min_area=0.0001)).sum() == 1


def test_a_folder_without_outline_json_keeps_the_fixed_rule_and_one_with_it_is_verified(tmp_path):
    folder = multitask_folder(tmp_path / MULTITASK, "glioma")
    assert read_rule(folder) == OutlineRule()
    write_rule(folder, OutlineRule(threshold=0.4, gate=True), note="test")
    assert read_rule(folder) == OutlineRule(threshold=0.4, gate=True)
    assert OUTLINE_RULE in json.loads((folder / "manifest.json").read_text()) and OUTLINE_RULE in CHECKPOINT_FILES
    verify_checkpoint(folder)
    (folder / OUTLINE_RULE).write_text(json.dumps({"threshold": 0.1}))
    with pytest.raises(ValueError, match=OUTLINE_RULE):
        verify_checkpoint(folder)  # an edited rule is caught like edited weights


@pytest.mark.parametrize("head_says, outlined", [("notumor", False), ("glioma", True)])
def test_the_gate_empties_the_map_where_the_models_own_head_says_no_tumour(tmp_path, head_says, outlined):
    folder = multitask_folder(tmp_path / MULTITASK, head_says)
    net = create_segmenter(MULTITASK).eval()
    net.load_state_dict(type(net).from_pretrained(str(folder)).state_dict())
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert (tumour_probability(net, x) > 0.5).all()  # no gate: the decoder's map
    assert bool((tumour_probability(net, x, OutlineRule(gate=True)) > 0.5).all()) == outlined


@pytest.mark.parametrize("opens", [(True, False, True, False, False), (False,) * 5, (True,) * 5])
@pytest.mark.parametrize("mirror", [False, True])
def test_the_gate_decodes_only_the_images_it_lets_through_with_the_same_answer(monkeypatch, opens, mirror):
    """The decoder runs on the gate's images alone (it costs as much as the encoder), and every map, class logit and
    empty map is what decoding the whole batch and zeroing would give."""
    net = create_segmenter(MULTITASK).eval()
    rule = OutlineRule(gate=True, mirror=mirror)
    monkeypatch.setattr(segmentation, "gate_opens", lambda logits, names: torch.tensor(opens))
    x = torch.randint(0, 256, (len(opens), 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = net(normalise(x, net))
        maps = torch.sigmoid(mask_logits(out)[:, 0])
        if mirror:
            maps = (maps + torch.sigmoid(mask_logits(net(normalise(x, net).flip(-1)))[:, 0]).flip(-1)) / 2
        expected = gated(maps, out[1], net.label_names, rule)
    decoded = []
    segment = net.segment
    monkeypatch.setattr(net, "segment", lambda x, stages: decoded.append(len(x)) or segment(x, stages))
    probability, logits = tumour_probability_and_class(net, x, rule)
    assert torch.allclose(probability, expected, atol=1e-5) and torch.allclose(logits, out[1], atol=1e-5)
    passes = 2 if mirror else 1  # the mirror's second forward decodes the same images
    assert decoded == ([sum(opens)] * passes if any(opens) else [])  # the gated-off images never reach the decoder
    assert not probability[~torch.tensor(opens)].any()


@pytest.mark.parametrize("head_says, outlined", [("notumor", False), ("pituitary", True)])
@pytest.mark.parametrize("picked", ["simple_cnn_7", MULTITASK])
def test_served_outlines_follow_the_folders_rule(tmp_path, head_says, outlined, picked):
    """The gate in both serving paths: the multi-task model as the segmenter of another classifier, and picked
    itself (its outline from its own forward)."""
    from conftest import write_checkpoint

    from brainmri.serving import Predictor

    folder = multitask_folder(tmp_path / MULTITASK, head_says, OutlineRule(gate=True))
    segmenter = ModelSource(MULTITASK, "local", str(folder))
    sources = {MULTITASK: segmenter}
    if picked != MULTITASK:
        sources[picked] = ModelSource(picked, "local", str(write_checkpoint(tmp_path / picked)))
    predictor = Predictor(sources, ood_model=None, segmenter=segmenter)
    result = predictor.predict(IMAGE, picked)
    assert result.outlined_by == MULTITASK and result.outline.mask.shape == (180, 200)
    assert result.outline.mask.all() == outlined and result.outline.empty != outlined
    if picked == MULTITASK:  # what its forward kept for the outline (the image's stages) does not outlive the request
        model = predictor.model(MULTITASK).model
        assert model.decode_last() is None and model.last_class_logits is None


def test_choosing_keeps_to_the_empty_share_and_leaves_the_mirror_out_unless_asked():
    from train.outline_rules import choose

    labels = np.array([0, 0, 1, 1])  # 0 glioma, 1 notumor
    names, both, keep = ["glioma", "notumor"], np.array([True, True, True, True]), np.ones(4, dtype=bool)
    full = np.ones((4, 2))

    def result(dice: float, empties: int):
        empty = np.array([False, False, *([True] * empties), *([False] * (2 - empties))])
        return full * dice, empty

    results = {
        OutlineRule(0.5): result(0.80, 1),  # best Dice, but half the no-tumour slices outlined
        OutlineRule(0.5, gate=True): result(0.78, 2),
        OutlineRule(0.5, mirror=True, gate=True): result(0.79, 2),
    }
    assert choose(results, keep, labels, names, both, min_empty=0.95) == OutlineRule(0.5, gate=True)
    assert choose(results, keep, labels, names, both, 0.95, allow_mirror=True) == OutlineRule(0.5, mirror=True, gate=True)
    assert choose(results, keep, labels, names, both, min_empty=0.5) == OutlineRule(0.5)


def test_the_shipped_outliner_carries_the_rule_chosen_on_validation():
    folder = checkpoint_dir() / SEGMENTER_DEFAULT
    assert folder.is_dir(), f"no shipped outliner in {folder}"
    rule = json.loads((folder / OUTLINE_RULE).read_text())
    assert "python -m train.outline_rules" in rule["note"] and not rule["mirror"]  # one pass a request
    verify_checkpoint(folder)
