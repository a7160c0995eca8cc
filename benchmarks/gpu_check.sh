#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) in one command, on one GPU, in at most 9 minutes:
# CUDA-marked tests, a PreAct ResNet-18 PGD-10 epoch (examples/s, MFU), PGD-AT vs FairAT.
# Writes benchmarks/results/gpu_check.json; extra arguments go to the script.
#   benchmarks/gpu_check.sh                 # on a GPU machine
#   benchmarks/gpu_check.sh --smoke --out /tmp/gpu_check.json   # on a CPU, toy sizes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
exec timeout 560 "$PY" benchmarks/gpu_check.py "$@"
