#!/usr/bin/env bash
# Runs the CPU-scale study (studies/cifar10-cpu.yaml) on the TEST split, one cell after another:
# a cell whose result file exists is skipped, a killed one resumes from its last checkpoint, and
# each finished cell is committed on its own so an interrupted study loses at most one cell's work.
#   studies/run-study.sh                         # every missing cell, in the order below
#   studies/run-study.sh trades-seed1 fairat-trades-pc-pow4-seed1   # only these
#   studies/run-study.sh fairat-pc-pow4-seed0 wat-pgd-seed0          # the digits study's two best
#   studies/run-study.sh aa:pgd_at-seed0         # standard AutoAttack on that cell's model
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
source studies/common.sh   # commit_result; COMMIT=0 leaves result files uncommitted
ONLY=" $* "
FAIRAT_VARIANT=$FAIRAT_CHOSEN_VARIANT   # from common.sh, as -S options for the cell command
FAIRAT_KNOBS=()
for o in "${FAIRAT_CHOSEN[@]}"; do FAIRAT_KNOBS+=(-S "$o"); done
cell() {  # method seed [variant knobs...]
  local method=$1 seed=$2 variant=$3; shift 3
  local tag="${method}${variant:+-$variant}-seed$seed"
  [[ "$ONLY" == "  " || "$ONLY" == *" $tag "* ]] || return 0
  [[ -f results/cpu/$tag.json ]] && { echo "skip $tag"; return; }
  echo "== $tag $(date -u +%FT%TZ)"
  "$PY" benchmarks/robust_fairness.py cell --params params.yaml --params studies/cifar10-cpu.yaml --method "$method" \
    --seed "$seed" ${variant:+--variant "$variant"} "$@"
  commit_result "results/cpu/$tag.json" "Study (CPU scale, test split): $tag cell"
}
standard_aa() {  # method seed variant: standard AutoAttack on a cell's model, a side record
  local method=$1 seed=$2 variant=$3
  local tag="${method}${variant:+-$variant}-seed$seed" out=results/cpu/autoattack-standard
  [[ "$ONLY" == "  " || "$ONLY" == *" aa:$tag "* ]] || return 0
  [[ -f results/cpu/$tag.json && ! -f $out/$tag.json ]] || return 0
  [[ -f runs/study-cpu/$tag/model.pt ]] || {  # runs/ is not committed: models stay on their machine
    echo "skip aa:$tag: its model is not on this machine (re-run the cell to rebuild it)"; return 0; }
  echo "== standard AutoAttack $tag $(date -u +%FT%TZ)"
  "$PY" benchmarks/robust_fairness.py reevaluate --params params.yaml --params studies/cifar10-cpu.yaml --method "$method" \
    --seed "$seed" ${variant:+--variant "$variant"} --into "$out" -S evaluate.autoattack=standard \
    -S evaluate.examples_per_class="$AA_PER_CLASS" -S evaluate.autoattack_per_class="$AA_PER_CLASS"
  commit_result "$out/$tag.json" "Study: standard AutoAttack on $tag"
}
AA_PER_CLASS=${AA_PER_CLASS:-50}   # standard AutoAttack on 500 stratified test images per model
# PGD-AT and FairAT first: the target compares those two; TRADES is the second baseline.
for seed in 0 1 2; do cell pgd_at "$seed" ""; done
for seed in 0 1 2; do cell fairat "$seed" "$FAIRAT_VARIANT" "${FAIRAT_KNOBS[@]}"; done
for seed in 0 1 2; do cell trades "$seed" ""; done
# The two best methods of the digits study, chosen on its validation split (docs/results.md): FairAT
# with per-class quotas weighted by class hardness on the PGD-AT base (the params.yaml default), and
# WAT on the PGD-AT base, the peer with the best validation worst class (wat-pgd).
for seed in 0 1 2; do
  cell fairat "$seed" pc-pow4 -S train.fairat.per_class=true -S train.fairat.class_power=4
  cell wat "$seed" pgd -S train.wat.base=pgd_at
done
# standard AutoAttack on the seed-0 models (name them "aa:<tag>" to run only those)
standard_aa pgd_at 0 ""
standard_aa fairat 0 "$FAIRAT_VARIANT"
standard_aa trades 0 ""
# TRADES seed 0's model was lost with the machine that trained it (runs/ is not committed), so
# TRADES's standard-AutoAttack record comes from the seed-2 model instead.
standard_aa trades 2 ""
# The digits study's two best on CIFAR-10: their seed-2 models are the ones kept on a machine.
standard_aa fairat 2 pc-pow4
standard_aa wat 2 pgd
