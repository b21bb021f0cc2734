#!/usr/bin/env bash
# The GPU check in one command (docs/performance.md, "GPU check"): on one CUDA GPU, within a wall-clock budget
# (default 450 s), with synthetic data only, it runs the GPU-marked tests, the training benchmark at the paper's
# configuration (112x112x80, batch 2+2, V-Net 16) in fp32, fp32 channels_last, bf16 and fp16, inference per LA-sized
# volume, and torch.compile if time is left; it writes one JSON (default runs/gpu_check/gpu_check.json) and prints a
# summary. From a fresh checkout, after the README's install command:
#
#     bash scripts/gpu_check.sh [--out FILE] [--budget-s 450] [--no-tests]
#
# Python: $PYTHON, else .venv/bin/python when present, else python3.
# Exit status: 0 passed; 1 a step failed or ran out of time; 2 not installed; 3 passed but some steps skipped for
# lack of budget; 77 no GPU (nothing was run).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY="$(command -v python3 || command -v python || true)"; fi
fi
if [ -z "$PY" ]; then
    echo "no Python found: install first (README, Quickstart)" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.gpu_check "$@"
