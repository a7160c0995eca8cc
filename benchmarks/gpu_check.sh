#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) in one command, on one GPU, in at most 9 minutes:
# CUDA-marked tests, a PreAct ResNet-18 PGD-10 epoch (examples/s, MFU), PGD-AT vs FairAT.
# Writes benchmarks/results/gpu_check.json (after every step); extra arguments go to the script.
#   benchmarks/gpu_check.sh                 # on a GPU machine (see benchmarks/README.md)
#   benchmarks/gpu_check.sh --smoke --out /tmp/gpu_check.json   # on a CPU, toy sizes
# On a lent machine nothing is pip-installed: the repository root and the bundle that
# benchmarks/gpu_bundle.sh packs (pyautoattack, CIFAR-10; FAIRAT_GPU_BUNDLE, default .gpu/) go on
# PYTHONPATH, ahead of whatever the machine's Python already holds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
export FAIRAT_GPU_BUNDLE=${FAIRAT_GPU_BUNDLE:-$PWD/.gpu}
path=$PWD
[[ -d "$FAIRAT_GPU_BUNDLE/site" ]] && path=$path:$FAIRAT_GPU_BUNDLE/site
export PYTHONPATH=$path${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec timeout 560 "$PY" benchmarks/gpu_check.py "$@"
