#!/usr/bin/env bash
# Evaluation in one SLURM task (one GPU): bash scripts/slurm_test_single.sh PARTITION --cfg_file ... [test.py args]
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/slurm_test_single.sh PARTITION --cfg_file CFG [test.py args]" >&2
    exit 2
fi
PARTITION=$1
shift
exec bash "$(dirname "${BASH_SOURCE[0]}")/_srun.sh" test.py single "$PARTITION" "${JOB_NAME:-pcdet_test}" 1 "$@"
