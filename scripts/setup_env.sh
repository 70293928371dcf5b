#!/usr/bin/env bash
# Creates (or reuses) the repo-local venv .venv and installs pcdet with the pinned CPU requirements.
# Idempotent: a second call only checks that everything is in place.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.pcdet-installed
want="$(cat requirements.txt requirements-dev.txt requirements-nuscenes*.txt setup.py | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # pip -q prints nothing for the minute or two this takes: say what is happening.
  echo "setup_env.sh: installing the pinned requirements into $repo/.venv (1-2 minutes on a first run) ..." >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  # nuScenes: the devkit's imports, then the devkit without its numpy<2 / Shapely~=2.0.3 pins (docs/INSTALL.md)
  .venv/bin/python -m pip install -q -r requirements-nuscenes.txt
  .venv/bin/python -m pip install -q --no-deps -r requirements-nuscenes-devkit.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
  echo "setup_env.sh: done; activate with: source $repo/.venv/bin/activate" >&2
else
  echo "setup_env.sh: $repo/.venv is up to date" >&2
fi
