#!/usr/bin/env bash
# Installs what a benchmark row needs, for mk/bench.mk:
#   scripts/ensure-bench-tools.sh [--optional] "<what needs them>" <command>=<package>...
# Each command missing from PATH (and /usr/sbin, where nsd and etcd live) is installed
# from its Debian package when run as root with apt-get; otherwise, or when apt-get
# fails, it says in one line what to install. Without --optional that ends make (exit
# 1); with it the bench goes on and skips the rows (exit 0).
set -u

optional=false
if [ "${1:-}" = --optional ]; then
  optional=true
  shift
fi
purpose=$1
shift

missing=()
for pair in "$@"; do
  tool=${pair%%=*}
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1; then
    missing+=("${pair#*=}")
  fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

give_up() {
  if $optional; then
    echo "$purpose: $1; skipped" >&2
    exit 0
  fi
  echo "$purpose: $1" >&2
  exit 1
}

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  give_up "install ${missing[*]} (sudo apt-get install ${missing[*]})"
fi
echo "installing ${missing[*]} with apt-get..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
  { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; } ||
  give_up "apt-get could not install ${missing[*]}"
