#!/usr/bin/env bash
# Makes sure the tools the tests need beyond Postgres (scripts/ensure-postgres.sh does
# that one) are there:
# - `prometheus` and `promtool`, both from the Debian package `prometheus`, for the
#   end-to-end test of /v1/sd/prometheus against a real Prometheus;
# - Debian's `chromium` (/usr/bin/chromium), `node` and `npm`, and the npm packages of
#   tests/browser (playwright-core, pinned by its package-lock.json) in
#   tests/browser/node_modules, for the browser test of the dashboard at `/`;
# - the npm package `consul` (pinned by tests/consul-js/package-lock.json) in
#   tests/consul-js/node_modules, and `py-consul` in .venv/, the unmodified Consul clients
#   the Consul API is tested with;
# - the npm package `eureka-js-client` (pinned by tests/eureka-js/package-lock.json) in
#   tests/eureka-js/node_modules, and `py-eureka-client` in .venv/, the unmodified Eureka
#   clients the Eureka API is tested with;
# - `dig` from Debian's `dnsutils`, which asks the DNS interface in its tests, and
#   Debian's HAProxy (/usr/sbin/haproxy, not on every user's PATH), which follows it;
# - schemathesis in .venv/ (scripts/ensure-venv.sh), for the API fuzz test against
#   /openapi.json;
# - helm and the Kubernetes lint tools (scripts/ensure-k8s-tools.sh), for the chart
#   contract test.
# As root with apt-get it installs whatever is missing; otherwise it prints one line
# saying what to install and exits 1. Quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# tool:package pairs; a package providing several tools is installed once. The browser
# and HAProxy are looked for at their Debian paths: the tests start exactly those binaries.
tools=(
  prometheus:prometheus
  promtool:prometheus
  /usr/bin/chromium:chromium
  node:nodejs
  npm:npm
  /usr/sbin/haproxy:haproxy
  dig:dnsutils
)

have() {
  if [[ $1 == /* ]]; then
    [ -x "$1" ]
  else
    command -v "$1" >/dev/null 2>&1
  fi
}

packages=()
for pair in "${tools[@]}"; do
  tool=${pair%%:*}
  package=${pair#*:}
  if ! have "$tool"; then
    case " ${packages[*]:-} " in
      *" $package "*) ;;
      *) packages+=("$package") ;;
    esac
  fi
done

# folder:package pairs: `npm ci` runs in a folder whose pinned package is not installed.
npm_folders=(
  tests/browser:playwright-core
  tests/consul-js:consul
  tests/eureka-js:eureka-js-client
)
npm_ci_in=()
for pair in "${npm_folders[@]}"; do
  folder=${pair%%:*}
  [ -d "$folder/node_modules/${pair#*:}" ] || npm_ci_in+=("$folder")
done
need_npm_ci=false
[ "${#npm_ci_in[@]}" -eq 0 ] || need_npm_ci=true

scripts/ensure-venv.sh schemathesis==4.32.5 py-consul==1.8.0 py-eureka-client==0.13.3
scripts/ensure-k8s-tools.sh

if [ "${#packages[@]}" -eq 0 ] && ! $need_npm_ci; then
  exit 0
fi

if [ "${#packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "Tests need ${packages[*]}: install it (sudo apt-get install ${packages[*]}), then run scripts/ensure-tools.sh again." >&2
    exit 1
  fi

  echo "installing ${packages[*]} with apt-get..." >&2
  apt_log=$(mktemp)
  trap 'rm -f "$apt_log"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  # apt-get and dpkg chatter goes to a log that is shown only when the install fails.
  if ! { apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    echo "apt-get could not install ${packages[*]}; see above." >&2
    exit 1
  fi
  for pair in "${tools[@]}"; do
    tool=${pair%%:*}
    if ! have "$tool"; then
      echo "apt-get installed ${packages[*]} but $tool is still not there." >&2
      exit 1
    fi
  done
fi

for folder in "${npm_ci_in[@]}"; do
  echo "installing the npm packages of $folder (npm ci)..." >&2
  npm_log=$(mktemp)
  # The lock file pins every version; npm's chatter is shown only when it fails.
  if ! (cd "$folder" && npm ci --no-audit --no-fund) >"$npm_log" 2>&1; then
    cat "$npm_log" >&2
    rm -f "$npm_log"
    echo "npm ci in $folder failed; see above." >&2
    exit 1
  fi
  rm -f "$npm_log"
done
