#!/usr/bin/env bash
# The digits contest (issue 32), TEST phase: each fairness method at the setting its validation
# phase chose (studies/run-digits-contest.sh, then benchmarks/choose_variant.py, which writes
# results/digits-contest/chosen-on-val.json), beside PGD-AT, TRADES and the random-copies control,
# on the same seeds. A chosen setting is exported from its validation record (no second copy of
# its knobs); the test split is the same 359 images for every seed (docs/results.md says so), the
# seed re-draws the training/validation split and the training randomness. A cell whose result
# exists is skipped, a killed one resumes; each finished cell is committed on its own as
# results/digits-contest/<tag>.json.
#   .venv/bin/python benchmarks/choose_variant.py --results results/digits-contest
#   studies/run-digits-contest-test.sh                # seeds 0-9, seed by seed
#   SEEDS="0 1" studies/run-digits-contest-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
source studies/common.sh
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7 8 9}
R=results/digits-contest
[[ -f $R/chosen-on-val.json ]] || { echo "no $R/chosen-on-val.json: run the validation phase and choose_variant.py first" >&2; exit 2; }
mkdir -p runs/digits-contest
declare -A VARIANT
for method in fairat wat frl cfa dafa; do
  "$PY" benchmarks/choose_variant.py --results "$R" --export "$method" --out "runs/digits-contest/chosen-$method.yaml"
  VARIANT[$method]=$("$PY" -c "import json,sys; print(json.load(open('$R/chosen-on-val.json'))['methods']['$method']['chosen'])")
done
cell() {  # method seed variant [params file]
  local method=$1 seed=$2 variant=$3 chosen=${4:-}
  local tag="${method}${variant:+-$variant}-seed$seed"
  [[ -f $R/$tag.json ]] && { echo "skip $tag"; return; }
  echo "== $tag $(date -u +%FT%TZ)"
  "$PY" benchmarks/robust_fairness.py cell --params params.yaml ${chosen:+--params "$chosen"} \
    --params studies/digits-contest.yaml --method "$method" --seed "$seed" \
    ${variant:+--variant "$variant"} --work "runs/digits-contest/seed$seed" --results "$R" \
    -S "data.seed=$seed"
  commit_result "$R/$tag.json" "Digits contest (test split): $tag"
}
for seed in $SEEDS; do
  cell pgd_at "$seed" ""
  cell fairat "$seed" "${VARIANT[fairat]}" runs/digits-contest/chosen-fairat.yaml
  cell random_copies "$seed" ""
  cell trades "$seed" ""
  for method in wat frl cfa dafa; do
    cell "$method" "$seed" "${VARIANT[$method]}" "runs/digits-contest/chosen-$method.yaml"
  done
done
