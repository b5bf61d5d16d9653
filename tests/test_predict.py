"""The predict path on the shipped checkpoints: agrees with evaluation, explains, flags non-MRI, is thread-safe."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from shipped import SHIPPED, require_shipped
from upload_samples import valid_uploads

from brainmri.app.summary import summary
from brainmri.calibration import calibrated_probs
from brainmri.data.imageio import load_image
from brainmri.data.records import ImageRecords, limit_per_class, load_records
from brainmri.explain import CAM_METHODS, cam_to_image_size, gradcam_batch, view_box
from brainmri.models.catalog import ModelSource, app_default_model, discover, validation_accuracy
from brainmri.models.registry import APP_DEFAULT, DEFAULT_CLASSIFIER
from brainmri.runtime import available_cpus
from brainmri.serving import ModelCache, Predictor
from brainmri.vocabulary import LOOKS_NOT_MRI, UNLIKE_TRAINING
from train.evaluate import predict_records


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(require_shipped())


@pytest.fixture(scope="module")
def sample(data_dir: Path) -> ImageRecords:
    """Four Testing images per class."""
    return limit_per_class(load_records(data_dir, "test"), 4, seed=1)


@pytest.mark.parametrize("name", SHIPPED)
def test_predict_agrees_with_evaluation(predictor: Predictor, sample: ImageRecords, name: str):
    loaded = predictor.model(name)
    with loaded.lock:
        reference = predict_records(loaded.model, sample)  # train/evaluate.py's own path
    # The app shows temperature-calibrated probabilities; the arg max is unchanged.
    reference = calibrated_probs(np.log(np.clip(reference, 1e-30, None)), loaded.temperature)
    right = reference.argmax(1) == sample.labels
    for c, class_name in enumerate(sample.class_names):
        assert right[sample.labels == c].any(), f"{name} gets no sampled {class_name} image right in evaluation"
    for i in range(len(sample)):
        image = load_image(sample.read_bytes(i), sample.name(i))
        result = predictor.predict(image, name)
        probs = np.array(list(result.probabilities.values()))
        assert list(result.probabilities) == sample.class_names
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(probs, reference[i], atol=1e-4)
        if right[i]:
            assert result.top_class == sample.class_names[sample.labels[i]]
        assert result.cam.shape == (image.height, image.width)
        assert 0.0 <= result.cam.min() and result.cam.max() <= 1.0
        assert result.tumour_probability == pytest.approx(1 - result.probabilities["notumor"])


def test_real_slices_are_mostly_in_distribution(predictor: Predictor, sample: ImageRecords):
    flagged = [sample.name(i) for i in range(len(sample)) if not predictor.predict(sample.open(i)).in_distribution]
    assert len(flagged) <= 2, f"real Testing slices flagged as not MRI: {flagged}"


@pytest.fixture(scope="module")
def confident(predictor: Predictor, sample: ImageRecords) -> tuple[Image.Image, dict[str, str]]:
    """A slice every shipped model classifies right with probability > 0.9, and each model's class for it."""
    for i in range(len(sample)):
        image = sample.open(i)
        results = {n: predictor.predict(image, n) for n in SHIPPED}
        truth = sample.class_names[sample.labels[i]]
        if all(r.top_class == truth and r.probabilities[truth] > 0.9 and r.in_distribution for r in results.values()):
            return image, {n: r.top_class for n, r in results.items()}
    pytest.fail("no sampled slice is classified right and confidently by every shipped model")


@pytest.mark.parametrize("kind", list(valid_uploads(Image.new("L", (64, 64)))))
def test_every_format_gets_the_same_prediction(predictor: Predictor, confident, kind: str):
    image, expected = confident
    name, data = valid_uploads(image)[kind]
    decoded = load_image(data, name)
    for model_name, top in expected.items():
        result = predictor.predict(decoded, model_name)
        assert result.top_class == top, (kind, model_name)
        assert result.in_distribution, (kind, model_name, result.ood)
        assert result.cam.shape == (decoded.height, decoded.width)


