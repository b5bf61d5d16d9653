#!/usr/bin/env bash
# Get the working tree ready for the GPU sweep's one device call (README, section "sweep"):
#   data/brain-tumor-mri/   a copy of the data set's Training and Testing folders (50 MiB)
#   data/wheels/            the timm wheel pinned in requirements.txt, used there only when the
#                           device's own timm is not the pinned 1.0 line (scripts/device_sweep.sh)
#   checkpoints/            taken out of the working tree (the sweep trains from scratch and never
#                           reads them); refused while checkpoints/ has uncommitted changes
# then check that what travels (working tree + data/) stays 6 MiB under the 64 MiB limit.
# After the call: python -m train.transfer restore   (git checkout -- checkpoints)
#
#   bash scripts/prepare_device_data.sh [DATA_FOLDER]     # default ../shared/data/brain-tumor-mri
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/data/brain-tumor-mri}
PY=${PYTHON:-python3}

"$PY" -m train.transfer stash # first: it refuses before anything is copied when checkpoints/ has changes
rm -rf data/brain-tumor-mri data/wheels
mkdir -p data/brain-tumor-mri data/wheels
cp -r "$src/Training" "$src/Testing" data/brain-tumor-mri/
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d data/wheels "$(grep -E '^timm==' requirements.txt)"
"$PY" -m train.transfer check
