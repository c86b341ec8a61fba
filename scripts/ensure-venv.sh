#!/usr/bin/env bash
# Makes sure the repository's Python tools live in .venv/ with the pinned packages given
# as arguments (`name==version`); pip runs only when one of them is missing. Creates
# .venv first, installing Debian's python3-venv with apt-get when that is what is
# missing and this runs as root; otherwise prints one line saying what to install.
# Quiet when everything is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Runs a noisy install step; its output is shown only when it fails.
quietly() {
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "ensure-venv: '$*' failed; see above." >&2
    exit 1
  fi
}

python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "ensure-venv: python3 is needed (apt-get install python3 python3-venv)." >&2
  exit 1
fi

if [ ! -x "$venv/bin/pip" ]; then
  echo "ensure-venv: creating $venv..." >&2
  if ! "$python" -m venv "$venv" >"$log" 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      quietly apt-get update -qq
      quietly apt-get install -y -qq --no-install-recommends python3-venv
      rm -rf "$venv"
      quietly "$python" -m venv "$venv"
    else
      cat "$log" >&2
      echo "ensure-venv: python3 -m venv failed: install python3-venv." >&2
      exit 1
    fi
  fi
fi

# One `pip freeze` for all of them (a `pip show` each cost about a second apiece).
installed=$("$venv/bin/pip" freeze --disable-pip-version-check 2>/dev/null || true)
missing=()
for requirement in "$@"; do
  grep -qixF -- "$requirement" <<<"$installed" || missing+=("$requirement")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ensure-venv: installing ${missing[*]} into .venv..." >&2
  quietly "$venv/bin/pip" install -q --disable-pip-version-check "${missing[@]}"
fi
