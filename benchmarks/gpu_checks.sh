#!/bin/bash
# The GPU checks of the product, run on a lent CUDA machine (docs/results.md, "Session 6"):
#   1. pytest -m gpu (CUDA against CPU for a tiny and the shipped model; training under bf16 and fp16 autocast);
#   2. myops segment end to end on CUDA, and on that machine's CPU for comparison (benchmarks/bench_segment.py);
#   3. the default test suite on that machine's Python, torch and numpy (another platform than CI's).
# The machine's image has no SimpleITK: SITK_TARBALL points at the unpacked SimpleITK wheel as .tar.xz (made
# where pip works; benchmarks/gpu_env.sh unpacks it). Results go to $OUT.
# It lacks slicerio and pynrrd too (declared dependencies): WHEEL_DIR holds their wheels.
# Usage: SITK_TARBALL=.whl/simpleitk-....tar.xz WHEEL_DIR=.whl OUT=$OUT bash benchmarks/gpu_checks.sh
set -u
OUT=${OUT:-out/gpu_checks}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import sys, torch, numpy, SimpleITK; print('python', sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__, 'SimpleITK', SimpleITK.__version__)"
  echo "cpus $(nproc)"
} 2>&1 | tee "$OUT/machine.txt"
echo "== [$(elapsed) s] 1. pytest -m gpu"
timeout 240 $PY -m pytest -m gpu -p no:cacheprovider -q -rs Testing/test_gpu.py 2>&1 | tail -n 15 | tee "$OUT/pytest_gpu.txt"
echo "== [$(elapsed) s] 2. end to end, CUDA then CPU"
timeout 150 $PY benchmarks/bench_segment.py --device cuda --repeats 5 --json "$OUT/bench_segment_cuda.json" 2>&1 | tail -n 40
timeout 120 $PY benchmarks/bench_segment.py --device cpu --repeats 3 --no-scaling --json "$OUT/bench_segment_cpu.json" 2>&1 | tail -n 12
echo "== [$(elapsed) s] 3. default test suite"
timeout 200 $PY -m pytest -p no:cacheprovider -q -n 8 Testing 2>&1 | tail -n 15 | tee "$OUT/pytest_default.txt"
echo "== [$(elapsed) s] done"
