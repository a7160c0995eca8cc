#!/usr/bin/env bash
# Runs the validation-split knob search (studies/cifar10-cpu-knobs.yaml) one cell after another;
# a cell whose result file exists is skipped, a killed one resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEED=${SEED:-0}   # SEED=1 studies/run-knobs.sh pgd_at trades fairat-trades-pc-pow4: replicate
ONLY=" $* "       # optional: run only these tags (method or method-variant)
source studies/common.sh   # commit_result; COMMIT=0 leaves result files uncommitted
cell() {  # method variant overrides...
  local method=$1 variant=$2; shift 2
  local name="${method}${variant:+-$variant}" tag="${method}${variant:+-$variant}-seed$SEED"
  [[ "$ONLY" == "  " || "$ONLY" == *" $name "* ]] || return 0
  [[ -f results/cpu-knobs/val/$tag.json ]] && { echo "skip $tag"; return; }
  local args=()
  for o in "$@"; do args+=(-S "$o"); done
  "$PY" benchmarks/robust_fairness.py cell --params params.yaml --params studies/cifar10-cpu.yaml \
    --params studies/cifar10-cpu-knobs.yaml --method "$method" \
    --seed "$SEED" ${variant:+--variant "$variant"} --work runs/knobs --results results/cpu-knobs "${args[@]}"
  commit_result "results/cpu-knobs/val/$tag.json" "Knob search (validation split): $tag"
}
cell pgd_at ""
cell fairat ""
cell fairat pc-pow2 train.fairat.per_class=true train.fairat.class_power=2
cell fairat pc-pow4 train.fairat.per_class=true train.fairat.class_power=4
cell fairat pc-pow0 train.fairat.per_class=true
cell trades ""
cell fairat pc-pow8-r40 train.fairat.per_class=true train.fairat.class_power=8 train.fairat.hard_ratio=0.4
cell fairat "$FAIRAT_CHOSEN_VARIANT" "${FAIRAT_CHOSEN[@]}"
# Why the target falls short (sessions 4-5), on the chosen setting: plain copies (crop/flip only:
# is it the diversity or just the extra weight?), stronger augmentation, then a schedule twice as
# long for all three methods (warm-up kept at a quarter of it), warm-up 0, and the longer schedule
# on the PGD-AT base and the clean-CE score last.
E16=(train.epochs=16 train.fairat.warmup=0.25)
cell fairat trades-pc-pow4-cropflip "${FAIRAT_CHOSEN[@]}" "train.fairat.augment=[cropflip]"
cell fairat trades-pc-pow4-s2 "${FAIRAT_CHOSEN[@]}" train.fairat.strength=2.0
cell pgd_at e16 "${E16[@]}"
cell trades e16 "${E16[@]}"
cell fairat trades-pc-pow4-e16 "${FAIRAT_CHOSEN[@]}" "${E16[@]}"
cell fairat trades-pc-pow4-w0 "${FAIRAT_CHOSEN[@]}" train.fairat.warmup=0
cell fairat pc-pow4-e16 train.fairat.per_class=true train.fairat.class_power=4 "${E16[@]}"
cell fairat cleance train.fairat.score=clean_ce
