#!/usr/bin/env bash
# The README's test command: set up the venv, lint, run the test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup_env.sh
# Idle BLAS/OpenMP threads sleep instead of spinning (tests start many processes on few cores; see tools/_init_path.py).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest --timeout=600 --durations=10 "$@"
