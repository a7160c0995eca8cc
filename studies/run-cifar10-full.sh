#!/usr/bin/env bash
# The CIFAR-10 study at the pilot's budget (issue 33). PILOT names the pilot cell whose setting
# is the budget (results/cifar10-pilot/val/pgd_at-<PILOT>-seed0.json, chosen on validation: the
# weakest class learned, <= 45 minutes on 2 quiet cores). Two phases:
#   PHASE=val  FairAT's knobs and the peer's at this budget, on validation (the test split is
#              never read), four variants each, seed 0; then benchmarks/choose_variant.py
#              --results results/cifar10-full chooses them. PGD-AT's validation cell is the
#              pilot cell (results/cifar10-pilot/val/), so it is not trained again.
#   PHASE=test pgd_at and FairAT (its chosen variant) on seeds 0-4, paired; TRADES, the peer (its
#              chosen variant) and the random-copies control on seeds 0-2; standard AutoAttack on
#              500 test images of each seed-0 model ("aa:<tag>"). pgd_at and trades need no
#              validation choice: before chosen-on-val.json exists only they run.
# Cells are resumable and each is committed on its own (results/cifar10-full/[val/]<tag>.json).
# A seed-0 test cell's model is committed too (results/cifar10-full/models/<tag>.pt, about 3 MB):
# runs/ does not outlive a session, and standard AutoAttack on it (about an hour of one core) may
# run in a later one; reevaluate refuses a model whose sha256 is not the one its record names.
# Run two runners side by side with FAIRAT_THREADS=1, nothing else on the 2 cores: a pair's
# train-time ratio (the cost in docs/results.md) compares cells run that way, and a cell run
# beside more work takes longer for reasons that are not its method's.
#   PILOT=fgsm-preact16-e10 PHASE=val studies/run-cifar10-full.sh
#   PILOT=fgsm-preact16-e10 PHASE=test studies/run-cifar10-full.sh [tags...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
source studies/common.sh
PILOT=${PILOT:?name the pilot cell that sets the budget, e.g. PILOT=fgsm-preact16-e10}
PHASE=${PHASE:-test}
PEER=${PEER:-wat}   # the best peer of the digits contest (results/digits-contest/chosen-on-val.json)
R=results/cifar10-full W=runs/cifar10-full
ONLY=" $* "
mkdir -p "$W"
"$PY" benchmarks/choose_variant.py --from-record "results/cifar10-pilot/val/pgd_at-$PILOT-seed0.json" \
  --out "$W/budget.yaml"
cell() {  # method seed variant [knobs...]
  local method=$1 seed=$2 variant=$3; shift 3
  local tag="${method}${variant:+-$variant}-seed$seed" split=${SPLIT:-test}
  local file=$R/$tag.json; [[ $split == val ]] && file=$R/val/$tag.json
  [[ "$ONLY" == "  " || "$ONLY" == *" $tag "* ]] || return 0
  [[ -f $file ]] && { echo "skip $file"; return; }
  echo "== $split/$tag $(date -u +%FT%TZ)"
  local knobs=()
  for o in "$@"; do knobs+=(-S "$o"); done
  [[ $split == val ]] && knobs+=(-S evaluate.split=val -S gate.split=val -S evaluate.examples_per_class=null -S evaluate.autoattack=none)
  "$PY" benchmarks/robust_fairness.py cell --params params.yaml --params "$W/budget.yaml" \
    --params studies/cifar10-full.yaml --method "$method" --seed "$seed" \
    ${variant:+--variant "$variant"} --work "$W" --results "$R" "${knobs[@]}"
  commit_result "$file" "CIFAR-10 study at the pilot budget ($split split): $tag"
  [[ $split == test && $seed == 0 ]] && keep_model "$tag"
  return 0
}
keep_model() {  # tag: commit the seed-0 model that standard AutoAttack will attack
  mkdir -p "$R/models"
  cp "$W/$1/model.pt" "$R/models/$1.pt"
  commit_result "$R/models/$1.pt" "CIFAR-10 study: the model of $1 (for standard AutoAttack)"
}
chosen() {  # method -> "variant knob knob ..." of its validation choice, from its record
  "$PY" - "$1" <<'PYEOF'
import json, sys
method = sys.argv[1]
entry = json.load(open("results/cifar10-full/chosen-on-val.json"))["methods"][method]
print(entry["chosen"])
PYEOF
}
if [[ $PHASE == val ]]; then
  SPLIT=val
  # PGD-AT's validation cell is the pilot cell itself (same setting and seed): not trained again
  cell fairat 0 global train.fairat.per_class=false train.fairat.class_power=0
  cell fairat 0 pc-pow2 train.fairat.per_class=true train.fairat.class_power=2
  cell fairat 0 pc-pow4 train.fairat.per_class=true train.fairat.class_power=4
  cell fairat 0 pc-pow4-r0.4 train.fairat.per_class=true train.fairat.class_power=4 train.fairat.hard_ratio=0.4
  case $PEER in
    wat)
      cell wat 0 "" ; cell wat 0 pgd train.wat.base=pgd_at
      cell wat 0 pgd-eta0.03 train.wat.base=pgd_at train.wat.eta=0.03
      cell wat 0 pgd-eta0.3 train.wat.base=pgd_at train.wat.eta=0.3 ;;
    *) echo "PEER=$PEER: add its four variants here (as in studies/run-digits-contest.sh)" >&2; exit 2 ;;
  esac
  exit 0
