"""The multi-task model (one encoder, a class head and an outline decoder) and its training: the registry entry,
the experts' soft target, the joint loss, and a real training run that writes a folder smp loads alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard

from brainmri.models.segmenters import SEGMENTERS, create_segmenter
from brainmri.segmentation import mask_overlap
from train.experts import soft_target
from train.multitask import MultiTaskConfig, joint_loss, per_image_dice_loss

ROOT = Path(__file__).resolve().parent.parent
MULTITASK = [name for name, spec in SEGMENTERS.items() if spec.num_classes]


@pytest.mark.parametrize("name", MULTITASK)
def test_one_encoder_gives_outline_and_class(name):
    model = create_segmenter(name).train()
    x = torch.randn(2, 3, 64, 64)
    masks, logits = model(x)
    assert masks.shape == (2, 1, 64, 64)
    assert logits.shape == (2, SEGMENTERS[name].num_classes)
    target, weight = torch.zeros(2, 1, 64, 64), torch.tensor([1.0, 0.0])
    loss, parts = joint_loss(logits, masks, torch.tensor([0, 2]), target, weight, MultiTaskConfig())
    loss.backward()
    assert torch.isfinite(loss) and parts["outline"] > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:3]}"


def test_per_image_dice_weighs_each_tumour_alike_and_leaves_empty_targets_to_bce():
    target = torch.zeros(3, 1, 16, 16)
    target[0, :, :, :] = 1.0  # a large tumour
    target[1, :, :4, :4] = 1.0  # a small one; image 2 has none
    logits = torch.where(target > 0, 20.0, -20.0)
    logits[1] = -20.0  # the small tumour missed: one image of two wrong
    assert abs(per_image_dice_loss(logits, target).item() - 0.5) < 0.05  # batch-volume Dice: 0.03
    stray = torch.where(target > 0, 20.0, -20.0)
    stray[2, :, 0, 0] = 20.0  # a stray pixel on the empty slice: not Dice's to punish
    assert per_image_dice_loss(stray, target).item() < 0.01
    assert per_image_dice_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)).item() == 0.0


def test_init_from_a_folder_of_another_split_is_refused(tmp_path):
    """Weights trained with another validation split would have seen some of this run's validation scans."""
    from train.multitask import check_init_split

    (tmp_path / "val_split.txt").write_text("# note\nTraining/glioma/a.jpg\n")
    cfg = MultiTaskConfig(init_from=str(tmp_path), data="/d")

    class Val:
        def __len__(self):
            return 1

        def name(self, i):
            return "/d/Training/glioma/b.jpg"

    with pytest.raises(ValueError, match="not this run.s validation split"):
        check_init_split(cfg, Val())
    (tmp_path / "val_split.txt").write_text("# note\nTraining/glioma/b.jpg\n")
    check_init_split(cfg, Val())  # the same scans: accepted


def test_init_classifier_replaces_the_class_path_and_keeps_the_decoder(tmp_path):
    """--init-classifier: a finished classifier's encoder and head become the class path; the decoder stays."""
    from brainmri.models.checkpoint import save_checkpoint
    from train.multitask_init import load_class_path

    name = MULTITASK[0]
    model = create_segmenter(name)
    backbone = model.classifier.pretrained_cfg["architecture"]
    classifier = timm.create_model(backbone, num_classes=SEGMENTERS[name].num_classes)
    save_checkpoint(classifier, tmp_path / "lite", model.label_names)
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    load_class_path(model, tmp_path / "lite")
    for key, value in classifier.state_dict().items():  # fp16 on disk: equal to its precision
        expected = value.half().float() if value.is_floating_point() else value
        torch.testing.assert_close(model.classifier.state_dict()[key], expected, atol=0, rtol=0)
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in decoder.items())
    save_checkpoint(timm.create_model("resnet18", num_classes=4), tmp_path / "other", model.label_names)
    with pytest.raises(ValueError, match="is a resnet18, not this model's"):
        load_class_path(model, tmp_path / "other")
    save_checkpoint(classifier, tmp_path / "permuted", model.label_names[::-1])
    with pytest.raises(ValueError, match="its classes .* are not this model's"):  # the head would answer permuted
        load_class_path(model, tmp_path / "permuted")


