#!/usr/bin/env bash
# The digits knob search on the VALIDATION split (studies/digits.yaml with evaluate.split=val; the
# test split is never read): FairAT's selection (global top-k, per-class quotas, class-power
# weighted quotas, base, ratio) and each peer's knobs against PGD-AT, several seeds (15 validation images per class
# make one seed too noisy to choose on). Each seed re-draws the training/validation split (the test split is fixed, and unread here). A cell whose result
# exists is skipped, a killed one resumes; each finished cell is committed on its own as
# results/digits/val/<tag>.json.
#   studies/run-digits-knobs.sh                 # seeds 0 1 2
#   SEEDS="3 4" studies/run-digits-knobs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
source studies/common.sh
SEEDS=${SEEDS:-0 1 2}
cell() {  # method seed variant [knobs...]
  local method=$1 seed=$2 variant=$3; shift 3
  local tag="${method}${variant:+-$variant}-seed$seed"
  [[ -f results/digits/val/$tag.json ]] && { echo "skip val/$tag"; return; }
  echo "== val/$tag $(date -u +%FT%TZ)"
  local knobs=(-S "data.seed=$seed" -S "evaluate.split=val" -S "gate.split=val")
  for o in "$@"; do knobs+=(-S "$o"); done
  "$PY" benchmarks/robust_fairness.py cell --params params.yaml --params studies/digits.yaml --method "$method" \
    --seed "$seed" ${variant:+--variant "$variant"} --work "runs/digits-val/seed$seed" \
    --results results/digits "${knobs[@]}"
  commit_result "results/digits/val/$tag.json" "Digits knob search (validation split): $tag cell"
}
PC=(train.fairat.per_class=true)
for seed in $SEEDS; do
  cell pgd_at "$seed" ""
  cell fairat "$seed" ""
  cell fairat "$seed" pc "${PC[@]}"
  cell fairat "$seed" pc-pow2 "${PC[@]}" train.fairat.class_power=2
  cell fairat "$seed" pc-pow4 "${PC[@]}" train.fairat.class_power=4
  cell fairat "$seed" trades-pc-pow4 train.fairat.base=trades "${PC[@]}" train.fairat.class_power=4
  cell fairat "$seed" ratio0.4-pc "${PC[@]}" train.fairat.hard_ratio=0.4
  # The peers: the authors' defaults against one change each. TRADES trails PGD-AT on digits, so
  # the peers that take a base try PGD-AT; FRL is TRADES by construction and tries tighter bounds.
  cell wat "$seed" ""
  cell wat "$seed" pgd train.wat.base=pgd_at
  cell frl "$seed" ""
  cell frl "$seed" b0.05 train.frl.bound_clean=0.05 train.frl.bound_boundary=0.05
  cell cfa "$seed" ""
  cell cfa "$seed" pgd train.cfa.base=pgd_at
  cell dafa "$seed" ""
  cell dafa "$seed" pgd train.dafa.base=pgd_at
done
