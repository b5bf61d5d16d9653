#!/usr/bin/env bash
# The one command of the GPU sweep (README, section "sweep"). On the device machine, from the repo root,
# after scripts/prepare_device_data.sh filled data/ here and the call carried it:
#   bash scripts/device_sweep.sh            # every registry model (train/sweeps/full.yaml) -> at most 8 files in $OUT
#   SWEEP_LIMIT=300 bash scripts/device_sweep.sh --seed   # the seed's simple-CNN experiments (train/sweeps/seed.yaml) in 300 s
#   bash scripts/device_sweep.sh --long     # a second call if the lease has time left: B0 for 60 epochs (train/sweeps/b0_long.yaml)
#   bash scripts/device_sweep.sh --quick    # the same steps on CPU on a few images (train/sweeps/quick.yaml), into device_out/
#   bash scripts/device_sweep.sh --lease    # issue 22's one call: CUDA check, retraining, EfficientNets (docs/gpu_lease.md)
#   bash scripts/device_sweep.sh --lease --quick   # its rehearsal on CPU: the same steps, 8 images a class, 1 epoch
#   bash scripts/device_sweep.sh --serving  # the Space's serving tests under the device's Python 3.12 and torch 2.11
#                                            (CI has 3.11 only; docs/space.md), then the CUDA check: log and JSON in $OUT;
#                                            the lease's first call, on what scripts/prepare_device_serving.sh put in device_in/
#   LEASE_CHECK=0 bash scripts/device_sweep.sh --lease   # the lease's second call: the lanes alone (the check ran first)
# Exit status: the sweep's (0 all trained, 1 some failed, 124 cut by the time limit), or packing's if that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
quick=0 long=0 seed=0 lease=0 serving=0 deadline=()
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    --long) long=1 ;;
    --seed) seed=1 ;;
    --lease) lease=1 ;;
    --serving) serving=1 ;;
    *) echo "unknown option $arg" >&2 && exit 2 ;;
  esac
done
OUT=${OUT:-device_out}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
mkdir -p "$OUT" runs

device_setup() { # on the GPU machine: its own timm when it is the pinned 1.0 line, else carried wheels
  pinned=$(grep -E '^timm==' requirements.txt | cut -d= -f3)
  own=$("$PY" -c "import timm; print(timm.__version__)" 2>/dev/null || echo none)
  if [[ "$own" == "${pinned%.*}".* ]]; then
    echo "timm: the device's own $own (pinned $pinned)"
  elif compgen -G "data/wheels/timm-*.whl" >/dev/null; then
    echo "timm: the device has $own; installing the carried wheel"
  else
    echo "timm: the device has $own, not the pinned ${pinned%.*} line, and no wheel was carried (WHEELS=timm==$pinned)" && return 1
  fi
  # data/wheels: carried with the data; device_in/wheels: carried by the serving call, still there while the machine is warm
  wheels=$(compgen -G "data/wheels/*.whl"; compgen -G "device_in/wheels/*.whl") || true
  if [[ -n "$wheels" ]]; then
    # shellcheck disable=SC2086  # one argument per wheel
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site $wheels && export PYTHONPATH=/tmp/site
    echo "installed: $(echo $wheels | xargs -n1 basename | cut -d- -f1 | tr '\n' ' ')"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
}

imports() {
  "$PY" -c "import torch, timm, accelerate, sklearn, scipy, matplotlib, yaml, safetensors; \
print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
}