def _non_mri() -> dict[str, Image.Image]:
    import matplotlib

    rng = np.random.default_rng(0)
    return {
        "black": Image.new("RGB", (256, 256)),
        "grey": Image.new("RGB", (300, 200), (128, 128, 128)),
        "noise": Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).convert("RGB"),
        "colour noise": Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)),
        "photo": load_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"),
    }


@pytest.mark.parametrize("model_name", SHIPPED)
@pytest.mark.parametrize("kind", list(_non_mri()))
def test_non_mri_is_flagged_not_classified(predictor: Predictor, model_name: str, kind: str):
    result = predictor.predict(_non_mri()[kind], model_name)
    assert not result.in_distribution, result.ood
    # greyscale noise passes a picture's own measures (grey, not flat): only its features flag it, as they flag about 1
    # real slice in 100, so it is called unlike the training slices, not "not a brain MRI"
    assert result.prediction is None and result.label_value() == (UNLIKE_TRAINING if kind == "noise" else LOOKS_NOT_MRI)
    details = result.details()
    assert details["in_distribution"] is False and result.ood.reasons and details["ood"]["reasons"]
    # no class in the details either, as in the tool's answer: a non-MRI's argmax is not an answer
    assert details["prediction"] is details["top_class"] is details["probabilities"] is details["tumour_probability"] is None
    assert details["cam_peak"] is None and result.explained_cam is None  # no heatmap shown: no peak given
    assert details["cam_method"] is details["cam_layer"] is details["heatmap_by"] is None  # nor a heatmap described
    assert result.ood.checked_by == DEFAULT_CLASSIFIER  # the default model judges for every model


def test_the_default_model_judges_every_model_and_only_it_ships_statistics(predictor: Predictor, sample: ImageRecords):
    judged = predictor.predict(sample.open(0), "simple_cnn_7")
    assert judged.ood.checked_by == DEFAULT_CLASSIFIER  # the simple CNN is judged by the default model
    assert not predictor.predict(Image.new("RGB", (256, 256)), "simple_cnn_7").in_distribution  # blank: flagged
    own = Predictor(predictor.sources, ood_model=None)  # each model with its own statistics, where it has them
    assert own.predict(sample.open(0), DEFAULT_CLASSIFIER).ood.checked_by == DEFAULT_CLASSIFIER
    assert own.predict(sample.open(0), "simple_cnn_7").ood is None  # no statistics shipped: no verdict, not a guess


def test_details_are_json_with_the_promised_keys(predictor: Predictor, sample: ImageRecords):
    import json

    details = json.loads(json.dumps(predictor.predict(sample.open(0)).details()))
    assert {"model", "prediction", "probabilities", "tumour_probability", "in_distribution", "latency_ms"} <= set(details)
    assert details["tumor_probability"] == details["tumour_probability"]  # the old key, kept one release
    assert details["model"] == predictor.default_model == APP_DEFAULT
    assert details["latency_ms"] > 0


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_heatmap_moves_with_the_explained_class(predictor: Predictor, sample: ImageRecords, method: str):
    loaded = predictor.model(DEFAULT_CLASSIFIER)
    x = loaded.transform(sample.open(0))[None]
    with loaded.lock:
        maps = [gradcam_batch(loaded.model, loaded.cam_layers(method), x, method, [c])[0][0] for c in (0, 2)]
    assert maps[0].shape == x.shape[2:]
    assert np.abs(maps[0] - maps[1]).mean() > 0.01


