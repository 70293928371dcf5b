#!/usr/bin/env bash
# Evaluation on NUM_GPUS SLURM tasks: bash scripts/slurm_test_mgpu.sh PARTITION JOB_NAME NUM_GPUS --cfg_file ... [test.py args]
exec bash "$(dirname "${BASH_SOURCE[0]}")/_srun.sh" test.py dist "$@"
