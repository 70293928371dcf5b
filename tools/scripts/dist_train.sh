#!/usr/bin/env bash
# Multi-process training on one machine: bash scripts/dist_train.sh NUM_PROCS --cfg_file ... [train.py args]
exec bash "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh" train.py "$@"
