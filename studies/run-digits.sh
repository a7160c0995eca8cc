#!/usr/bin/env bash
# The digits study (studies/digits.yaml) on the TEST split, one cell after another: a cell whose
# result exists is skipped, a killed one resumes from its checkpoint, each finished cell is
# committed on its own. Every method runs at its published defaults; FairAT and the peers whose
# validation knob search (studies/run-digits-knobs.sh, docs/results.md) chose another setting also
# run at that setting (fairat-pc-pow4, wat-pgd, cfa-pgd).
#   studies/run-digits.sh                 # seeds 0-9, every method
#   SEEDS="0 1 2" studies/run-digits.sh   # fewer seeds
#   ONLY="pgd_at fairat-pc-pow4" RESULTS=results/digits-xeon SEEDS="0 1 2" studies/run-digits.sh
#                                         # a replication of some methods (e.g. on another CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
source studies/common.sh
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7 8 9}
RESULTS=${RESULTS:-results/digits}
ONLY=" ${ONLY:-} "
cell() {  # method seed variant [knobs...]
  local method=$1 seed=$2 variant=$3; shift 3
  local name="${method}${variant:+-$variant}"
  local tag="$name-seed$seed"
  [[ "$ONLY" == "  " || "$ONLY" == *" $name "* ]] || return 0
  [[ -f $RESULTS/$tag.json ]] && { echo "skip $tag"; return; }
  echo "== $tag $(date -u +%FT%TZ)"
  local knobs=(-S "data.seed=$seed")
  for o in "$@"; do knobs+=(-S "$o"); done
  "$PY" benchmarks/robust_fairness.py cell --params params.yaml --params studies/digits.yaml --method "$method" \
    --seed "$seed" ${variant:+--variant "$variant"} --work "runs/${RESULTS#results/}/seed$seed" \
    --results "$RESULTS" "${knobs[@]}"
  commit_result "$RESULTS/$tag.json" "Digits study (test split): $tag cell ($RESULTS)"
}
for seed in $SEEDS; do
  cell pgd_at "$seed" ""
  cell fairat "$seed" ""                                   # the paper's global selection
  cell fairat "$seed" pc train.fairat.per_class=true       # a quota within every class
  # the setting chosen on the validation split (studies/run-digits-knobs.sh, docs/results.md)
  cell fairat "$seed" pc-pow4 train.fairat.per_class=true train.fairat.class_power=4
  cell trades "$seed" ""
  cell wat "$seed" ""                                      # the fair-AT peers, authors' knobs
  cell frl "$seed" ""
  cell cfa "$seed" ""
  cell dafa "$seed" ""
  # the peers' settings chosen on the validation split (FRL and DAFA kept the authors' knobs)
  cell wat "$seed" pgd train.wat.base=pgd_at
  cell cfa "$seed" pgd train.cfa.base=pgd_at
  # the control (issue 32): PGD-AT plus FairAT's count of augmented copies drawn at random
  cell random_copies "$seed" ""
done
