#!/usr/bin/env bash
# Shared body of the slurm_*.sh scripts: bash _srun.sh TOOL LAUNCH PARTITION JOB_NAME NUM_TASKS [TOOL args]
# One srun task per GPU (NUM_TASKS in all, at most GPUS_PER_NODE a node); LAUNCH=dist adds --launcher slurm so the
# tasks form one process group (rank and world size come from SLURM_PROCID / SLURM_NTASKS, see dist_launch.py).
set -euo pipefail
TOOL=$1
LAUNCH=$2
shift 2
if [ $# -lt 3 ]; then
    echo "usage: bash scripts/slurm_*.sh PARTITION JOB_NAME NUM_GPUS --cfg_file CFG [$TOOL args]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
NUM_TASKS=$3
shift 3
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( NUM_TASKS < 8 ? NUM_TASKS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
PYTHON=${PYTHON:-python}
tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
launcher=()
if [ "$LAUNCH" = dist ]; then
    # A port per job, so that two jobs on one node do not collide (train.py/test.py read it as --tcp_port).
    launcher=(--launcher slurm --tcp_port "${PORT:-$(( 20000 + RANDOM % 20000 ))}")
fi
# SRUN_ARGS is a list of extra srun options (e.g. "--quotatype=auto"): split on purpose.
# shellcheck disable=SC2086
exec srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$NUM_TASKS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
    "$PYTHON" -u "$tools_dir/$TOOL" "${launcher[@]}" "$@"
