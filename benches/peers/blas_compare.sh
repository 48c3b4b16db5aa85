#!/usr/bin/env bash
# Modula's skinny/multi-row products vs numpy's OpenBLAS, same machine, same run.
# Usage: bash benches/peers/blas_compare.sh   (creates target/peers-venv with numpy)
# OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset for the numpy run only (they slow a current
# OpenBLAS on this machine kind); threadpoolctl reports which kernel it then runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/peers-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q numpy threadpoolctl
fi
echo "== numpy (OpenBLAS)"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$venv/bin/python" benches/peers/blas_linear.py
echo "== modula (criterion medians)"
for t in 1 2; do
  echo "-- RAYON_NUM_THREADS=$t"
  RAYON_NUM_THREADS=$t cargo bench -q -p modula-benches --bench kernels_linear -- \
    --output-format bencher 'linear_1024|gemv_4096x4096_f32' 2>&1 | grep '^test'
done
