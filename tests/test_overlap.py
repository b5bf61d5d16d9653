"""A request's passes side by side on spare cores (brainmri.serving.overlap) give the answers they give one after
another: the same probabilities, heatmap, OOD verdict and outline, with the outline still withheld from a slice
flagged as not an MRI, and a failing pass still a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shipped import require_shipped

from brainmri.data.imageio import load_image
from brainmri.explain import gradcam_batch
from brainmri.models.registry import APP_DEFAULT, DEFAULT_CLASSIFIER
from brainmri.serving import Predictor
from brainmri.serving import predictor as front_door
from brainmri.serving.overlap import in_turn, shared_weights_copy

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))


@pytest.fixture(scope="module")
def pair() -> tuple[Predictor, Predictor]:
    sources = require_shipped()
    return Predictor(sources, overlap=True), Predictor(sources, overlap=False)


def _same(a, b) -> None:
    assert a.top_class == b.top_class
    assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-5
    assert np.abs(a.cam - b.cam).max() < 1e-4
    assert a.in_distribution == b.in_distribution and a.ood.reasons == b.ood.reasons
    assert (a.outline is None) == (b.outline is None) and a.outlined_by == b.outlined_by
    if a.outline is not None:
        assert np.array_equal(a.outline.mask, b.outline.mask)


@pytest.mark.parametrize("model", [APP_DEFAULT, DEFAULT_CLASSIFIER, "simple_cnn_7"])
def test_side_by_side_gives_the_answers_of_one_after_another(pair, model, monkeypatch):
    monkeypatch.setattr(front_door, "spare_core", lambda *_: True)  # whatever this machine's thread count
    together, in_turn = pair
    for path in EXAMPLES[::3]:
        image = load_image(path)
        _same(together.predict(image, model), in_turn.predict(image, model))


# The outline's pass of a single model, and of the default ensemble (whose outline pass also gives its second opinion).
OUTLINE_PASSES = [(DEFAULT_CLASSIFIER, "segment_batch"), (APP_DEFAULT, "segment_and_classify")]


@pytest.mark.parametrize("model, outline_pass", OUTLINE_PASSES)
def test_a_slice_flagged_as_not_an_mri_gets_no_outline_though_it_was_drawn_ahead(pair, monkeypatch, model, outline_pass):
    monkeypatch.setattr(front_door, "spare_core", lambda *_: True)
    together, in_turn = pair
    drawn = []
    real = getattr(front_door, outline_pass)
    monkeypatch.setattr(front_door, outline_pass, lambda seg, images: drawn.append(len(images)) or real(seg, images))
    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 255, (240, 300, 3), dtype=np.uint8))
    result = together.predict(colour, model)
    assert drawn == [1]  # the outline started before the verdict ...
    assert not result.in_distribution and result.outline is None  # ... and was dropped with it
    assert result.details()["tumour_mask"] is None and result.model == model
    _same(result, in_turn.predict(colour, model))


@pytest.mark.parametrize("side_by_side", [True, False])
@pytest.mark.parametrize("model, outline_pass", OUTLINE_PASSES)
def test_a_failing_outline_pass_is_the_request_error(pair, monkeypatch, model, outline_pass, side_by_side):
    monkeypatch.setattr(front_door, "spare_core", lambda *_: side_by_side)

    def broken(*_args):
        raise ValueError("cannot outline: the segmenter's weights are corrupt")

    monkeypatch.setattr(front_door, outline_pass, broken)
    with pytest.raises(ValueError, match="segmenter's weights are corrupt"):
        pair[0].predict(load_image(EXAMPLES[0]), model)
    monkeypatch.undo()
    assert pair[0].predict(load_image(EXAMPLES[0]), model).model == model  # the locks were let go


def test_in_turn_runs_beside_the_caller_in_order_with_its_torch_threads():
    import threading

    threads, order = torch.get_num_threads(), []

    def step(tag):
        order.append(tag)
        return threading.get_ident(), torch.get_num_threads()

    first, broken, last = in_turn((step, ("a",)), (lambda: 1 / 0, ()), (step, ("b",)))
    ident, seen = first.result(timeout=10)
    assert ident != threading.get_ident() and seen == threads
    with pytest.raises(ZeroDivisionError):
        broken.result(timeout=10)
    assert last.result(timeout=10)[0] == ident and order == ["a", "b"]  # one thread, in order, past a failure


def test_the_twin_shares_every_tensor_but_not_the_hooks_put_on_the_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    twin = shared_weights_copy(model)  # as serving makes it: at load, before any heatmap's hooks
    assert all(a is b for a, b in zip(model.state_dict(keep_vars=True).values(), twin.state_dict(keep_vars=True).values()))
    seen = []
    model[0].register_forward_hook(lambda *args: seen.append("model"))
    twin(torch.zeros(1, 3, 8, 8))
    assert seen == []
    model(torch.zeros(1, 3, 8, 8))
    assert seen == ["model"]


def test_a_deferred_class_gives_the_heatmap_of_that_class():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    now, _ = gradcam_batch(model, model[0], x, "Grad-CAM", [3, 1])
    later, _ = gradcam_batch(model, model[0], x, "Grad-CAM", lambda: [3, 1])
    assert np.allclose(now, later)


def test_a_side_thread_only_while_cores_outnumber_the_running_requests(monkeypatch):
    from brainmri.serving import overlap

    monkeypatch.setattr(overlap, "usable_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cpu = torch.device("cpu")
    with overlap.running() as alone:
        assert alone == 1 and overlap.spare_core(cpu, alone)  # a lone request: the other core is idle
        with overlap.running() as busy:
            assert busy == 2 and not overlap.spare_core(cpu, busy)  # under load each request has its core already
    assert not overlap.spare_core(torch.device("cuda"), 1)
