#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one command, from any directory:
#
#     bash scripts/gpu_check.sh [--no-throughput] [--dry-run]
#
# Runs benchmarks/gpu_check.py, which prints each check's name and PASS or FAIL and exits
# non-zero when any fails. Without CUDA it prints "no CUDA GPU: skipped" and exits 0;
# --dry-run runs the CPU-safe checks (the async checkpoint snapshot and stall) on the CPU
# with tiny sizes and lists the others as skipped.
# Meant to finish in under 8 minutes on one GPU. PYTHON picks the interpreter (default python).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m benchmarks.gpu_check "$@"
