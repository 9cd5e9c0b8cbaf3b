#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run of under 8 minutes: the requires_cuda tests (the
# engine in float16 on the GPU, batched beam search there), then the decoder benchmark on
# large-v3- and turbo-shaped random weights with a fixed 32-token decode, batch 1 and 32,
# openai-whisper's decoder beside ours. Results go to $OUT (or ./gpu-results).
#
# On the lent machine (its python3 has CUDA torch; the project's other wheels travel in .whl):
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name(0))' | tee "$out/device.txt"
export PYTHONUNBUFFERED=1
# 1. the CUDA tests (the model comes from models/; without it they fail, which is the point)
timeout 240 python3 -m pytest -q -m requires_cuda -p no:cacheprovider tests 2>&1 | tee "$out/cuda-tests.txt" || true
# 2. the decoder on real model shapes, random weights
timeout 300 python3 scripts/gpu_bench.py --model large-v3 turbo --batches 1 32 --tokens 32 \
    --out "$out/gpu-bench.md" 2>&1 | tee "$out/gpu-bench.log"
timeout 120 python3 scripts/gpu_bench.py --model large-v3 --batches 1 8 --tokens 32 --beam 5 \
    --out "$out/gpu-bench-beam5.md" 2>&1 | tee "$out/gpu-bench-beam5.log"
