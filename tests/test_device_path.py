"""The pieces of the GPU training path, checked on the CPU: batches kept on the device, the data
cache, the time budget, gradient checkpointing, and the data listing the device relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainmri.data import cache as datacache
from brainmri.data.preprocess import data_config, eval_transform
from brainmri.data.records import ImageRecords, limit_per_class, load_records
from brainmri.models.registry import create_model
from train.budget import plan_epochs, seconds_per_epoch, startup_seconds
from train.config import TrainConfig
from train.evaluate import predict_logits
from train.loaders import DeviceBatches
from train.train import State, build_model


def _batches(n=10, batch_size=4, shuffle=True, drop_last=False, seed=0) -> DeviceBatches:
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return DeviceBatches(x, torch.arange(n), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)


def test_device_batches_cover_each_image_once_per_epoch_in_a_seeded_order():
    loader = _batches()
    orders = []
    for epoch in (0, 1, 0):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert [len(y) for _, y in batches] == [4, 4, 2] == [len(x) for x, _ in batches]
        labels = torch.cat([y for _, y in batches])
        assert sorted(labels.tolist()) == list(range(10))
        assert all((x[:, :, 0, 0] == y[:, None]).all() for x, y in batches)  # images travel with their labels
        orders.append(labels.tolist())
    assert orders[0] == orders[2] != orders[1]


def test_device_batches_drop_last_and_keep_order_without_shuffle():
    assert len(_batches(drop_last=True)) == 2 and [len(y) for _, y in _batches(drop_last=True)] == [4, 4]
    assert torch.cat([y for _, y in _batches(shuffle=False)]).tolist() == list(range(10))


def test_cache_memoises_only_while_open():
    calls = []

    def make():
        calls.append(1)
        return len(calls)

    assert datacache.memo(("k",), make) == 1 and datacache.memo(("k",), make) == 2
    with datacache.open_cache():
        assert datacache.memo(("k",), make) == 3 and datacache.memo(("k",), make) == 3
    assert datacache.memo(("k",), make) == 4


def test_a_cache_of_some_kinds_keeps_those_alone():
    """A long-lived cache (the test session's) keeps splits and thumbnails, not decoded data sets."""
    calls = []

    def make():
        calls.append(1)
        return len(calls)

    with datacache.open_cache(kinds=("split",)):
        assert datacache.memo(("split", 1), make) == 1 and datacache.memo(("split", 1), make) == 1
        assert datacache.memo(("decoded", 1), make) == 2 and datacache.memo(("decoded", 1), make) == 3
        with datacache.open_cache():  # a sweep's own cache inside it keeps every kind, until it ends
            assert datacache.memo(("decoded", 1), make) == 4 and datacache.memo(("decoded", 1), make) == 4
        assert datacache.memo(("split", 1), make) == 1 and datacache.memo(("decoded", 1), make) == 5


def test_the_evaluation_batch_changes_no_logit(data_dir):
    """A CPU evaluates in small batches (brainmri.runtime.eval_batch), for speed only: each image's logits are the same
    at a GPU's batch of 64."""
    from brainmri.runtime import eval_batch

    assert eval_batch("cpu") < eval_batch("cuda") == 64
    model = create_model("simple_cnn_7").eval()
    records = limit_per_class(load_records(data_dir, "test"), 5)
    np.testing.assert_allclose(predict_logits(model, records), predict_logits(model, records, batch_size=64), rtol=1e-5, atol=1e-6)


def test_threaded_decode_and_thumbnails_match_the_plain_functions(synthetic_data, monkeypatch):
    from brainmri.data.duplicates import thumbnails
    from brainmri.data.preprocess import decode_records

    monkeypatch.setattr(datacache, "_CHUNK", 5)  # several chunks from 12 images
    records = load_records(synthetic_data, "train")
    cfg = data_config(create_model("simple_cnn_7"))
    assert torch.equal(datacache.decode_records(records, cfg), decode_records(records, cfg))
    assert np.array_equal(datacache.thumbnails(records), thumbnails(records))


def test_predict_logits_matches_timm_eval_transform_per_image(data_dir):
    # predict_logits decodes to uint8 once and normalises per batch; it must give what the
    # transform the app uses gives, image by image.
    torch.manual_seed(0)
    model = create_model("simple_cnn_7").eval()
    records = limit_per_class(load_records(data_dir, "test"), 2)
    transform = eval_transform(data_config(model))
    with torch.no_grad():
        expected = model(torch.stack([transform(records.open(i)) for i in range(len(records))]))
    np.testing.assert_allclose(predict_logits(model, records, batch_size=3), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_folder_listing_matches_datasets_imagefolder(data_dir):
    # The device has no `datasets`: the folder is listed directly, and must give the same records,
    # the stray copy in Testing/meningioma/.ipynb_checkpoints/ skipped as datasets skips it.
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    records = load_records(data_dir, "test")
    # resolve(): the listing gives real paths, also when the data folder is reached through a symlink
    ds = load_dataset("imagefolder", data_files={"test": str(data_dir.resolve() / "Testing" / "**")}, split="test")
    ds = ds.cast_column("image", ImageFeature(decode=False))
    expected = [im["path"] for im in ds["image"]]
    assert len(records.sources) == len(expected) and records.sources == expected  # no element diff: 1311 paths
    assert records.labels.tolist() == list(ds["label"]) and records.class_names == ds.features["label"].names
    assert len(records) == 1311 and not any("/." in Path(s).as_posix() for s in records.sources)
    by_class = records.paths_by_class()
    assert list(by_class) == records.class_names and sum(map(len, by_class.values())) == 1311
    assert by_class["glioma"][0] == Path(records.sources[0]) and all(p.parent.name == "pituitary" for p in by_class["pituitary"])
    with pytest.raises(ValueError, match="Hub dataset"):
        ImageRecords([b"jpeg bytes"], records.labels[:1], records.class_names).paths_by_class()


def test_plan_fits_the_schedule_to_the_time_budget():
    cfg = TrainConfig(epochs=10, time_budget_s=30)
    state = State(epoch=1, wall_seconds=5.0)
    assert plan_epochs(cfg, state, epoch_seconds=5.0) == 6  # 25 s left: 5 more epochs
    assert plan_epochs(cfg, state, epoch_seconds=0.5) == 10  # never past cfg.epochs
    assert plan_epochs(cfg, state, epoch_seconds=60.0) == 1  # never fewer than those run
    # The next epoch: its images at the steady rate, plus the last one's time outside training.
    assert seconds_per_epoch({"train_images": 1000, "img_per_s": 500.0, "seconds": 2.5}, wall=3.0) == pytest.approx(2.5)
    # The first epoch's one-off start-up (as measured for B0 on an H200: 12.9 s for 1.7 s of steady work) is left out.
    assert startup_seconds({"train_images": 4864, "img_per_s": 2879.3, "seconds": 12.9}) == pytest.approx(11.21, abs=0.01)
    assert startup_seconds({"train_images": 1000, "img_per_s": 500.0, "seconds": 1.9}) == 0.0


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = TrainConfig(model="efficientnet_b0", channels_last=True)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 3])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(TrainConfig(**{**cfg.__dict__, "grad_checkpointing": checkpointing}), 4).train()
        assert model.grad_checkpointing is checkpointing
        F.cross_entropy(model(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_refused_where_the_model_has_none():
    with pytest.raises(ValueError, match="simple_cnn_7 has no gradient checkpointing"):
        build_model(TrainConfig(model="simple_cnn_7", grad_checkpointing=True), 4)


def test_the_resume_state_holds_the_time_budgets_plan(data_dir: Path, tmp_path: Path, monkeypatch):
    """What --resume reads after epoch 1 of a time-budget run already holds the plan that epoch fixed and its seconds
    against the budget: a run killed in epoch 2 resumes on the same schedule, with the time it had spent."""
    import copy

    import train.train as t

    saved: list[State] = []
    real_save = t.save_resume
    monkeypatch.setattr(t, "save_resume", lambda out, acc, state: saved.append(copy.deepcopy(state)) or real_save(out, acc, state))
    cfg = TrainConfig(
        model="simple_cnn_7", data=str(data_dir), out=str(tmp_path / "run"), limit_per_class=8, batch_size=4, epochs=2,
        time_budget_s=3600, evaluate_test=False, fit_ood=False, amp="none",
    )  # fmt: skip
    t.fit(cfg)
    assert [s.epoch for s in saved] == [1, 2]
    assert saved[0].epochs_planned == 2  # an hour is room for every epoch
    assert 0 < saved[0].wall_seconds < saved[1].wall_seconds


def test_a_fresh_run_into_a_used_folder_keeps_nothing_the_last_run_measured(data_dir: Path, tmp_path: Path):
    """The last run's validation list, Testing figures and OOD statistics would otherwise narrow the new validation,
    or stay beside the new weights where this run skips them."""
    import json

    import train.train as t

    out = tmp_path / "run"
    out.mkdir()
    (out / "val_split.txt").write_text("Training/glioma/Tr-gl_0010.jpg\n")  # the last run's, from another cut
    (out / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.99}, "validation": {"accuracy": 0.99}}))
    (out / "ood.json").write_text("{}")
    cfg = TrainConfig(
        model="simple_cnn_7", data=str(data_dir), out=str(out), limit_per_class=8, batch_size=4, epochs=1,
        evaluate_test=False, fit_ood=False, amp="none", save_resume=False,
    )  # fmt: skip
    t.fit(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test" not in metrics and metrics["validation"]["n"] > 1
    assert not (out / "ood.json").exists()
    assert len((out / "val_split.txt").read_text().split("\n")) > 2


def test_a_runs_figures_are_measured_without_tf32_and_training_gets_its_flags_back(tf32_on):
    """On a GPU the end of a run measures Testing, T and the OOD statistics in exact float32, as the app serves
    (cuDNN allows TF32 by default); the next run of a sweep trains with the flags it had. Only flags: no GPU needed."""
    from train.finish import as_served

    with as_served("cuda"):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    with as_served("cpu"):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # nothing to change off the GPU