def test_the_card_says_where_each_part_of_a_stitched_start_came_from(tmp_path):
    from train.multitask_init import stitched_from

    (tmp_path / "metrics.json").write_text(json.dumps({"initialization": "ImageNet (offline)", "epochs_run": 8}))
    mt = tmp_path / "mt"
    mt.mkdir()
    record = {"model": "multitask_lite0", "initialization": "ImageNet encoder", "epochs_run": 10, "train_seconds": 4764}
    (mt / "metrics.json").write_text(json.dumps(record))
    line = stitched_from(tmp_path, mt)
    assert "the classifier " + tmp_path.name + " (ImageNet (offline), trained 8 epochs)" in line
    assert "decoder: an earlier multitask_lite0 run: ImageNet encoder, trained 10 epochs (4764 s); then this run" in line
    assert "decoder: new (random)" in stitched_from(tmp_path, None)


def test_the_device_option_is_the_gpu_when_there_is_one():
    from brainmri.runtime import pick_device  # the rule train.multitask's --device goes through

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(MultiTaskConfig().device).type == expected
    assert pick_device(MultiTaskConfig(device="cpu").device).type == "cpu"
    with pytest.raises(ValueError, match="choose auto, cpu, cuda or cuda:N"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no GPU"):
            pick_device(MultiTaskConfig(device="cuda").device)


def test_soft_target_is_the_mean_of_the_experts_who_drew_one():
    masks = torch.zeros(3, 2, 4, 4, dtype=torch.uint8)
    masks[0, 0, :2] = 255  # expert 0 marks the top half, expert 1 the left half
    masks[0, 1, :, :2] = 255
    masks[1, 1, 0, 0] = 255  # only expert 1 knows image 1
    known = torch.tensor([[True, True], [False, True], [False, False]])
    target, weight = soft_target(masks, known)
    assert target[0, 0, 0, 0] == 1.0 and target[0, 0, 0, 3] == 0.5 and target[0, 0, 3, 3] == 0.0
    assert target[1, 0, 0, 0] == 1.0 and target[1].sum() == 1.0  # one expert: its mask as it is
    assert weight.tolist() == [1.0, 1.0, 0.0]  # no expert, no outline loss


def test_overlap_counts_empty_on_empty_as_agreement():
    empty = torch.zeros(2, 8, 8, dtype=torch.bool)
    half = empty.clone()
    half[1, :4] = True
    dice, iou = mask_overlap(empty, half)
    assert dice[0] == 1.0 and iou[0] == 1.0  # nothing predicted where nothing is: full agreement
    assert dice[1] == 0.0 and iou[1] == 0.0


@pytest.mark.slow
def test_training_writes_a_folder_that_loads_back(tmp_path, data_dir):
    out = tmp_path / "run"
    out.mkdir()  # a used folder: the last run's outline rule and temperature must not be served with the new weights
    (out / "outline.json").write_text('{"stale": true}')
    (out / "calibration.json").write_text('{"temperature": 9.0, "stale": true}')
    (out / "manifest.json").write_text('{"outline.json": "0", "calibration.json": "0"}')
    cmd = [sys.executable, "-m", "train.multitask", "--data", str(data_dir), "--out", str(out), "--epochs", "1"]
    cmd += ["--limit-per-class", "8", "--max-train-batches", "1", "--batch-size", "4", "--ema-decay", "0.5", "--ema-warmup"]
    cmd += ["--input-size", "256"]  # not the registry's 224: the class face and the outline must both say 256
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    from brainmri.models.multitask import UnetOnClassifier
    from brainmri.segmentation import load_segmenter

    model = UnetOnClassifier.from_pretrained(str(out)).eval()
    assert model.input_size == 256 and model.pretrained_cfg["input_size"] == (3, 256, 256)  # timm's eval transform reads this
    assert load_segmenter(out).input_size == 256
    with torch.no_grad():
        masks, logits = model(torch.zeros(1, 3, 256, 256))
    assert masks.shape == (1, 1, 256, 256) and logits.shape == (1, 4)
    metrics = json.loads((out / "metrics.json").read_text())
    both = metrics["outline"]["both_experts"]["all"]
    assert set(both) >= {"n", "dice_cheng", "dice_brisc", "experts_dice"}
    assert metrics["validation"]["n"] == len((out / "val_split.txt").read_text().split("\n")) - 3
    assert metrics["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # the run trained where the rule says
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "brain-mri"
    assert "moving average" in card.text and "--ema-decay 0.5 --ema-warmup" in card.text  # the kept weights are the average's
    assert not (out / "resume").exists()
    for name in ("outline.json", "calibration.json"):
        assert not (out / name).is_file() or "stale" not in (out / name).read_text(), name


@pytest.mark.parametrize("name", MULTITASK)
def test_classifier_face_gives_what_the_model_gives_from_one_forward(name):
    from brainmri.models.multitask import MultiTaskClassifier

    net = create_segmenter(name).eval()
    model = MultiTaskClassifier(net).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        masks, labels = net(x)
        logits = model(x)
    assert torch.allclose(logits, labels, atol=1e-5)
    assert torch.allclose(model.decode_last(), masks, atol=1e-5)  # the outline of that same forward
    assert torch.allclose(net.classifier(x), labels, atol=1e-5)  # the class path is the timm classifier, whole
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, model.get_classifier().in_features)
    assert model.pretrained_cfg["input_size"] == (3, SEGMENTERS[name].input_size, SEGMENTERS[name].input_size)
    assert not model.decode_last().requires_grad


@pytest.mark.parametrize("name", MULTITASK)
def test_the_face_decodes_its_last_pass_only_for_the_images_asked(name, monkeypatch):
    """The decoder costs as much as the encoder: a pass keeps its stages, and the outline is decoded afterwards for the
    images the gate lets through; the others get -inf logits (no outline), the kept ones the whole forward's."""
    from brainmri.models.multitask import MultiTaskClassifier

    net = create_segmenter(name).eval()
    model = MultiTaskClassifier(net).eval()
    assert model.decode_last() is None  # no pass yet
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        masks, _ = net(x)
        model(x)
    decoded, segment = [], net.segment
    monkeypatch.setattr(net, "segment", lambda x, stages: decoded.append(len(x)) or segment(x, stages))
    keep = torch.tensor([True, False, True])
    logits = model.decode_last(keep)
    assert decoded == [2] and torch.allclose(logits[keep], masks[keep], atol=1e-5) and torch.isneginf(logits[~keep]).all()
    assert torch.isneginf(model.decode_last(torch.zeros(3, dtype=torch.bool))).all() and decoded == [2]  # none decoded


@pytest.mark.parametrize("name", MULTITASK)
def test_every_classifier_tensor_but_the_head_starts_from_imagenet(name):
    from brainmri.models.imagenet import load_offline_imagenet_weights

    spec = SEGMENTERS[name]
    ours = create_segmenter(name, pretrained=True).classifier.state_dict()
    full = timm.create_model(spec.encoder)
    load_offline_imagenet_weights(full, spec.imagenet_init)
    shared = [k for k in ours if not k.startswith("classifier.")]
    assert len(shared) > 200 and all(torch.equal(ours[k], full.state_dict()[k]) for k in shared)


def test_a_saved_folder_loads_back_and_is_a_segmenter(tmp_path):
    from brainmri.models.checkpoint import is_multitask, is_segmenter
    from brainmri.models.multitask import UnetOnClassifier

    net = create_segmenter(MULTITASK[0]).eval()
    net.save_pretrained(tmp_path)
    assert is_multitask(tmp_path) and is_segmenter(tmp_path)
    again = UnetOnClassifier.from_pretrained(str(tmp_path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x), again(x)))


