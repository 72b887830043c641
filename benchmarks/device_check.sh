#!/usr/bin/env bash
# The one prepared GPU check, for a session that is lent an NVIDIA machine (the `device` tool):
#   1. the kernel tests compiled for CUDA (TRITON_INTERPRET=0: tests/test_kernels_*.py on CUDA tensors);
#   2. the kernel benchmark at the issue's shapes (tokens 1k/4k/16k x vocab 32k/152k, bf16) against eager
#      PyTorch, torch.compile and Liger-Kernel where installed.
# It needs only torch + triton + pluggy (the device image has them): asg is put on PYTHONPATH, not installed.
#   device run:  bash benchmarks/device_check.sh          (timeout_s 540; results come back from $OUT)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PKG=$(mktemp -d)
cp -r core/asg "$PKG/asg" && cp -r kernels "$PKG/asg/kernels"
export PYTHONPATH="$PKG:$PWD" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" \
  tests/test_kernels_triton.py tests/test_kernels_reference.py 2>&1 | tee "$OUT/kernel-tests.log"
timeout 330 "$PY" -m benchmarks kernels --device cuda --repeat 10 --out "$OUT/kernels-cuda.json" 2>&1 | tee "$OUT/bench.log"
