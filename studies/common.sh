# Shared by the study scripts (sourced, not run).
# FairAT's setting chosen on the validation split (docs/results.md, "Knob search"): one definition
# for the knob search that chose it and the test-split study that reports it.
FAIRAT_CHOSEN_VARIANT=trades-pc-pow4
FAIRAT_CHOSEN=(train.fairat.base=trades train.fairat.per_class=true train.fairat.class_power=4)
COMMIT=${COMMIT:-1}   # COMMIT=0: leave the result files uncommitted
commit_result() {  # file message: commit just that file (unless COMMIT=0)
  [[ "$COMMIT" == 1 ]] || return 0
  for try in 1 2 3 4 5; do  # another git command may hold the index lock for a moment
    git add "$1" && git commit -q -m "$2" -- "$1" && return 0
    sleep 5
  done
  echo "could not commit $1; it is written, commit it by hand" >&2
}