def test_classifier_face_preprocesses_as_training_decoded():
    """timm's eval transform of the face's config gives the pixels train.multitask trained on (to_input), for a
    non-square upload too."""
    from PIL import Image

    from brainmri.data.preprocess import data_config, eval_transform
    from brainmri.models.multitask import MultiTaskClassifier
    from brainmri.segmentation import to_input

    name = MULTITASK[0]
    model = MultiTaskClassifier(create_segmenter(name))
    image = Image.effect_mandelbrot((300, 260), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    served = eval_transform(data_config(model), normalize=False)(image)
    trained = to_input(image, SEGMENTERS[name].input_size)
    assert served.shape == trained.shape
    assert (served.int() - trained.int()).abs().max() <= 1


def test_resume_on_a_fresh_folder_starts_from_imagenet(tmp_path):
    """--resume with nothing to resume is a fresh start, ImageNet weights included (it was random init once)."""
    from train.multitask import build

    name = MULTITASK[0]
    model, _, _, ema = build(MultiTaskConfig(out=str(tmp_path), resume=True), steps_per_epoch=10)
    fresh = create_segmenter(name, pretrained=True).classifier.conv_stem.weight
    assert torch.equal(model.classifier.conv_stem.weight, fresh)
    assert ema is None  # no moving average unless asked for


def test_the_moving_average_resumes_with_the_run(tmp_path):
    """--ema-decay: the average's weights travel in the resume state, and a state saved without one is refused."""
    from train.multitask import build
    from train.resume import load_model_state, save_model_state

    cfg = MultiTaskConfig(out=str(tmp_path), ema_decay=0.9, pretrained=False)
    model, optimizer, _, ema = build(cfg, steps_per_epoch=10)
    with torch.no_grad():
        model.classifier.conv_stem.weight.add_(1.0)
    ema.update(model)
    averaged = ema.module.classifier.conv_stem.weight.clone()
    assert not torch.equal(averaged, model.classifier.conv_stem.weight)  # it lags the weights it follows
    save_model_state(tmp_path, model, optimizer, {"epoch": 1}, ema)
    again, optimizer2, _, ema2 = build(cfg, steps_per_epoch=10)
    assert load_model_state(tmp_path, again, optimizer2, ema2) == {"epoch": 1}
    assert torch.equal(ema2.module.classifier.conv_stem.weight, averaged)
    save_model_state(tmp_path, model, optimizer, {"epoch": 1})
    with pytest.raises(ValueError, match="without a moving average"):
        load_model_state(tmp_path, again, optimizer2, ema2)


def test_served_as_a_classifier_it_outlines_from_its_own_forward(tmp_path, monkeypatch):
    """The multi-task model picked as the classifier: class, heatmap and outline from its one forward (and the
    heatmap's backward); the separate segmenter is never run. The outline is the decoder's, in the upload's frame."""
    from PIL import Image

    from brainmri.models.catalog import ModelSource
    from brainmri.models.checkpoint import label_names, load_checkpoint, write_manifest
    from brainmri.models.multitask import MultiTaskClassifier
    from brainmri.serving import Predictor, predictor

    name = MULTITASK[0]
    torch.manual_seed(0)
    net = create_segmenter(name).eval()
    with torch.no_grad():  # a decoder that marks every pixel: the outline is the whole image
        net.segmentation_head[0].bias.fill_(20.0)
    folder = tmp_path / name
    net.save_pretrained(folder)
    write_manifest(folder)
    assert isinstance(load_checkpoint(folder), MultiTaskClassifier)
    assert label_names(folder) == ["glioma", "meningioma", "notumor", "pituitary"]

    def no_second_network(*_args, **_kwargs):
        raise AssertionError("the segmenter ran beside a model that outlines")

    monkeypatch.setattr(predictor, "segment_batch", no_second_network)
    source = ModelSource(name, "local", str(folder))
    served = Predictor({name: source}, ood_model=None, segmenter=source)
    image = Image.effect_mandelbrot((300, 240), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    result = served.predict(image, name)
    assert result.outlined_by == name and result.outline.mask.shape == (240, 300) and result.outline.mask.all()
    assert result.details()["outlined_by"] == name and result.cam.shape == (240, 300)
    assert served.predict(image, name, outline=False).outline is None  # Compare: heatmaps only


def test_another_classifier_picked_is_outlined_by_the_multitask_segmenter(tmp_path):
    """A deployment whose segmenter is the multi-task model outlines every classifier's answer with it."""
    from conftest import write_checkpoint
    from PIL import Image

    from brainmri.models.catalog import ModelSource
    from brainmri.models.checkpoint import write_manifest
    from brainmri.serving import Predictor

    name = MULTITASK[0]
    net = create_segmenter(name).eval()
    with torch.no_grad():
        net.segmentation_head[0].bias.fill_(20.0)
    net.save_pretrained(tmp_path / name)
    write_manifest(tmp_path / name)
    small = write_checkpoint(tmp_path / "simple_cnn_7", labels=list(net.label_names))
    served = Predictor(
        {"simple_cnn_7": ModelSource("simple_cnn_7", "local", str(small))},
        ood_model=None,
        segmenter=ModelSource(name, "local", str(tmp_path / name)),
    )
    result = served.predict(Image.effect_mandelbrot((200, 180), (-2, -1.2, 1, 1.2), 60).convert("RGB"), "simple_cnn_7")
    assert result.outlined_by == name and result.outline.mask.shape == (180, 200) and result.outline.mask.all()


def test_the_one_encoder_section_shows_each_expert_beside_their_agreement_and_the_verdict(tmp_path):
    from brainmri.eval.one_encoder import one_encoder_markdown

    row = {"n": 10, "dice_cheng": 0.81, "iou_cheng": 0.7, "dice_brisc": 0.8, "iou_brisc": 0.69, "experts_dice": 0.82, "experts_iou": 0.72}
    metrics = {
        "model": "multitask_lite0", "architecture": "Lite0 + decoder", "parameters": 3.8e6, "epochs_run": 10, "best_epoch": 9,
        "validation": {"n": 816, "accuracy": 0.99, "accuracy_ci95": [0.98, 0.995]},
        "test_unseen": {"n": 336, "accuracy": 0.985, "accuracy_ci95": [0.97, 0.997]},
        "calibration": {"temperature": 0.7, "test_unseen_ece_after": 0.009},
        "outline": {"both_experts": {"all": row, "glioma": row}, "no_tumour": {"n": 20, "empty_share": 0.95}},
    }  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    verdict = {
        "accuracy": {"multitask": 0.99, "multitask_n": 816, "tf_efficientnet_lite0": 0.9875, "tf_efficientnet_lite0_n": 399},
        "pair": {"classifier": "tf_efficientnet_lite0", "segmenter": "unet_lite0"},
        "passes": {"class": True, "outline": False},
        "dice_all": {"cheng": {"multitask": 0.81, "unet_lite0": 0.83}},
        "outline": {"unet_lite0": {"both_experts": {"all": row | {"dice_cheng": 0.83}, "glioma": row}}},
        "default": "pair",
    }
    (tmp_path / "default.json").write_text(json.dumps(verdict))
    text = one_encoder_markdown(tmp_path, tmp_path / "default.json")
    assert "| all tumours | 10 | **0.810** (0.700) | **0.800** (0.690) | 0.820 | 0.830 | 0.800 |" in text
    assert "| unseen Testing | 336 | 98.5% (97.0-99.7) | 0.90% |" in text and "Temperature 0.700" in text
    assert (
        "95.0% of 20" in text
        and "against unet_lite0's 0.830) fails" in text
        and "it did not replace `tf_efficientnet_lite0`, which kept classifying" in text
    )
    assert "| validation slices both experts outlined | n |" in text  # why its n differs from the U-Net's own table
    assert one_encoder_markdown(tmp_path / "nothing") == ""


def test_a_chain_of_schedules_reads_as_one_start_and_its_schedules(tmp_path):
    """The card's 'initialised from' line of a third schedule names the first start once, then each schedule."""
    import json

    from train.multitask_init import started_from

    first = {"model": "multitask_lite0", "initialization": "ImageNet encoder (offline package p)", "epochs_run": 10, "train_seconds": 4764}
    (tmp_path / "metrics.json").write_text(json.dumps(first))
    second = started_from(tmp_path)
    assert second == (
        "an earlier multitask_lite0 run: ImageNet encoder (offline package p), trained 10 epochs (4764 s); "
        "this run is the second schedule on its weights"
    )
    (tmp_path / "metrics.json").write_text(json.dumps({**first, "initialization": second, "epochs_run": 8, "train_seconds": 6775}))
    assert started_from(tmp_path) == (
        "an earlier multitask_lite0 run: ImageNet encoder (offline package p), trained 10 epochs (4764 s), then 8 epochs "
        "(6775 s); this run is the third schedule on its weights"
    )
    old = second.replace("the second", "a second")  # the wording of the cards written before this one
    (tmp_path / "metrics.json").write_text(json.dumps({**first, "initialization": old, "epochs_run": 8, "train_seconds": 6775}))
    assert "trained 10 epochs (4764 s), then 8 epochs (6775 s); this run is the third" in started_from(tmp_path)


@pytest.mark.slow
def test_the_default_rules_class_figures_are_each_model_as_served(data_dir):
    """results/multitask_default.json compares the two classifiers as the app serves them (each saved folder in
    float32), not by the figure each training run logged: rerun, they come out the same."""
    from shipped import require_shipped

    from brainmri.models.checkpoint import MULTITASK_DEFAULT, results_dir
    from train.multitask_default import CLASSIFIER, served_accuracy

    require_shipped()
    saved = json.loads((results_dir() / MULTITASK_DEFAULT).read_text())["accuracy"]
    got = served_accuracy(ROOT / "checkpoints" / CLASSIFIER, str(data_dir))
    assert (got["accuracy"], got["n"]) == (saved[CLASSIFIER], saved[f"{CLASSIFIER}_n"])
    mine = served_accuracy(ROOT / "checkpoints" / "multitask_lite0", str(data_dir))
    assert (mine["accuracy"], mine["n"]) == (saved["multitask"], saved["multitask_n"])
    # ... and its own metrics.json holds the same figure (train.multitask scores the saved folder).
    own = json.loads((ROOT / "checkpoints" / "multitask_lite0" / "metrics.json").read_text())["validation"]
    assert (own["accuracy"], own["n"]) == (saved["multitask"], saved["multitask_n"])
