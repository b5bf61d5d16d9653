#!/usr/bin/env bash
# Put what the GPU sweep needs into data/ (git-ignored), the one folder the device call carries:
#   data/brain-tumor-mri/   a copy of the data set's Training and Testing folders (52 MB)
#   data/wheels/            the timm wheel pinned in requirements.txt (the device reaches no package registry;
#                           its python3 has torch, torchvision, accelerate, scikit-learn, scipy, matplotlib, pyyaml)
# then check that the working tree plus data/ fits the device's 64 MiB transfer limit.
#
#   bash scripts/prepare_device_data.sh [DATA_FOLDER]     # default ../shared/data/brain-tumor-mri
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/data/brain-tumor-mri}
PY=${PYTHON:-python3}

rm -rf data/brain-tumor-mri data/wheels
mkdir -p data/brain-tumor-mri data/wheels
cp -r "$src/Training" "$src/Testing" data/brain-tumor-mri/
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d data/wheels "$(grep -E '^timm==' requirements.txt)"

# What travels: tracked and untracked-not-ignored files, plus the carried data/.
"$PY" - <<'PYEOF'
import os, subprocess, sys
limit = 64 * 2**20
files = [f for f in subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                   capture_output=True, check=True).stdout.decode().split("\0") if f and os.path.isfile(f)]
tree = sum(os.path.getsize(f) for f in files)
data = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk("data") for f in names)
print(f"travels: working tree {tree / 2**20:.1f} MiB + data/ {data / 2**20:.1f} MiB = {(tree + data) / 2**20:.1f} MiB (limit 64 MiB)")
if tree + data > limit:
    print("too large for the device: move these aside (or make them ignored) before the call:", file=sys.stderr)
    for f in sorted(files, key=os.path.getsize, reverse=True)[:10]:
        print(f"  {os.path.getsize(f) / 2**20:6.1f} MiB  {f}", file=sys.stderr)
    sys.exit(1)
PYEOF
