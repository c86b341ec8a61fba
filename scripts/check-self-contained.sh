#!/usr/bin/env bash
# Checks that the repository explains itself (`make lint`): no tracked file may point to a
# design document or a folder outside the repository. Its explanations live in docs/.
# Prints file:line of every such mention and exits 1; exits 0 when there is none.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

# Assembled from parts so that this script does not match itself.
doc='DESIGN'
outside='../'
patterns=("$doc.md" "$doc section" "${outside}shared")

grep_args=(-n -I -F)
for pattern in "${patterns[@]}"; do
  grep_args+=(-e "$pattern")
done
pathspec=(.)

status=0
found=$(git grep "${grep_args[@]}" -- "${pathspec[@]}") || status=$?
case "$status" in
  0)
    printf '%s\n' "$found" >&2
    echo "check-self-contained: the lines above point outside the repository; point into docs/ instead" >&2
    exit 1
    ;;
  1)
    echo "check-self-contained: ok (no file points outside the repository)"
    ;;
  *)
    echo "check-self-contained: git grep failed (status $status)" >&2
    exit "$status"
    ;;
esac
