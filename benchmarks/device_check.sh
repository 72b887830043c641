#!/usr/bin/env bash
# The one prepared GPU check, for a session that is lent an NVIDIA machine (the `device` tool):
#   1. the kernel tests compiled for CUDA (TRITON_INTERPRET=0: tests/test_kernels_*.py on CUDA tensors);
#   2. the kernel benchmark at the issue's shapes (tokens 1k/4k/16k x vocab 32k/152k, bf16) against eager
#      PyTorch, torch.compile and Liger-Kernel where installed;
#   3. the GPU paths: the shipped `tiny` evaluated and trained for a few steps on cuda (float32, bfloat16)
#      against the machine's CPU (python -m benchmarks gpu_paths);
#   4. the launch-configuration sweep of the token_stats / token_kl forwards at 16k x 152k
#      (python -m benchmarks kernel_configs).
# Each step has its own time limit and writes its result as it goes, so one that fails or is cut off costs
# only itself. asg is put on PYTHONPATH, not installed. The device image has torch, triton, pluggy, attrs,
# accelerate and safetensors; what it lacks (diffusers, and the transformers/peft versions we test with)
# travels as wheels in .whl/ (ignored by git; see benchmarks/README.md for the download command):
#   device run:  bash benchmarks/device_check.sh     (carry [".whl"], timeout_s 590; results come back from $OUT)
# ASG_DEVICE_STEPS picks steps by name (default "tests bench paths configs"), e.g. ASG_DEVICE_STEPS="tests bench".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PKG=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$PKG" .whl/*.whl \
    2>&1 | tail -3
fi
cp -r core/asg "$PKG/asg" && cp -r kernels "$PKG/asg/kernels"
export PYTHONPATH="$PKG:$PWD" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton, transformers, diffusers, peft; print('torch', torch.__version__, 'triton', triton.__version__,
  'transformers', transformers.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
STEPS=" ${ASG_DEVICE_STEPS:-tests bench paths configs} "
if [[ $STEPS == *" tests "* ]]; then
  echo "== kernel tests on cuda ($(date -u +%T))"
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" -rfE \
    tests/test_kernels_triton.py tests/test_kernels_reference.py > "$OUT/kernel-tests.log" 2>&1
  echo "kernel tests: exit $?"; tail -15 "$OUT/kernel-tests.log"
fi
if [[ $STEPS == *" bench "* ]]; then
  echo "== kernel benchmark ($(date -u +%T))"
  timeout 240 "$PY" -m benchmarks.kernels --device cuda --repeat 10 --out "$OUT/kernels-cuda.json" > "$OUT/bench.log" 2>&1
  echo "kernel benchmark: exit $?"; tail -45 "$OUT/bench.log"
fi
if [[ $STEPS == *" paths "* ]]; then
  echo "== GPU paths ($(date -u +%T))"
  timeout 170 "$PY" -m benchmarks.gpu_paths --configs cuda:float32 cuda:bfloat16 cpu:float32 --steps 10 --train-timeout 80 --out "$OUT/gpu-paths-cuda.json" > "$OUT/gpu-paths.log" 2>&1
  echo "gpu paths: exit $?"; grep -v "it/s\]" "$OUT/gpu-paths.log" | tail -25
fi
if [[ $STEPS == *" configs "* ]]; then
  echo "== launch configurations ($(date -u +%T))"
  timeout 150 "$PY" -m benchmarks.kernel_configs --repeat 25 --out "$OUT/kernel-configs-cuda.json" > "$OUT/configs.log" 2>&1
  echo "kernel configs: exit $?"; grep -v '^{' "$OUT/configs.log" | tail -32
fi
echo "== done ($(date -u +%T))"
