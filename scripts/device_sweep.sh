#!/usr/bin/env bash
# The one command of the GPU sweep (README, section "sweep"). On the device machine, from the repo root,
# after scripts/prepare_device_data.sh filled data/ here and the call carried it:
#   bash scripts/device_sweep.sh            # every registry model (train/sweeps/full.yaml) -> at most 8 files in $OUT
#   SWEEP_LIMIT=300 bash scripts/device_sweep.sh --seed   # the seed's simple-CNN experiments (train/sweeps/seed.yaml) in 300 s
#   bash scripts/device_sweep.sh --long     # a second call if the lease has time left: B0 for 60 epochs (train/sweeps/b0_long.yaml)
#   bash scripts/device_sweep.sh --quick    # the same steps on CPU on a few images (train/sweeps/quick.yaml), into device_out/
# Exit status: the sweep's (0 all trained, 1 some failed, 124 cut by the time limit), or packing's if that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
quick=0 long=0 seed=0 deadline=()
[[ "${1:-}" == "--quick" ]] && quick=1
[[ "${1:-}" == "--long" ]] && long=1
[[ "${1:-}" == "--seed" ]] && seed=1
OUT=${OUT:-device_out}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
mkdir -p "$OUT" runs

if ((quick)); then
  config=train/sweeps/quick.yaml data=${BRAIN_MRI_DATA:-../shared/data/brain-tumor-mri} work=${SWEEP_WORK:-runs/sweep_quick} limit=300
else
  config=train/sweeps/full.yaml data=data/brain-tumor-mri work=runs/device_sweep limit=540
  ((long)) && config=train/sweeps/b0_long.yaml work=runs/device_b0_long limit=${SWEEP_LIMIT:-240} deadline=(--deadline $((${SWEEP_LIMIT:-240} - 40)))
  # The seed's CNN experiments get whatever the lease has left: SWEEP_LIMIT seconds (the sweep plans for 40 less).
  ((seed)) && config=train/sweeps/seed.yaml work=runs/device_seed limit=${SWEEP_LIMIT:-540} deadline=(--deadline $((${SWEEP_LIMIT:-540} - 40)))
  # The device reaches no registry: its python3 brings torch, timm and the rest. Its own timm is used
  # when it is the pinned 1.0 line; otherwise the carried wheel (scripts/prepare_device_data.sh).
  pinned=$(grep -E '^timm==' requirements.txt | cut -d= -f3)
  own=$("$PY" -c "import timm; print(timm.__version__)" 2>/dev/null || echo none)
  if [[ "$own" == "${pinned%.*}".* ]]; then
    echo "timm: the device's own $own (pinned $pinned)"
  else
    echo "timm: the device has $own; installing the carried wheel $pinned"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site data/wheels/*.whl && export PYTHONPATH=/tmp/site
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
rm -rf "$work"
"$PY" -c "import torch, timm, accelerate, sklearn, scipy, matplotlib, yaml, safetensors; \
print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

timeout "$limit" "$PY" -m train.sweep --config "$config" --data "$data" --out "$work" "${deadline[@]}" 2>&1 | tee "$work.log"
status=${PIPESTATUS[0]}
if ! "$PY" -m train.pack "$work" --log "$work.log" --out "$OUT"; then
  cp "$work.log" "$OUT/" # at least the log comes back
  status=3
fi
ls -l "$OUT"
exit "$status"