if ((serving)); then
  # What ZeroGPU runs (Python 3.12, torch 2.11) on a real GPU: the serving path's tests (ZeroGPU's CUDA-tensor test and
  # the graphed training step run here only), then CPU vs CUDA. The app's packages come as carried wheels (device_setup).
  # The carried device_in/ (scripts/prepare_device_serving.sh): the checkpoints beside Lite0, 8 Testing images a class.
  if [[ -d device_in/checkpoints ]]; then cp -r device_in/checkpoints/* checkpoints/; fi
  export BRAIN_MRI_DATA=${BRAIN_MRI_DATA:-$( [[ -d device_in/brain-tumor-mri ]] && echo device_in/brain-tumor-mri || echo data/brain-tumor-mri)}
  if ((!quick)); then
    [[ -f data/duplicates.tsv ]] && { "$PY" -m ops.transfer relink || exit 3; }
    device_setup || exit 3
  fi
  imports
  # gradio does not travel (its ~50 MiB leave no room for the checkpoints): the app, MCP and Space-stack tests that
  # import it stay on CI; what the serving path needs runs here. Nor do the data set's Training images or Lite0's
  # ImageNet package: the training tests (imagenet, training_writes) and the default rule's, which scores validation
  # (default_rules), stay on CI too.
  timeout "${SERVING_TESTS_S:-180}" "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_serving_device.py tests/test_zerogpu.py tests/test_outline.py tests/test_multitask.py tests/test_batching.py \
    tests/test_overlap.py tests/test_graphs.py --deselect tests/test_zerogpu.py::test_the_real_spaces_wrapper_forks_pickles_and_is_asked_for_a_duration \
    -k "not imagenet and not training_writes and not default_rules" \
    2>&1 | tee "$OUT/serving_tests.log"
  status=${PIPESTATUS[0]}
  timeout 150 "$PY" scripts/cuda_check.py --data "$BRAIN_MRI_DATA" --n "${CHECK_N:-32}" --device "${CHECK_DEVICE:-cuda}" --out "$OUT/cuda_check.json" 2>&1 |
    tee "$OUT/cuda_check.log"
  check_status=${PIPESTATUS[0]}
  # The training call's CUDA graphs (train.graphs), measured first: eager against graphed steps of B0 and B7
  ((quick)) || timeout "${BENCH_S:-120}" "$PY" scripts/launch_bench.py --models efficientnet_b0 efficientnet_b7 \
    --out "$OUT/launch_bench.json" 2>&1 | tee "$OUT/launch_bench.log"
  ((status)) && exit "$status"
  exit "$check_status"
fi

if ((lease)); then
  # 1. the CUDA serving check alone on the GPU; 2. the lanes of train/sweeps/lease.yaml side by side;
  # 3. what ran (validation only) and packing. Each step is cut by its share of the time plan, so step 3 always runs.
  start=$SECONDS
  config=${LEASE_CONFIG:-train/sweeps/lease.yaml} # LEASE_CONFIG: a smaller plan (tests)
  read -r work limit check_s pack_s <<<"$("$PY" -c "import yaml; c = yaml.safe_load(open('$config')); print(c['out'], c['limit_s'], c['check_s'], c['pack_s'])")"
  lanes=${LEASE_LANES:-$("$PY" -c "import yaml; print(' '.join(yaml.safe_load(open('$config'))['lanes']))")} # LEASE_LANES: a few (tests)
  # the lanes' run folders, in the order of the lanes (retraining first: its checkpoints come back first)
  sweeps=$("$PY" -c "import yaml, pathlib; c = yaml.safe_load(open('$config'))
print(' '.join(dict.fromkeys(pathlib.Path(yaml.safe_load(open(s['config']))['out']).name for l in c['lanes'].values() for s in l)))")
  if ((quick)); then # on CPU: the same steps on 8 images a class, one short epoch, lanes one at a time, into device_out/
    data=${BRAIN_MRI_DATA:-../shared/data/brain-tumor-mri} work=${SWEEP_WORK:-runs/lease_quick} limit=${LEASE_LIMIT:-3600} max_jobs=1
    check=(--device cpu --n 4) settings=(--set limit_per_class=8 epochs=1 batch_size=4 max_train_batches=2)
  else
    data=data/brain-tumor-mri limit=${LEASE_LIMIT:-$limit} max_jobs=0 check=(--n 16) settings=()
    "$PY" -m ops.transfer relink || exit 3
    device_setup || exit 3
  fi
  rm -rf "$work" && mkdir -p "$work"
  imports
  check_status=0
  if [[ "${LEASE_CHECK:-1}" == 1 ]]; then # LEASE_CHECK=0: the serving call ran it (docs/gpu_lease.md, "Two calls")
    echo "== CUDA serving check (at most ${check_s} s)"
    timeout "$check_s" "$PY" scripts/cuda_check.py --data "$data" "${check[@]}" --out "$work/cuda_check.json" 2>&1 | tee "$work/cuda_check.log"
    check_status=${PIPESTATUS[0]}
  fi
  echo "== lanes: $lanes (until ${limit}s - ${pack_s}s; $((SECONDS - start)) s gone)"
  for lane in $lanes; do
    while ((max_jobs)) && (($(jobs -rp | wc -l) >= max_jobs)); do wait -n; done
    left=$((limit - pack_s - (SECONDS - start)))
    ((left > 20)) || { echo "lane $lane: not started, ${left} s left" && continue; }
    (
      timeout "$left" "$PY" -m train.sweep --lease "$config" --lane "$lane" --out "$work" --deadline $((left - 10)) \
        --data "$data" "${settings[@]}" \
        >"$work/lane_$lane.log" 2>&1
      echo "lane $lane: exit $? after $((SECONDS - start)) s"
    ) &
  done
  wait
  "$PY" -m ops.pack --report "$work" | tee "$work/report.txt"
  status=$check_status
  folders=() && for name in $sweeps; do [[ -d "$work/$name" ]] && folders+=("$work/$name"); done
  logs=("$work"/*.log "$work"/*.txt) && [[ -f "$work/cuda_check.json" ]] && logs+=("$work/cuda_check.json")
  if ! "$PY" -m ops.pack "${folders[@]}" --log "${logs[@]}" --out "$OUT"; then
    cp "$work"/*.log "$OUT/" 2>/dev/null
    status=3
  fi
  ls -l "$OUT"
  echo "lease: $((SECONDS - start)) s; CUDA check exit $check_status"
  exit "$status"
fi

if ((quick)); then
  config=train/sweeps/quick.yaml data=${BRAIN_MRI_DATA:-../shared/data/brain-tumor-mri} work=${SWEEP_WORK:-runs/sweep_quick} limit=300
else
  config=train/sweeps/full.yaml data=data/brain-tumor-mri work=runs/device_sweep limit=540
  ((long)) && config=train/sweeps/b0_long.yaml work=runs/device_b0_long limit=${SWEEP_LIMIT:-240} deadline=(--deadline $((${SWEEP_LIMIT:-240} - 40)))
  # The seed's CNN experiments get whatever the lease has left: SWEEP_LIMIT seconds (the sweep plans for 40 less).
  ((seed)) && config=train/sweeps/seed.yaml work=runs/device_seed limit=${SWEEP_LIMIT:-540} deadline=(--deadline $((${SWEEP_LIMIT:-540} - 40)))
  # The device reaches no registry: its python3 brings torch, timm and the rest (device_setup).
  "$PY" -m ops.transfer relink || exit 3
  device_setup || exit 3
fi
rm -rf "$work"
imports

timeout "$limit" "$PY" -m train.sweep --config "$config" --data "$data" --out "$work" "${deadline[@]}" 2>&1 | tee "$work.log"
status=${PIPESTATUS[0]}
if ! "$PY" -m ops.pack "$work" --log "$work.log" --out "$OUT"; then
  cp "$work.log" "$OUT/" # at least the log comes back
  status=3
fi
ls -l "$OUT"
exit "$status"