fi
# pgd_at and trades need no validation choice, so they may run while the validation phase does;
# FairAT, the peer and the control (it copies FairAT's ratio and warm-up) wait for the choice
CHOSEN=0 FAIRAT_V="" PEER_V="" CONTROL=()
if [[ -f $R/chosen-on-val.json ]]; then
  CHOSEN=1 FAIRAT_V=$(chosen fairat) PEER_V=$(chosen "$PEER")
  for m in fairat "$PEER"; do
    "$PY" benchmarks/choose_variant.py --results "$R" --export "$m" --out "$W/chosen-$m.yaml"
  done
  # the control draws as many copies as the chosen FairAT, after the same warm-up
  CONTROL=($("$PY" -c "import yaml; f = yaml.safe_load(open('$W/chosen-fairat.yaml'))['train']['fairat']; print(f'train.random_copies.hard_ratio={f[\"hard_ratio\"]} train.random_copies.warmup={f[\"warmup\"]}')"))
else
  echo "no $R/chosen-on-val.json yet (PHASE=val, then benchmarks/choose_variant.py --results $R):" \
    "running only the cells that need no validation choice (pgd_at, trades)" >&2
fi
chosen_cell() {  # method seed variant: the chosen setting's knobs, exported from its record
  local method=$1 seed=$2 variant=$3
  [[ $CHOSEN == 1 ]] || return 0
  local tag="${method}${variant:+-$variant}-seed$seed"
  [[ "$ONLY" == "  " || "$ONLY" == *" $tag "* ]] || return 0
  [[ -f $R/$tag.json ]] && { echo "skip $tag"; return; }
  echo "== test/$tag $(date -u +%FT%TZ)"
  "$PY" benchmarks/robust_fairness.py cell --params params.yaml --params "$W/chosen-$method.yaml" \
    --params studies/cifar10-full.yaml --method "$method" --seed "$seed" \
    ${variant:+--variant "$variant"} --work "$W" --results "$R"
  commit_result "$R/$tag.json" "CIFAR-10 study at the pilot budget (test split): $tag"
  [[ $seed == 0 ]] && keep_model "$tag"
  return 0
}
standard_aa() {  # method seed variant [params file [knobs...]]: standard AutoAttack on 500 test images
  local method=$1 seed=$2 variant=$3 chosen=${4:-$W/budget.yaml}; shift $(( $# < 4 ? $# : 4 ))
  local knobs=()  # the cell's own knobs, so the params chain is the one that trained it
  for o in "$@"; do knobs+=(-S "$o"); done
  local tag="${method}${variant:+-$variant}-seed$seed" out=$R/autoattack-standard
  [[ $CHOSEN == 1 || $method == pgd_at || $method == trades ]] || return 0
  [[ "$ONLY" == "  " || "$ONLY" == *" aa:$tag "* ]] || return 0
  [[ -f $R/$tag.json && ! -f $out/$tag.json ]] || return 0
  if [[ ! -f $W/$tag/model.pt && -f $R/models/$tag.pt ]]; then  # trained in an earlier session
    mkdir -p "$W/$tag" && cp "$R/models/$tag.pt" "$W/$tag/model.pt"
  fi
  echo "== standard AutoAttack $tag $(date -u +%FT%TZ)"
  "$PY" benchmarks/robust_fairness.py reevaluate --params params.yaml --params "$chosen" \
    --params studies/cifar10-full.yaml --method "$method" --seed "$seed" \
    ${variant:+--variant "$variant"} --work "$W" --results "$R" --into "$out" "${knobs[@]}" \
    -S evaluate.autoattack=standard -S evaluate.examples_per_class=50 -S evaluate.autoattack_per_class=50
  commit_result "$out/$tag.json" "CIFAR-10 study: standard AutoAttack on $tag"
}
for seed in 0 1 2 3 4; do
  cell pgd_at "$seed" ""
  chosen_cell fairat "$seed" "$FAIRAT_V"
done
for seed in 0 1 2; do
  cell trades "$seed" ""
  chosen_cell "$PEER" "$seed" "$PEER_V"
  if [[ $CHOSEN == 1 ]]; then cell random_copies "$seed" "" "${CONTROL[@]}"; fi
done
standard_aa pgd_at 0 ""
standard_aa fairat 0 "$FAIRAT_V" "$W/chosen-fairat.yaml"
standard_aa trades 0 ""
standard_aa "$PEER" 0 "$PEER_V" "$W/chosen-$PEER.yaml"
standard_aa random_copies 0 "" "$W/budget.yaml" "${CONTROL[@]}"
