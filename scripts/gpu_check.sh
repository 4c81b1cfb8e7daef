#!/usr/bin/env bash
# The one prepared GPU check (issue 6): run it on a machine with an NVIDIA GPU and CuPy.
#   bash scripts/gpu_check.sh            # writes everything under ${OUT:-gpu-out}
# Installs fastlora without touching dependencies, runs the gpu-marked tests, then the
# benchmarks on cupy and numba (device name and GEMM rates are in the JSON).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
{
  nvidia-smi || true
  python -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')"
  pip install --no-deps --no-build-isolation -e . ./plugins/dora ./plugins/vera
} > "$OUT/setup.txt" 2>&1
python -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest -m gpu exit: $?" >> "$OUT/pytest_gpu.txt"
timeout 420 fastlora bench --backend cupy,numba --config pop-1024 --config gpu-8192 --config points \
  --repeat 3 --no-baselines --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
echo "bench exit: $?" >> "$OUT/bench.txt"
tail -n 5 "$OUT/pytest_gpu.txt" "$OUT/bench.txt"
