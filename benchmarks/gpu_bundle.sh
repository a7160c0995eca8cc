#!/usr/bin/env bash
# Packs what a lent GPU machine lacks, so benchmarks/gpu_check.sh works there in one call.
# The lent machine receives the repository alone (not ../shared, not .venv) and runs an image whose
# python3 holds PyTorch, numpy, scikit-learn, matplotlib and pytest but none of this project's own
# dependencies, with no package registry to install them from. The check needs two of them: the
# CIFAR-10 archive (for the throughput epoch and the PGD-AT vs FairAT run) and pyautoattack (the
# evaluation's AutoAttack). This script copies both into a git-ignored folder (default .gpu/, about
# 19 MB) that the device call carries; gpu_check.sh puts it on PYTHONPATH and reads the data there.
#   benchmarks/gpu_bundle.sh [DIR]      # then: device run, carry [".gpu"]   (benchmarks/README.md)
# pyautoattack is pure Python: its installed copy from this venv serves the lent machine's Python
# too. Its examples/ folder (a 45 MB demo model) is left out: the check never imports it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
OUT=${1:-.gpu}
[[ -f "$DATA" ]] || { echo "gpu_bundle: $DATA not found (set DATA=path/to/cifar10-jpeg.tar.gz)" >&2; exit 1; }
tmp=$(mktemp -d "${OUT%/}.tmp.XXXXXX")   # built beside the target, then swapped in whole
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/site"
cp "$DATA" "$tmp/cifar10-jpeg.tar.gz"
"$PY" - "$tmp/site" <<'EOF'
"""Copy the installed pyautoattack package and its dist-info (so provenance records its version)."""
import shutil
import sys
from importlib import metadata
from pathlib import Path

site = Path(sys.argv[1])
dist = metadata.distribution("pyautoattack")
package = Path(dist.locate_file("pyautoattack"))
ignore = shutil.ignore_patterns("examples", "__pycache__", "*.pyc")
shutil.copytree(package, site / "pyautoattack", ignore=ignore)
info = next(Path(dist.locate_file(f)).parent for f in dist.files
            if f.parent.name.endswith(".dist-info"))
shutil.copytree(info, site / info.name, ignore=ignore)
print(f"gpu_bundle: pyautoattack {dist.version} from {package}")
EOF
rm -rf "$OUT"
mv "$tmp" "$OUT"
trap - EXIT
du -sh "$OUT"
