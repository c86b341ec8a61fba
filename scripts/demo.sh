#!/usr/bin/env bash
# `make demo`: starts the registry on an embedded SQLite file in a temporary folder,
# shows a registration, a lapsed lease and the history, and stops everything cleanly
# (also on Ctrl-C). Needs only the binaries `make build` made.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/debug/registry
work=$(mktemp -d -t central-registry-demo.XXXXXX)
log="$work/registry.log"
port=${DEMO_PORT:-18000}
url="http://127.0.0.1:$port"
export REGISTRY_URL="$url"

registry_pid=""
cleanup() {
  if [ -n "$registry_pid" ] && kill -0 "$registry_pid" 2>/dev/null; then
    kill -TERM "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  echo
  echo "Logs: $log"
}
trap cleanup EXIT INT TERM

say() { printf '\n== %s\n' "$*"; }

say "starting the registry on $url (SQLite in $work)"
DATABASE_URL="sqlite://$work/registry.db" REGISTRY_ADDR="127.0.0.1:$port" LOG_FORMAT=json \
  REGISTRY_DEREGISTER_CRITICAL_AFTER=10m "$bin" serve >"$log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do
  if "$bin" services >/dev/null 2>&1; then break; fi
  if ! kill -0 "$registry_pid" 2>/dev/null; then echo "the registry failed to start:"; cat "$log"; exit 1; fi
  sleep 0.1
done

put() { curl -fsS -X PUT -H 'Content-Type: application/json' "$url$1" ${2:+-d "$2"} >/dev/null; }

say "registering sum (ttl 2s), two concat instances and mult"
put /v1/services/sum/instances/sum-1 '{"url":"http://127.0.0.1:4040","ttl_seconds":2}'
put /v1/services/concat/instances/concat-1 '{"url":"http://127.0.0.1:4060","ttl_seconds":0}'
put /v1/services/concat/instances/concat-2 '{"url":"http://127.0.0.1:4061","ttl_seconds":0}'
put /v1/services/mult/instances/mult-1 '{"url":"http://127.0.0.1:4050","ttl_seconds":0}'
"$bin" status

say "concat-2 goes into maintenance (drained, still registered)"
put /v1/services/concat/instances/concat-2/status '{"status":"maintenance"}'
"$bin" services

say "sum stops heartbeating: its 2s lease lapses"
for i in $(seq 1 40); do
  if "$bin" status --json | grep -Eq '"status": ?"critical"'; then break; fi
  printf '.'; sleep 0.25
done
echo
"$bin" status

say "a heartbeat brings sum back"
put /v1/services/sum/instances/sum-1/heartbeat
"$bin" status

say "history of sum"
curl -fsS "$url/v1/history?service=sum" | grep -o '"reason":"[a-z_]*"' | sed 's/"reason":/  /'

say "done: the registry answered every step"
