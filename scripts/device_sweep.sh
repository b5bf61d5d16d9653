#!/usr/bin/env bash
# The one command of the GPU sweep (README, section "sweep"). On the device machine, from the repo root,
# after scripts/prepare_device_data.sh filled data/ here and the call carried it:
#   bash scripts/device_sweep.sh            # every registry model (train/sweeps/full.yaml) -> at most 8 files in $OUT
#   bash scripts/device_sweep.sh --quick    # the same steps on CPU on a few images (train/sweeps/quick.yaml), into device_out/
# Exit status: the sweep's (0 all trained, 1 some failed, 124 cut by the time limit), or packing's if that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
OUT=${OUT:-device_out}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
mkdir -p "$OUT" runs

if ((quick)); then
  config=train/sweeps/quick.yaml data=${BRAIN_MRI_DATA:-../shared/data/brain-tumor-mri} work=${SWEEP_WORK:-runs/sweep_quick} limit=300
else
  config=train/sweeps/full.yaml data=data/brain-tumor-mri work=runs/device_sweep limit=540
  # The device reaches no registry: its python3 brings torch and the rest; the carried wheel pins timm.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site data/wheels/*.whl && export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
rm -rf "$work"
"$PY" -c "import torch, timm, accelerate, sklearn, scipy, matplotlib, yaml, safetensors; \
print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

timeout "$limit" "$PY" -m train.sweep --config "$config" --data "$data" --out "$work" 2>&1 | tee "$work.log"
status=${PIPESTATUS[0]}
if ! "$PY" -m train.pack "$work" --log "$work.log" --out "$OUT"; then
  cp "$work.log" "$OUT/" # at least the log comes back
  status=3
fi
ls -l "$OUT"
exit "$status"
