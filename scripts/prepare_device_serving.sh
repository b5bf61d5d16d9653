#!/usr/bin/env bash
# Get device_in/ ready for the lease's first call, the serving check (docs/gpu_lease.md, "Two calls"):
#   device_in/checkpoints/       the segmenter (multitask_lite0) and simple_cnn_7, which the serving tests and the CUDA
#                                check read beside the default's classifier (Lite0 travels in the tree: ops.transfer stash keeps it)
#   device_in/brain-tumor-mri/   8 Testing images a class (the CUDA check's images), not the data set
#   device_in/wheels/            what the device's image lacks or has at another version: segmentation-models-pytorch,
#                                grad-cam and ttach, spaces and pydantic (no Lite's ImageNet weights: every shipped
#                                Lite is retrained, so no lease lane needs them); device_in/ stays on the device between
#                                calls while it is warm (30 s)
# The device's own timm serves (the pinned 1.0 line: device_sweep.sh's device_setup checks). gradio (~50 MiB with
# its needs) does not fit beside the checkpoints, so the tests that import it are left out there.
# Then it checks that the tree (checkpoints/ stashed but Lite0) plus device_in/ stays under ops.transfer's target.
#
#   bash scripts/prepare_device_serving.sh [DATA_FOLDER]     # default ../shared/data/brain-tumor-mri
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/data/brain-tumor-mri}
PY=${PYTHON:-python3}
PER_CLASS=8

rm -rf device_in && mkdir -p device_in/checkpoints device_in/wheels
for model in multitask_lite0 simple_cnn_7; do # as committed (the stash takes them out of the tree)
  git archive HEAD "checkpoints/$model" | tar -x -C device_in
done
for folder in "$src"/Testing/*/; do
  name=$(basename "$folder")
  mkdir -p "device_in/brain-tumor-mri/Testing/$name"
  find "$folder" -maxdepth 1 -type f | sort | head -n "$PER_CLASS" | xargs -I{} cp {} "device_in/brain-tumor-mri/Testing/$name/"
done
# wheels for Python 3.12 on x86-64 (pydantic-core is compiled); grad-cam and ttach come as source only, built here
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d device_in/wheels \
  segmentation-models-pytorch==0.6.0 spaces==0.51.3 \
  pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
"$PY" -m pip wheel -q --no-deps -w device_in/wheels grad-cam==1.5.7 ttach==0.0.3
"$PY" -m ops.transfer stash
"$PY" -m ops.transfer check --carried device_in
