#!/usr/bin/env bash
# The CPU plan, resumable: each model of a sweep config in turn with --resume (a finished one is skipped,
# an interrupted one continues from its last epoch); the moment one finishes, its folder is shipped into
# checkpoints/ and committed with the tables, plots and heatmap check it changes, so that a session ending
# mid-plan loses at most the epoch in progress. Run it in the background, from a worktree, shipping into the main checkout:
#
#   mkdir -p ../runs && SHIP_TO=../main nohup nice bash scripts/cpu_plan.sh > ../runs/cpu_plan.log 2>&1 &
#   bash scripts/cpu_plan.sh train/sweeps/seed.yaml --whole-schedules --set amp=bf16   # the seed's simple CNNs
#
# Arguments: the sweep config (train/sweeps/cpu.yaml by default), then options for train.sweep.
# OUT: the runs folder, instead of the config's out; SHIP_TO: the checkout that receives and commits (this one);
# MODELS: some of the config's models, in this order (all of them, in the config's order, by default).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
config=${1:-train/sweeps/cpu.yaml}
shift $(($# > 0 ? 1 : 0))
out=${OUT:-$("$PY" -c "import yaml; print(yaml.safe_load(open('$config'))['out'])")}
ship_to=${SHIP_TO:-.}
models=${MODELS:-$("$PY" -c "import yaml; print(' '.join(m['model'] for m in yaml.safe_load(open('$config'))['models']))")}
for model in $models; do
  "$PY" -m train.sweep --config "$config" --out "$out" --resume --only "$model" "$@" || { echo "$model failed; stopping"; exit 1; }
  run=$out/$model
  dest=$ship_to/checkpoints/$model
  # Ship a finished run once: not again when checkpoints/ already holds these weights (later edits there stay).
  if [[ -f $run/metrics.json && ! -d $run/resume ]] && ! cmp -s "$run/model.safetensors" "$dest/model.safetensors"; then
    rm -rf "$dest" && cp -r "$run" "$dest"
    # The heatmap check's entry (tests/test_cam_sanity.py reruns some on all of Testing), then the generated tables
    # and plots (tests/test_docs.py), all in the ship's commit.
    generated=(README.md docs results)
    (cd "$ship_to" && "$PY" -m reports.cam_sanity --models "$model" --update && "$PY" -m reports.results --docs && "$PY" -m reports.plots) ||
      echo "could not regenerate the tables of $ship_to"
    git -C "$ship_to" add "checkpoints/$model" "${generated[@]}" &&
      git -C "$ship_to" commit -q -m "Ship $model from the CPU plan ($config)" -- "checkpoints/$model" "${generated[@]}" &&
      echo "shipped and committed checkpoints/$model"
  fi
done
