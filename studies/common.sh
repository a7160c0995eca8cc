# Shared by the study scripts (sourced, not run).
COMMIT=${COMMIT:-1}   # COMMIT=0: leave the result files uncommitted
commit_result() {  # file message: commit just that file (unless COMMIT=0)
  [[ "$COMMIT" == 1 ]] || return 0
  for try in 1 2 3 4 5; do  # another git command may hold the index lock for a moment
    git add "$1" && git commit -q -m "$2" -- "$1" && return 0
    sleep 5
  done
  echo "could not commit $1; it is written, commit it by hand" >&2
}
