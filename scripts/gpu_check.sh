#!/usr/bin/env bash
# The whole GPU story in one run of under 8 minutes; results go to $OUT (or ./gpu-results).
#
# 1. The requires_cuda tests (tests/test_cuda.py): the loop in float16 with batched attention; both
#    attention forms against each other; a pass under torch.cuda.set_sync_debug_mode("error") up to
#    its one read; CUDA graphs captured at warm-up and choosing what the eager passes choose; a real
#    out-of-memory error in a pass (run in halves) and in a slot's opening; a real device-side
#    assert in the server (internal_error, exit 70); the real server on CUDA answering 64 requests
#    from 16 clients, words on a quarter of them.
# 2. scripts/gpu_bench.py on large-v3- and turbo-shaped random weights, a fixed 32-token decode,
#    batch 1 and 32: openai-whisper's decoder as it runs itself beside the loop's passes, eager and
#    replayed from CUDA graphs; then beam 5.
#
# On the lent machine (its python3 has CUDA torch; the project's other wheels travel in .whl; the
# tests need the model in models/):
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name(0))' | tee "$out/device.txt"
export PYTHONUNBUFFERED=1
# Each step's exit status is kept, neither hidden nor fatal at once: a failing CUDA test still
# leaves the benchmark to run and print its figures, and then the script exits non-zero.
status=0
step() {  # step LOG COMMAND...: the command's output to the terminal and to LOG
    local log=$1 rc=0
    shift
    "$@" 2>&1 | tee "$log" || rc=$?  # pipefail: the command's status (timeout's 124), not tee's
    if [ "$rc" -ne 0 ]; then
        echo "gpu_check: FAILED with exit $rc: $*" >&2
        [ "$status" -ne 0 ] || status=$rc
    fi
}
# 1. the CUDA tests (the model comes from models/; without it they fail, which is the point;
#    none collected is exit 5, a failure too)
step "$out/cuda-tests.txt" timeout 270 python3 -m pytest -q -m requires_cuda -p no:cacheprovider tests
# 2. the decoder on real model shapes, random weights
step "$out/gpu-bench.log" timeout 150 python3 scripts/gpu_bench.py --model large-v3 turbo --batches 1 32 \
    --tokens 32 --out "$out/gpu-bench.md"
step "$out/gpu-bench-beam5.log" timeout 60 python3 scripts/gpu_bench.py --model large-v3 --batches 1 8 \
    --tokens 32 --beam 5 --out "$out/gpu-bench-beam5.md"
if [ "$status" -ne 0 ]; then
    echo "gpu_check: a step failed (first failure's exit status: $status)" >&2
else
    echo "gpu_check: every step passed"
fi
exit "$status"
