#!/usr/bin/env bash
# Training on a SLURM cluster: bash scripts/slurm_train.sh PARTITION JOB_NAME NUM_GPUS --cfg_file ... [train.py args]
exec bash "$(dirname "${BASH_SOURCE[0]}")/_srun.sh" train.py dist "$@"