def test_concurrent_requests_do_not_mix(predictor: Predictor, sample: ImageRecords):
    images = [sample.open(i) for i in (0, 5, 10, 15)]

    def model_of(k: int) -> str | None:  # threads 4 and 5 ask for a second model, so two models run at once
        return SHIPPED[1] if k >= 4 else None

    expected = [predictor.predict(images[k % 4], model_of(k)).cam for k in range(6)]
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                got[k] = predictor.predict(images[k % 4], model_of(k)).cam
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(6):
        np.testing.assert_allclose(got[k], expected[k], atol=1e-5, err_msg=f"thread {k}")
    for name in (None, SHIPPED[1]):
        assert not predictor.model(name).layer._forward_hooks, f"Grad-CAM hooks were left on {name or 'the default'}"


def test_unknown_and_unavailable_models_are_named(predictor: Predictor, sample: ImageRecords):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        predictor.predict(sample.open(0), "nope")
    sources = dict(predictor.sources)
    sources["resnet18"] = ModelSource("resnet18", "", "x", "no local checkpoint")
    with pytest.raises(ValueError, match="resnet18 is not available: no local checkpoint"):
        Predictor(sources).predict(sample.open(0), "resnet18")


def test_offline_catalog_lists_every_model_with_a_reason(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources = discover(hub=True)
    for name in SHIPPED:
        assert sources[name].where == "local"
    missing = [s for s in sources.values() if not s.available]
    assert missing and all("offline" in s.reason for s in missing)


def test_model_cache_evicts_least_recently_used(predictor: Predictor):
    folders = {n: predictor.sources[n].location for n in SHIPPED}
    cache = ModelCache(max_bytes=1)  # room for one model only
    first = cache.get(SHIPPED[0], lambda: folders[SHIPPED[0]])
    assert cache.get(SHIPPED[0], lambda: pytest.fail("reloaded a cached model")) is first
    cache.get(SHIPPED[1], lambda: folders[SHIPPED[1]])
    assert cache.names() == [SHIPPED[1]]


def test_model_cache_keeps_the_model_used_last():
    """Room for two of three: a hit moves a model to the back, so the one evicted is the least recently used
    (first in, first out would evict "a")."""

    def loader(name: str, folder: str, device: object) -> SimpleNamespace:
        return SimpleNamespace(nbytes=10, device="cpu", lock=threading.Lock())

    cache = ModelCache(max_bytes=25, loader=loader)
    for name in "aba":
        cache.get(name, lambda: "unused")
    assert cache.names() == ["b", "a"]
    cache.get("c", lambda: "unused")
    assert cache.names() == ["a", "c"]


def test_view_box_and_heatmap_placement_on_a_wide_image():
    cfg = {"crop_pct": 1.0, "crop_mode": "center"}
    assert view_box(300, 200, cfg) == (50, 0, 250, 200)
    heat = cam_to_image_size(np.ones((8, 8), dtype=np.float32), (300, 200), cfg)
    assert heat.shape == (200, 300)
    assert heat[:, :50].max() == 0 and heat[:, 250:].max() == 0 and heat[:, 60:240].min() > 0.99


def test_available_cpus_honours_the_cgroup_quota(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    for cpu_max, cpus in [("150000 100000", 2), ("50000 100000", 1), ("max 100000", 8)]:
        (tmp_path / "cpu.max").write_text(cpu_max + "\n")
        assert available_cpus(tmp_path) == cpus, cpu_max
    assert available_cpus(tmp_path / "none") == 8  # no cgroup file: affinity alone
    assert torch.get_num_threads() >= 1


def test_the_cores_are_shared_by_the_workers(monkeypatch):
    import brainmri.runtime as runtime

    monkeypatch.delenv("BRAIN_MRI_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
    before = torch.get_num_threads()
    try:
        assert runtime.configure_torch_threads(workers=2) == 1 and torch.get_num_threads() == 1
        assert runtime.configure_torch_threads(workers=1) == 2
        assert runtime.configure_torch_threads(workers=4) == 1  # at least one each
        monkeypatch.setenv("BRAIN_MRI_THREADS", "3")
        assert runtime.configure_torch_threads(workers=2) == 3
    finally:
        torch.set_num_threads(before)


def test_details_say_where_the_heatmap_peaks_and_which_layer_made_it(predictor: Predictor):
    image = Image.new("RGB", (200, 100))
    result = predictor.predict(image)
    result.cam = np.zeros((100, 200), dtype=np.float32)
    result.cam[80, 30] = 1.0  # the peak: x = 30 of 200, y = 80 of 100
    result.ood = None  # a black image is flagged, and a flagged image's details give no peak nor layer
    details = result.details()
    assert details["cam_peak"] == [pytest.approx(30.5 / 200), pytest.approx(80.5 / 100)]
    assert all(type(v) is float for v in details["cam_peak"])  # plain JSON numbers
    # The default method, LayerCAM, fuses the default model's (Lite0's) last activated feature map with two finer stages
    # (the registry's choice); Grad-CAM weighs the last one alone.
    assert details["cam_method"] == "LayerCAM" and details["cam_layer"] == "bn2+blocks.4+blocks.2"
    grad_cam = predictor.predict(image, method="Grad-CAM")
    grad_cam.ood = None  # as above: a flagged image's details describe no heatmap
    assert grad_cam.details()["cam_layer"] == "bn2"


def test_a_heatmap_at_a_larger_size_explains_the_class_predicted_at_the_input_size(predictor: Predictor, sample: ImageRecords):
    """The default model's heatmap runs at 1.5x its input size (registry cam_size; Lite0: 288 px); its class and
    probabilities still come from the input size."""
    loaded = predictor.model(DEFAULT_CLASSIFIER)
    assert loaded.cam_size == loaded.cfg["input_size"][-1] * 3 // 2
    image = sample.open(0)
    result = predictor.predict(image, DEFAULT_CLASSIFIER)
    x = loaded.transform(image)[None]
    with loaded.lock, torch.no_grad():
        logits = loaded.model(x)
    probs = calibrated_probs(logits, loaded.temperature)[0].tolist()
    assert list(result.probabilities.values()) == pytest.approx(probs, abs=1e-5)
    assert result.cam.shape == (image.height, image.width) and 0.0 <= result.cam.min() and result.cam.max() <= 1.0
    x_cam = loaded.cam_transform(image)[None]
    with loaded.lock:
        expected = gradcam_batch(loaded.model, loaded.cam_layers("LayerCAM"), x_cam, "LayerCAM", [int(logits.argmax())])[0][0]
    np.testing.assert_allclose(result.cam, cam_to_image_size(expected, image.size, loaded.cfg), atol=1e-4)


def test_a_simple_cnn_as_default_is_still_judged_by_the_model_with_ood_statistics(predictor: Predictor, monkeypatch):
    monkeypatch.setenv("BRAIN_MRI_DEFAULT_MODEL", "simple_cnn_7")
    chosen = Predictor(predictor.sources)
    assert chosen.default_model == "simple_cnn_7" and chosen.ood_model == DEFAULT_CLASSIFIER
    assert not chosen.predict(Image.new("RGB", (256, 256))).in_distribution  # a blank image is still flagged


def test_an_override_not_found_yet_answers_once_it_arrives_and_offline_or_unknown_stops_the_app(monkeypatch, caplog):
    shipped = require_shipped()
    later = "tf_efficientnet_lite2"  # as if its weights were on the Hub only, asked once a page loads
    missing = {**shipped, later: ModelSource(later, "", "x", "no local checkpoint (Hub lookup disabled)")}
    monkeypatch.setenv("BRAIN_MRI_DEFAULT_MODEL", later)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with caplog.at_level("WARNING", logger="brainmri.serving.served"):
        served = Predictor(missing)
    assert served.default_model == APP_DEFAULT and f"BRAIN_MRI_DEFAULT_MODEL={later} is not available" in caplog.text
    served.add_sources({later: shipped[later]})
    assert served.default_model == later and served.ood_model == DEFAULT_CLASSIFIER
    # Offline no lookup will bring it: a benchmark naming it must not quietly measure another model.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=f"BRAIN_MRI_DEFAULT_MODEL={later} is not an available model \\(no local checkpoint"):
        Predictor(missing)
    monkeypatch.setenv("BRAIN_MRI_DEFAULT_MODEL", "tf_efficientnet_lite9")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ValueError, match="lite9 is not an available model \\(the registry has no such model\\)"):
        Predictor(shipped)


def test_a_deployment_whose_models_all_come_from_the_hub_gets_its_judge_when_they_arrive():
    shipped = require_shipped()
    served = Predictor({n: ModelSource(n, "", "x", "no local checkpoint (Hub lookup disabled)") for n in shipped})
    assert served.default_model is None and served.ood_model is None
    served.add_sources(shipped)  # what the app does when a page first loads
    assert served.default_model == APP_DEFAULT and served.ood_model == DEFAULT_CLASSIFIER
    assert not served.predict(Image.new("RGB", (256, 256))).in_distribution  # judged, not answered unjudged


def test_the_registry_default_comes_first_and_without_it_the_best_on_validation():
    sources = discover(hub=False)
    assert app_default_model(sources) == APP_DEFAULT
    local = {n: s for n, s in sources.items() if s.where == "local"}
    assert len(local) >= 3, "the fallback needs several shipped checkpoints to choose among"
    without = {**sources, APP_DEFAULT: ModelSource(APP_DEFAULT, "", "x", "needs multitask_lite0")}
    assert app_default_model(without) == DEFAULT_CLASSIFIER  # the ensemble's classifier alone
    gone = {**without, DEFAULT_CLASSIFIER: ModelSource(DEFAULT_CLASSIFIER, "", "x", "no local checkpoint")}
    chosen = app_default_model(gone)
    others = [s for n, s in local.items() if n != DEFAULT_CLASSIFIER]
    assert chosen != DEFAULT_CLASSIFIER and validation_accuracy(local[chosen].location) == max(
        validation_accuracy(s.location) for s in others
    )


def test_the_summary_says_each_number_once(predictor: Predictor, sample: ImageRecords):
    """A tumour class gives its own probability and, when it differs, that of any tumour; "no tumour" gives one number."""
    by_class = {}
    for i in range(len(sample)):
        result = predictor.predict(sample.open(i))
        by_class.setdefault(result.top_class, result)
    for top, result in by_class.items():
        text, p, tumour = summary(result), result.probabilities[top], result.tumour_probability
        assert text.count(f"{p:.1%}") == 1 and "tumour probability" not in text
        assert ("Any tumour" in text) == (top != "notumor" and round(tumour, 3) != round(p, 3)), text
    assert "notumor" in by_class and "Predicted class: no tumour" in summary(by_class["notumor"])


def test_no_heatmap_is_shown_over_an_image_that_is_not_a_brain_mri(predictor: Predictor, sample: ImageRecords):
    from brainmri.rendering import overlay

    blank = Image.new("RGB", (64, 64), (90, 90, 90))
    flagged = predictor.predict(blank)
    assert not flagged.in_distribution and flagged.explained_cam is None
    assert np.array_equal(np.asarray(overlay(blank, flagged.explained_cam, 0.9)), np.asarray(blank))  # the image alone
    real = predictor.predict(sample.open(0))
    assert real.in_distribution and real.explained_cam is real.cam


def test_latency_counts_the_passes_not_loading_the_model(sample: ImageRecords, monkeypatch):
    """A model's first request loads it (Lite1: 1.2 s); Compare's latency column would read that as its cost."""
    fresh = Predictor(require_shipped())
    load = fresh.model

    def slow_load(*args, **kwargs):
        time.sleep(0.5)
        return load(*args, **kwargs)

    monkeypatch.setattr(fresh, "model", slow_load)
    result = fresh.predict(sample.open(0), "simple_cnn_7")
    assert 0 < result.latency_ms < 500
