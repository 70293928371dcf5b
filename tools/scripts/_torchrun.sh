#!/usr/bin/env bash
# Shared body of dist_train.sh and dist_test.sh: bash _torchrun.sh TOOL NUM_PROCS [TOOL args]
# One process per GPU with NCCL when CUDA is available, otherwise NUM_PROCS CPU processes with gloo.
# Multi-node: call torchrun yourself with its --nnodes/--node_rank/--rdzv_* flags and --launcher pytorch.
set -euo pipefail
TOOL=$1
shift
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/dist_${TOOL%.py}.sh NUM_PROCS --cfg_file CFG [$TOOL args]" >&2
    exit 2
fi
NGPUS=$1
shift
PYTHON=${PYTHON:-python}
tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# PORT may be given; otherwise ask the OS for a free one (another job may hold any fixed port).
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')}

exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NGPUS" --rdzv_endpoint="localhost:$PORT" \
    "$tools_dir/$TOOL" --launcher pytorch "$@"
