"""What the Experiments and Data tabs read: tables from files, counts from the data folder, the real preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_image

from brainmri.app import dataview, experiments, sweeps
from brainmri.data.preprocess import eval_transform


def _fake_checkpoint(folder: Path, model: str, val: float, ci: list[float] | None = None) -> None:
    folder.mkdir(parents=True)
    metrics = {
        "model": model,
        "parameters": 1234,
        "input_size": 128,
        "epochs_run": 7,
        "best_epoch": 5,
        "train": {"accuracy": 0.99},
        "validation": {"accuracy": val},
        "test": {"accuracy": 0.9, "loss": 0.3, **({"accuracy_ci95": ci} if ci else {})},
        "test_unseen": {"accuracy": 0.85, "accuracy_ci95": [0.8, 0.9], "n": 335},
        "train_seconds": 600,
        "calibration": {"temperature": 0.51234, "test_ece_before": 0.07783, "test_ece_after": 0.005352},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text("epoch,train_loss,val_acc\n1,1.0,0.5\n2,0.5,0.8\n")


def test_experiment_table_is_read_from_the_folders(tmp_path: Path):
    _fake_checkpoint(tmp_path / "tf_efficientnet_lite0", "tf_efficientnet_lite0", 0.95, ci=[0.88, 0.92])
    _fake_checkpoint(tmp_path / "simple_cnn_7", "simple_cnn_7", 0.8)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    rows = experiments.experiment_table(tmp_path, results=tmp_path)  # no ensemble scored there
    assert [r["model"] for r in rows] == ["simple_cnn_7", "tf_efficientnet_lite0"]  # registry order; the broken one skipped
    lite = rows[1]
    assert lite["val acc"] == "95.0%" and lite["unseen test acc (95% CI)"] == "85.0% (80.0-90.0)" and lite["epochs (best)"] == "7 (5)"
    assert lite["test acc (95% CI)"] == "90.0% (88.0-92.0)" and rows[0]["test acc (95% CI)"] == "90.0%"  # no interval: none shown
    assert lite["train time"] == "10.0 min" and lite["family"] == "efficientnet"
    assert (lite["temperature"], lite["test ECE raw"], lite["test ECE calibrated"]) == (0.512, "7.78%", "0.54%")
    assert list(lite) == experiments.ALL_COLUMNS and experiments.COLUMNS == experiments.ALL_COLUMNS[: len(experiments.COLUMNS)]
    assert experiments.history(tmp_path / "simple_cnn_7")[1]["val_acc"] == "80.0%"  # in percent, as everywhere else
    assert experiments.history(tmp_path / "simple_cnn_7")[0]["train_loss"] == "1"  # 4 significant digits, not 16
    (tmp_path / "simple_cnn_7" / "history.csv").write_text("epoch,val_accuracy,val_loss\n1,0.973,0.1\n")  # the multi-task's
    assert experiments.history(tmp_path / "simple_cnn_7")[0] == {"epoch": "1", "val_accuracy": "97.3%", "val_loss": "0.1"}
    assert experiments.figure(tmp_path / "simple_cnn_7", "curves.png") is None
    assert sweeps.results_tables(tmp_path / "none.csv") == (None, None)


def test_the_apps_default_ensemble_has_its_row_with_the_figure_its_label_shows():
    from brainmri.models.catalog import discover, model_label
    from brainmri.models.registry import APP_DEFAULT

    rows = experiments.experiment_table()
    assert rows[0]["model"] == APP_DEFAULT and rows[0]["family"] == "ensemble" and list(rows[0]) == experiments.ALL_COLUMNS
    assert model_label(discover(hub=False)[APP_DEFAULT]).endswith(f"({rows[0]['unseen test acc (95% CI)'].split(' ')[0]})")
    assert APP_DEFAULT not in experiments.tables()[4]  # no folder of figures to pick


def test_heatmap_check_names_a_model_that_looks_outside_the_brain(tmp_path: Path):
    report = {
        "models": {
            "tf_efficientnet_lite0": {"n": 1311, "mean": 0.8604, "verdict": "attention mostly inside the brain"},
            "simple_cnn_7": {"n": 1311, "mean": 0.42, "verdict": "attention mostly outside the brain"},
        }
    }
    (tmp_path / "cam.json").write_text(json.dumps(report))
    shares = experiments.cam_in_brain(tmp_path / "cam.json")
    assert shares == {"tf_efficientnet_lite0": "0.86 (n=1311)", "simple_cnn_7": "0.42 (n=1311): attention mostly OUTSIDE the brain"}
    assert experiments.cam_in_brain(tmp_path / "missing.json") == {}
    _fake_checkpoint(tmp_path / "simple_cnn_7", "simple_cnn_7", 0.8)
    assert "OUTSIDE" in experiments.experiment_row(tmp_path / "simple_cnn_7", shares)["heatmap in brain"]


def test_the_tabs_note_says_what_the_heatmap_check_measured(tmp_path: Path):
    report = {"cam": "Grad-CAM, as served", "models": {"a": {"mask_area_mean": 0.4}, "b": {"mask_area_mean": 0.5}}}
    (tmp_path / "cam.json").write_text(json.dumps(report))
    said = experiments.about(tmp_path / "cam.json").splitlines()
    column = "- *heatmap in brain* (under All columns): mean share of heatmap (Grad-CAM) mass inside an intensity brain mask"
    assert f"{column} (a uniform map scores 0.45)." in said
    assert said[-1].startswith("- A blank cell") and len(said) == len(experiments.ABOUT) + 1  # a line a column, then blanks
    mix = experiments.unseen_mix()  # the unseen set's classes, counted from the default classifier's metrics
    assert mix.startswith(" (335 images: ") and "glioma" in mix and experiments.unseen_mix(tmp_path) == ""
    assert mix in experiments.lead()
    assert "heatmap in brain" not in experiments.about(tmp_path / "missing.json")  # no check: no column note
    assert "(LayerCAM)" in experiments.about()  # the shipped check's own method


def test_shipped_heatmap_report_covers_the_full_testing_split():
    """results/cam_sanity.json, as committed, was measured on all of Testing for every shipped model."""
    report = json.loads(experiments.CAM_SANITY_JSON.read_text())
    assert report["subset"] == "all" and report["images"] == 1311
    assert {"tf_efficientnet_lite0", "simple_cnn_7"} <= set(report["models"])
    assert all(r["n"] == 1311 for r in report["models"].values())


def test_class_counts_match_the_folder(data_dir: Path):
    rows = {r["class"]: r for r in dataview.class_counts(data_dir)}
    n_glioma_test = len(list((data_dir / "Testing" / "glioma").glob("*.jpg")))
    assert rows["glioma"]["Testing"] == n_glioma_test
    assert rows["all"]["total"] == sum(r["total"] for name, r in rows.items() if name != "all")


@pytest.mark.parametrize("size", [(224, 224), (300, 200)])  # a slice as the dataset has them; one the crop cuts
def test_preprocessing_shows_each_step_that_changes_the_picture_and_names_every_step(size: tuple[int, int]):
    cfg = {
        "input_size": (3, 96, 96),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    image = synthetic_image(3, max(size)).resize(size)
    steps = dataview.preprocessing_steps(image, cfg)
    names = [caption.split(":")[0] for _, caption in steps.tiles]
    cuts = size[0] != size[1]
    # words, not timm's classes; a crop that cuts nothing and the conversion to numbers look like the step before
    assert names == ["decoded", "resized", *(["centre crop"] if cuts else []), "normalised"]
    assert steps.tiles[-2][0].size == (96, 96)
    assert ("nothing to cut" in steps.words) is not cuts and "2. centre crop 96x96" in steps.words
    assert "3. to numbers" in steps.words and "4. normalise each channel: minus mean (0.5, 0.5, 0.5), over std (0.25" in steps.words
    # the last tile is channel 0 of what the network gets, white at 0 and red above, blue below
    x = eval_transform(cfg)(image)[0]
    shown = np.asarray(steps.tiles[-1][0], dtype=np.int16)
    hi, lo = np.unravel_index(int(x.argmax()), x.shape), np.unravel_index(int(x.argmin()), x.shape)
    assert shown.shape == (96, 96, 3) and shown[hi][0] > shown[hi][2] and (float(x.min()) >= 0 or shown[lo][2] > shown[lo][0])
    zero = np.unravel_index(int(x.abs().argmin()), x.shape)
    assert abs(float(x[zero])) < 0.05 and shown[zero].min() > 200  # near the mean: near white


def test_example_files_one_per_class_copied_to_a_servable_folder(data_dir: Path, tmp_path: Path):
    examples = dataview.copy_examples(dataview.example_files(data_dir, per_class=1), tmp_path / "ex")
    assert [c for _, c in examples] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert all(p.is_file() and p.parent == tmp_path / "ex" for p, _ in examples)


def test_sweep_table_shows_only_sweep_runs_labelled_by_device(tmp_path: Path):
    csv_path = tmp_path / "experiments.csv"
    csv_path.write_text(
        "model,device,run,epochs_run,stopped,test_unseen_accuracy,test_accuracy,train_seconds,img_per_s,pct_of_bound,status,"
        "initialization,val_accuracy\n"
        "simple_cnn_7,NVIDIA H200,shipped,20,epochs,0.92,0.8977,13.5,7792.5,3.0,ok\n"
        "resnet18,NVIDIA H200,device_sweep,10,epochs,0.88,0.8783,6.2,8042.3,16.4,ok,random (no pretrained weights),0.9216\n"
        "efficientnet_b7,NVIDIA H200,device_sweep,2,time budget,,0.539,22,792,30,ok\n"
        "efficientnet_b1,NVIDIA H200,device_sweep,7,time budget,,0.783,16,2187,19,ok\n"
        "convnext_nano,NVIDIA H200,device_sweep,3,,,0.64,9,3434,14,ok\n"
    )
    finished, short = sweeps.results_tables(csv_path)
    assert finished == [
        {
            "model": "resnet18", "device": "NVIDIA H200", "run": "device_sweep", "init": "random", "epochs": "10",
            "stopped by": "epochs", "val acc": "92.2%", "unseen test acc": "88.0%", "test acc": "87.8%", "train time": "6 s",
            "img/s": "8,042", "% of bound": "16",
        }
    ]  # fmt: skip
    # Ended by the budget, or under 5 epochs: apart from the finished runs, never beside them as a verdict on the model.
    assert [r["model"] for r in short] == ["efficientnet_b7", "efficientnet_b1", "convnext_nano"]
    csv_path.write_text("model,run\nsimple_cnn_7,shipped\n")
    assert sweeps.results_tables(csv_path) == (None, None)  # only shipped rows: no sweep table at all


def test_pictures_are_the_files_train_plots_writes():
    from reports import plots

    assert [p.name for p in experiments.PICTURES] == [plots.COST_PNG, plots.PARAMS_PNG, plots.PER_CLASS_PNG]
    assert all(p.parent == experiments.RESULTS_DIR for p in experiments.PICTURES)
    assert experiments.pictures() == tuple(str(p) for p in experiments.PICTURES)  # committed: the tab shows them


def test_localisation_table_reads_the_report_half(tmp_path: Path):
    half = {"n": 10, "hit": 0.6, "mass": 0.2, "centre": 0.19, "head": 0.05, "per_class": {"pituitary": {"hit": 0.3}}}
    path = tmp_path / "loc.json"
    run = {"model": "m", "layer": "bn2", "method": "Grad-CAM", "cam_size": 288, "choose": {}, "report": half}
    path.write_text(json.dumps({"runs": [run]}))
    text = experiments.localisation_markdown(path)
    assert "| m | `bn2` | Grad-CAM | 288 | 10 | **60.0%** |  |  | 30.0% | 20.0% | 19.0% | 5.0% |" in text
    assert "No localisation results" in experiments.localisation_markdown(tmp_path / "none.json")


def test_the_duplicate_audit_is_said_in_words():
    summary = {
        "exact_groups": 300, "exact_files": 726, "exact_groups_across_splits": 189, "test_with_exact_twin_in_train": 216,
        "near_pairs_train_train": 1627, "near_pairs_test_test": 157, "test_with_near_twin_in_train": 472, "test_clean": 839,
        "near_threshold": 2.0,
    }  # fmt: skip
    text = dataview.audit_markdown(summary)
    assert "**472 Testing images** have a near-identical copy in Training" in text and "**839 Testing images**" in text
    assert "**216** of them byte-identical" in text  # within the 472, so the counts add up to the Testing total
    assert "{" not in text and "/" not in text.replace("32 x 32", "")  # words, no JSON, no paths


def test_a_cam_layer_list_names_the_module_its_layers_share_once():
    from brainmri.eval.localisation import layer_label

    assert layer_label("bn2+blocks.4+blocks.2") == "`bn2+blocks.4+blocks.2`"
    wrapped = "net.classifier.bn2+net.classifier.blocks.4+net.classifier.blocks.2"
    assert layer_label(wrapped) == "`bn2+blocks.4+blocks.2` in `net.classifier`"
    assert layer_label("net.classifier.bn2") == "`net.classifier.bn2`"  # one layer: nothing shared to name once
    assert layer_label("features.9") == "`features.9`"
    assert layer_label("blocks.5+blocks.3") == "`blocks.5+blocks.3`"  # a numbered child is not a name of its own


def test_the_details_panel_names_the_mask_and_the_api_keeps_it_whole():
    from test_comparison import prediction

    from brainmri.app import display
    from brainmri.segmentation import Outline

    result = prediction("a", [0.7, 0.1, 0.1, 0.1])
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    result.outline = Outline(mask, float(mask.mean()), (0.25, 0.25, 0.625, 0.625))
    shown, api = display.shown_details(result), result.details()
    assert api["tumour_mask"].startswith("data:image/png;base64,") and "tumor_probability" in api
    assert shown["tumour_mask"].startswith("PNG data URL, ") and "the API returns it whole" in shown["tumour_mask"]
    assert "tumor_probability" not in shown and shown["tumour_probability"] == api["tumour_probability"]


def test_a_failed_sweep_run_says_so_rather_than_leave_blanks(tmp_path: Path):
    """Blank cells mean "not measured"; a run that failed says so in a status column, shown only when one did."""
    csv_path = tmp_path / "experiments.csv"
    csv_path.write_text(
        "model,device,run,epochs_run,stopped,test_accuracy,status\n"
        "resnet18,NVIDIA H200,device_sweep,10,epochs,0.8783,ok\n"
        "resnet50,NVIDIA H200,device_sweep,,,,failed: CUDA out of memory\n"
    )
    finished, _ = sweeps.results_tables(csv_path)
    assert [r["status"] for r in finished] == ["ok", "failed: CUDA out of memory"]
    csv_path.write_text("model,device,run,epochs_run,stopped,test_accuracy,status\nresnet18,NVIDIA H200,device_sweep,10,epochs,0.8783,ok\n")
    assert "status" not in sweeps.results_tables(csv_path)[0][0]


def test_a_runs_time_reads_in_minutes_and_in_seconds_under_one():
    from brainmri.vocabulary import minutes

    assert [minutes(s) for s in (600, "1236.5", 59.7, 59.4, 6.2, None, "")] == ["10.0 min", "20.6 min", "1.0 min", "59 s", "6 s", "", ""]
