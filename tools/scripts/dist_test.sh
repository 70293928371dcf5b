#!/usr/bin/env bash
# Multi-process evaluation on one machine: bash scripts/dist_test.sh NUM_PROCS --cfg_file ... [test.py args]
exec bash "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh" test.py "$@"
