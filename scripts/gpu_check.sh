#!/bin/sh
# The GPU check in one line, from anywhere: the repository root, no install, a hard time limit.
#   scripts/gpu_check.sh                          -> gpu_check_cuda.md in the current directory
#   scripts/gpu_check.sh --out /some/dir/r.md     (any option of scripts/gpu_check.py)
# PYTHON picks the interpreter (default python3). Exit status: scripts/gpu_check.py's (124: killed by timeout).
out_default="$(pwd)/gpu_check_cuda.md"
cd "$(dirname "$0")/.." || exit 1
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" exec timeout 330 "${PYTHON:-python3}" scripts/gpu_check.py \
    --device cuda --out "$out_default" "$@"
