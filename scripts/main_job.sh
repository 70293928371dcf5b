#!/usr/bin/env bash
# The README's first command: set up the venv, then run the main job on synthetic KITTI-format data
# (generate data -> train teacher -> 4x student -> 4x + PointDistiller / + FitNet -> evaluate -> table).
# Extra arguments go to tools/main_job.py (e.g. --frames 800, --fresh).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup_env.sh
cd tools
exec ../.venv/bin/python main_job.py "$@"
