#!/usr/bin/env bash
# One-GPU check of the GPT-2 124M training path (under 8 minutes on one H100/H200): tokens/s,
# MFU and peak memory with the math and the flash attention kernel (plain fused AdamW), then
# every rotation scope with the math kernel (the paper's setting, App. A.4): the optimizer
# step's share of the training step and its cost against plain AdamW; last, the rotated
# update's bf16 and fp32 error against fp64. Paper batch: 40 micro-batches x 12 x 1,024.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --toy      # CPU, toy size (what the tests run)
# Extra arguments go to benchmarks/train_throughput.py (e.g. --steps 3).
#
# The table is also written as JSON for `adamrot preflight` (its MFU per attention kernel and
# each scope's slowdown replace the assumed ones): runs/gpu_check.json, or $GPU_CHECK_JSON.
# The --toy run writes nothing unless GPU_CHECK_JSON is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
if [ "${1:-}" = "--toy" ]; then
    shift
    "$PY" -m benchmarks.train_throughput --model tiny --device cpu --batch 2 --accum 2 \
        --steps 1 --block-size 32 "$@" | tee "$LOG"
    OUT=${GPU_CHECK_JSON:-}
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -m benchmarks.train_throughput --model 124m --device cuda --batch 12 --accum 40 \
        --steps 2 --compile --block-size 768 "$@" | tee "$LOG"
    OUT=${GPU_CHECK_JSON:-runs/gpu_check.json}
fi
if [ -n "$OUT" ]; then
    "$PY" -m adamrot.preflight.cost "$LOG" "$OUT"
fi
