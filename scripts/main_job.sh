#!/usr/bin/env bash
# The README's first command: set up the venv, then run the main job on synthetic KITTI-format data
# (generate data -> evaluate the committed teacher -> 4x student and 4x + PointDistiller side by side -> table on the
# held-out test split). Extra arguments go to tools/main_job.py (e.g. --train_teacher, --epochs 4, --fresh).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup_env.sh
cd tools
exec ../.venv/bin/python main_job.py "$@"
