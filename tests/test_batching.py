"""Batched inference gives each image the answer it gets alone: probabilities, Grad-CAM and OOD verdict."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from shipped import SHIPPED, require_shipped

from brainmri.data.records import limit_per_class, load_records
from brainmri.explain import CAM_METHODS, DEFAULT_METHOD
from brainmri.serving import Predictor, run_model_batch
from brainmri.serving.batching import MicroBatcher


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(require_shipped())


@pytest.fixture(scope="module")
def images(data_dir):
    records = limit_per_class(load_records(data_dir, "test"), 2)
    return [records.open(i) for i in range(len(records))]  # 8 real slices, 2 per class, of varied sizes


@pytest.mark.parametrize("method", list(CAM_METHODS))
@pytest.mark.parametrize("name", SHIPPED)
def test_a_batch_gives_every_image_its_own_answer(predictor: Predictor, images, name: str, method: str):
    loaded = predictor.model(name)
    alone = [run_model_batch(loaded, [image], method)[0] for image in images]
    together = run_model_batch(loaded, images, method)
    for a, b in zip(alone, together):
        assert a.top_class == b.top_class
        assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
        assert a.cam.shape == b.cam.shape and np.abs(a.cam - b.cam).max() < 1e-3, np.abs(a.cam - b.cam).max()
        if a.ood is not None:
            assert a.ood.distance == pytest.approx(b.ood.distance, rel=1e-4)
    # Not a trivial pass: the images' heatmaps differ from one another.
    assert np.abs(together[0].cam - together[-1].cam[: together[0].cam.shape[0], : together[0].cam.shape[1]]).max() > 0.1


def test_concurrent_requests_are_batched_and_keep_their_answers(predictor: Predictor, images):
    batched = Predictor(predictor.sources, max_batch=8, max_wait_s=0.05)
    batched.cache = predictor.cache  # the models already loaded
    expected = [predictor.predict(image, "simple_cnn_7").probabilities for image in images]
    got: dict[int, dict] = {}
    threads = [
        threading.Thread(target=lambda i=i: got.update({i: batched.predict(images[i], "simple_cnn_7").probabilities})) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert got[i] == pytest.approx(expected[i], abs=1e-5)
    batcher = batched._batcher("simple_cnn_7", DEFAULT_METHOD)
    assert batcher.items == 8 and batcher.batches < 8  # some requests really shared a pass


def test_a_failing_batch_fails_each_of_its_requests_with_the_error():
    def run(items):
        if "bad" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    batcher = MicroBatcher(run, max_batch=4, max_wait_s=0.01)
    assert batcher.submit("ok") == "OK"
    with pytest.raises(ValueError, match="bad item"):
        batcher.submit("bad")
    assert batcher.submit("fine") == "FINE"  # the worker lives on
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(run, max_batch=0)


def test_identical_images_in_a_batch_are_computed_once(predictor: Predictor, images, monkeypatch):
    """A class sending one example at once: the copies share one computation, each still gets its own answer."""
    from brainmri.serving import predictor as front_door

    seen = []
    real = front_door.run_model_batch
    monkeypatch.setattr(front_door, "run_model_batch", lambda loaded, batch, *rest: seen.append(len(batch)) or real(loaded, batch, *rest))
    a, b = images[0], images[1]
    copies = [a, b.copy(), a.copy(), b, a]
    results = predictor.predict_many(copies, "simple_cnn_7")
    assert seen == [2]  # two distinct images, one batch of two
    assert [r.image for r in results] == copies and all(r.image is im for r, im in zip(results, copies))
    for r, im in zip(results, copies):
        alone = run_model_batch(predictor.model("simple_cnn_7"), [im])[0]
        assert r.top_class == alone.top_class and np.abs(r.cam - alone.cam).max() < 1e-3


def test_with_a_runner_per_worker_two_batches_run_at_once():
    """Two workers: the second batch starts while the first is still running, each through its own runner."""
    inside = threading.Barrier(2, timeout=5)  # only passes when both workers are inside a batch together
    seen: list[str] = []

    def runner(tag: str):
        def run(items):
            inside.wait()
            seen.append(tag)
            return [f"{tag}:{x}" for x in items]

        return run

    batcher = MicroBatcher([runner("a"), runner("b")], max_batch=1, max_wait_s=0.0)
    answers: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: answers.update({i: batcher.submit(i)})) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == ["a", "b"], "the two batches did not run at once, one per worker"
    assert {answers[i].split(":")[1] for i in range(2)} == {"0", "1"}
    with pytest.raises(ValueError, match="at least one"):
        MicroBatcher([])


def test_each_worker_serves_through_its_own_copy_with_the_same_answers(predictor: Predictor, images):
    two = Predictor(predictor.sources, max_batch=8, workers=2, ood_model=None)  # the served model alone
    two.warm()
    name = two.default_model
    first, second = two.model(name, 0), two.model(name, 1)
    assert first is not second and first.model is not second.model, "the workers share one model: their hooks would mix"
    assert two.cache.names() == [first.name] and two.cache.nbytes() == first.nbytes + second.nbytes  # both copies count
    a = two.predict_many(images[:3], name, copy=0)
    b = two.predict_many(images[:3], name, copy=1)
    for x, y in zip(a, b):
        assert x.probabilities == pytest.approx(y.probabilities, abs=1e-6) and np.abs(x.cam - y.cam).max() < 1e-5
    with pytest.raises(ValueError, match="workers"):
        Predictor(predictor.sources, workers=0)
