#!/usr/bin/env bash
# Wheels of molrecon's dependencies that the lent GPU machine's image lacks (it has torch, numpy, scipy, h5py,
# matplotlib, scikit-image, pyyaml, safetensors, tensorboard, pandas, scikit-learn, ... but reaches no package
# index), at the versions of this checkout's .venv, for the device's Python (default 3.12), into .gpu-wheels/
# (ignored by git; the device tool carries it). Then, on the device: bash benchmarks/gpu/run.sh
#   bash tools/gpu_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${1:-3.12}"
ABI="cp${PYVER/./}"
PIP=".venv/bin/python -m pip"
[ -x .venv/bin/python ] || { echo "no .venv here: run 'make install' first" >&2; exit 2; }
PACKAGES="sigpy pywavelets nilearn nibabel importlib-resources ismrmrd xsdata pydicom torchkbnufft"
rm -rf .gpu-wheels.tmp && mkdir .gpu-wheels.tmp
for p in $PACKAGES; do
  v=$($PIP show "$p" 2>/dev/null | awk '/^Version:/{print $2}')
  [ -n "$v" ] || { echo "$p is not installed in .venv" >&2; exit 2; }
  get() { $PIP download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
            --abi "$ABI" --abi none --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .gpu-wheels.tmp "$1" 2>/dev/null; }
  # a compiled package may have no wheel of this version for the device's Python: take its newest one
  get "$p==$v" || { get "$p" && echo "note: $p $v has no wheel for Python $PYVER here; took the newest one"; } \
    || { echo "no wheel of $p for Python $PYVER" >&2; exit 2; }
done
rm -rf .gpu-wheels && mv .gpu-wheels.tmp .gpu-wheels
ls .gpu-wheels
du -sh .gpu-wheels
