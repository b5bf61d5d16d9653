"""The tumour outline in the serving path: the API's tumour_* details, no outline over a non-MRI, the disagreement
sentence, and the Classify tab's drawing and toggle."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shipped import require_shipped

from brainmri.app import display
from brainmri.app.summary import disagreement, summary
from brainmri.data.records import ImageRecords, limit_per_class, load_records
from brainmri.models.catalog import discover_segmenter
from brainmri.rendering import OUTLINE_COLOUR, draw_outline
from brainmri.segmentation import Outline
from brainmri.serving import Predictor


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    if discover_segmenter(hub=False).where != "local":
        pytest.fail("no shipped segmenter in checkpoints/: python -m train.multitask --data DATA (docs/segmentation.md)")
    return Predictor(require_shipped())


@pytest.fixture(scope="module")
def tumours(data_dir: Path) -> ImageRecords:
    test = load_records(data_dir, "test")
    return limit_per_class(test.subset(np.flatnonzero(test.labels != test.class_names.index("notumor"))), 3, seed=2)


def decode_mask(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_details_carry_the_outline_in_the_uploaded_images_frame(predictor: Predictor, tumours: ImageRecords):
    image = tumours.open(0).resize((300, 240))  # not the model's size, nor square
    details = json.loads(json.dumps(predictor.predict(image).details()))
    mask = decode_mask(details["tumour_mask"])
    assert mask.shape == (240, 300) and set(np.unique(mask)) <= {0, 255}
    assert details["tumour_area"] == pytest.approx((mask > 0).mean(), abs=1e-4)
    if mask.any():
        ys, xs = np.nonzero(mask)
        assert details["tumour_box"] == pytest.approx(
            [xs.min() / 300, ys.min() / 240, (xs.max() + 1) / 300, (ys.max() + 1) / 240], abs=1e-3
        )
        x, y = details["cam_peak"]
        assert details["cam_in_tumour"] == bool(mask[int(y * 240), int(x * 300)])
    else:
        assert details["tumour_box"] is None and details["cam_in_tumour"] is None


def test_most_tumours_are_outlined(predictor: Predictor, tumours: ImageRecords):
    found = [predictor.predict(tumours.open(i)).outline for i in range(len(tumours))]
    assert sum(o is not None and not o.empty for o in found) >= len(found) - 2, [o and o.area for o in found]


def test_no_outline_over_an_image_that_is_not_a_brain_mri(predictor: Predictor):
    result = predictor.predict(Image.new("RGB", (256, 256), (128, 128, 128)))
    assert not result.in_distribution and result.outline is None
    d = result.details()
    assert d["tumour_mask"] is None and d["tumour_box"] is None and d["tumour_area"] is None and d["cam_in_tumour"] is None
    assert display.outline_note(result) == ""


def test_compare_and_a_deployment_without_a_segmenter_give_no_outline(predictor: Predictor, tumours: ImageRecords):
    assert predictor.predict(tumours.open(0), outline=False).outline is None
    bare = Predictor(predictor.sources, segmenter=None)
    assert bare.predict(tumours.open(0)).details()["tumour_mask"] is None


def test_disagreement_is_one_plain_sentence(predictor: Predictor, tumours: ImageRecords):
    result = predictor.predict(tumours.open(0))
    empty = Outline(np.zeros((10, 10), dtype=bool), 0.0, None)
    some = Outline(np.ones((10, 10), dtype=bool), 1.0, (0.0, 0.0, 1.0, 1.0))
    tumour_class = next(c for c in result.probabilities if c != "notumor")
    assert "outlines no tumour" in disagreement(replace(result, top_class=tumour_class, outline=empty))
    assert "finds no tumour, but the segmentation model outlines 100.0%" in disagreement(replace(result, top_class="notumor", outline=some))
    assert disagreement(replace(result, top_class=tumour_class, outline=some)) == ""
    assert disagreement(replace(result, top_class="notumor", outline=empty)) == ""
    assert "disagree" in summary(replace(result, top_class=tumour_class, outline=empty))


def test_the_outline_is_drawn_around_the_mask_and_the_toggle_hides_it():
    image = Image.new("RGB", (100, 80), (40, 40, 40))
    mask = np.zeros((80, 100), dtype=bool)
    mask[20:40, 30:60] = True
    drawn = np.asarray(draw_outline(image, mask))
    ring = np.all(drawn == OUTLINE_COLOUR, axis=-1)
    assert ring.any() and not (ring & mask).any()  # around the tumour, never over it
    assert ring[19, 45] and ring[40, 45] and not ring[5, 5]
    assert display.with_outline(image, mask, False) is image
    assert display.with_outline(image, np.zeros_like(mask), True) is image


def test_the_bf16_outline_is_the_float32_one(predictor: Predictor, tumours: ImageRecords):
    """The served outline under bfloat16 autocast (a CPU with native bf16, BRAIN_MRI_OUTLINE_BF16) is the float32 one:
    the same slices empty, the masks at a mean Dice >= 0.98 and none under 0.9 here (docs/serving.md: over 130
    Testing slices, mean 0.988, 5th percentile 0.952; the rare lower ones are small tumours, where a few border
    pixels weigh)."""
    from brainmri.serving.segment import segment_batch

    loaded = predictor.segmentation_model()
    images = [tumours.open(i) for i in range(len(tumours))]
    as_served = loaded.bf16
    try:
        loaded.bf16 = False
        full = [o.mask for o in segment_batch(loaded, images)]
        loaded.bf16 = True
        half = [o.mask for o in segment_batch(loaded, images)]
    finally:
        loaded.bf16 = as_served
    assert [m.any() for m in full] == [m.any() for m in half]
    dice = [2 * (a & b).sum() / (a.sum() + b.sum()) for a, b in zip(full, half) if a.any()]
    assert dice and sum(dice) / len(dice) >= 0.98 and min(dice) >= 0.9, dice


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, monkeypatch):
    import torch

    from brainmri.runtime import native_bf16

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 sse\n")
    (tmp_path / "old").write_text("flags\t\t: fpu avx2 avx512f sse\n")
    assert native_bf16(tmp_path / "cpuinfo") and not native_bf16(tmp_path / "old")
    assert not native_bf16(tmp_path / "absent")  # not Linux, or unreadable: float32
    # torch held to its AVX2 kernels (ATEN_CPU_CAPABILITY=avx2) computes bf16 in emulation, flags or not.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not native_bf16(tmp_path / "cpuinfo")


def test_speed_figures_name_the_cpu_and_bf16_training_warns_where_it_is_emulated(tmp_path: Path, monkeypatch, caplog):
    import torch

    from brainmri import runtime

    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 sse\n")
    (tmp_path / "old").write_text("flags\t\t: fpu avx2 sse\n")
    capability = "AVX512"  # the kernel level named, whatever this host's
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert runtime.describe_cpu(tmp_path / "cpuinfo") == f"{capability}, bf16 native"
    assert runtime.describe_cpu(tmp_path / "old") == f"{capability}, bf16 emulated"
    # Where Linux names the first CPU's vendor, family and model, they follow; a second CPU's block is not read.
    (tmp_path / "zen5").write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
    )
    assert runtime.describe_cpu(tmp_path / "zen5") == f"{capability}, bf16 native, AMD family 26 model 2"
    assert runtime.cpu_generation(tmp_path / "absent") is None
    for native in (True, False):
        monkeypatch.setattr(runtime, "native_bf16", lambda cpuinfo=None, native=native: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger="brainmri.runtime"):
            assert runtime.warn_if_bf16_emulated("cpu") is (not native)
            assert runtime.warn_if_bf16_emulated(torch.device("cuda", 0)) is False  # a GPU computes bf16 itself
        assert ("--amp none" in caplog.text) is (not native)
