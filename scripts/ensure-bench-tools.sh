#!/usr/bin/env bash
# Installs what a benchmark row needs, for mk/bench.mk:
#   scripts/ensure-bench-tools.sh [--optional] "<what needs them>" <tool>=<package>...
# A tool is a command (looked for on PATH and in /usr/sbin, where nsd and etcd live), an
# absolute path (/usr/bin/chromium: the bench starts exactly that binary), or a folder's
# npm package, <folder>/node_modules/<name>=npm. A missing command or path is installed
# from its Debian package when run as root with apt-get; a missing npm package by `npm ci`
# in its folder (the folder's package-lock.json pins it), after the Debian packages, so
# that npm can come with them. Otherwise, or when an install fails, it says in one line
# what to install. Without --optional that ends make (exit 1); with it the bench goes on
# and skips the rows (exit 0).
set -u
cd "$(dirname "$0")/.."

optional=false
if [ "${1:-}" = --optional ]; then
  optional=true
  shift
fi
purpose=$1
shift

give_up() {
  if $optional; then
    echo "$purpose: $1; skipped" >&2
    exit 0
  fi
  echo "$purpose: $1" >&2
  exit 1
}

missing=()
npm_folders=()
for pair in "$@"; do
  tool=${pair%%=*}
  case "$tool" in
    */node_modules/*) [ -d "$tool" ] || npm_folders+=("${tool%%/node_modules/*}") ;;
    /*) [ -x "$tool" ] || missing+=("${pair#*=}") ;;
    *) PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 || missing+=("${pair#*=}") ;;
  esac
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    give_up "install ${missing[*]} (sudo apt-get install ${missing[*]})"
  fi
  echo "installing ${missing[*]} with apt-get..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; } ||
    give_up "apt-get could not install ${missing[*]}"
fi

for folder in "${npm_folders[@]}"; do
  command -v npm >/dev/null 2>&1 || give_up "install npm (sudo apt-get install npm), then npm ci in $folder"
  echo "installing the npm packages of $folder (npm ci)..." >&2
  npm_log=$(mktemp)
  # npm's chatter is shown only when it fails.
  if ! (cd "$folder" && npm ci --no-audit --no-fund) >"$npm_log" 2>&1; then
    cat "$npm_log" >&2
    rm -f "$npm_log"
    give_up "npm ci in $folder failed (see above)"
  fi
  rm -f "$npm_log"
done
exit 0
