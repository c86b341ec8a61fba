#!/usr/bin/env bash
# Makes sure the tools the tests need beyond Postgres (scripts/ensure-postgres.sh does
# that one) are on PATH: today `prometheus` and `promtool`, both from the Debian package
# `prometheus`, for the end-to-end test of /v1/sd/prometheus against a real Prometheus.
# As root with apt-get it installs whatever is missing; otherwise it prints one line
# saying what to install and exits 1. Quiet when everything is already there.
set -euo pipefail

# tool:package pairs; a package providing several tools is installed once.
tools=(prometheus:prometheus promtool:prometheus)

packages=()
for pair in "${tools[@]}"; do
  tool=${pair%%:*}
  package=${pair#*:}
  if ! command -v "$tool" >/dev/null 2>&1; then
    case " ${packages[*]:-} " in
      *" $package "*) ;;
      *) packages+=("$package") ;;
    esac
  fi
done

if [ "${#packages[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "Tests need ${packages[*]}: install it (sudo apt-get install ${packages[*]})." >&2
  exit 1
fi

echo "installing ${packages[*]} with apt-get..." >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
# apt-get and dpkg chatter goes to a log that is shown only when the install fails.
if ! { apt-get update -qq &&
  apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "apt-get could not install ${packages[*]}; see above." >&2
  exit 1
fi
for pair in "${tools[@]}"; do
  tool=${pair%%:*}
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "apt-get installed ${packages[*]} but $tool is still not on PATH." >&2
    exit 1
  fi
done
