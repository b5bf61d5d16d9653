#!/usr/bin/env bash
# The CPU plan, resumable (train/sweeps/cpu.yaml): each model in turn with --resume (a finished one is
# skipped, an interrupted one continues from its last epoch); the moment one finishes, its folder is
# shipped into checkpoints/ and committed (only that folder), so that a session ending mid-plan loses
# at most the epoch in progress. Run it in the background:
#
#   mkdir -p ../brain-mri-runs && nohup nice bash scripts/cpu_plan.sh > ../brain-mri-runs/cpu_plan.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
config=train/sweeps/cpu.yaml
models=$("$PY" -c "import yaml; print(' '.join(m['model'] for m in yaml.safe_load(open('$config'))['models']))")
for model in $models; do
  "$PY" -m train.sweep --config "$config" --resume --only "$model" || { echo "$model failed; stopping"; exit 1; }
  run=$("$PY" -c "import yaml; print(yaml.safe_load(open('$config'))['out'])")/$model
  # Ship a finished run once: not again when checkpoints/ already holds these weights (later edits there stay).
  if [[ -f $run/metrics.json && ! -d $run/resume ]] && ! cmp -s "$run/model.safetensors" "checkpoints/$model/model.safetensors"; then
    rm -rf "checkpoints/$model" && cp -r "$run" "checkpoints/$model"
    git add "checkpoints/$model" && git commit -q -m "Ship $model from the CPU plan (train/sweeps/cpu.yaml)" -- "checkpoints/$model" &&
      echo "shipped and committed checkpoints/$model"
  fi
done
