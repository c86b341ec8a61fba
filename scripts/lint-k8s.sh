#!/usr/bin/env bash
# Checks the Kubernetes files without a cluster or Docker (`make lint-k8s`, part of
# `make lint`):
#   1. hadolint on the Dockerfile;
#   2. yamllint on deploy/ and the chart's YAML (.yamllint);
#   3. `helm lint --strict` and `helm template` of every scenario in
#      helm/central-registry/ci/*.yaml, each rendering validated by
#      `kubernetes-validate --strict` (unknown fields are errors). The ServiceMonitor is a
#      CRD of the Prometheus Operator with no schema there: it is the one kind allowed to
#      go unvalidated, and the scenarios must render at least one so it stays exercised;
#   4. the manifests of deploy/observability, the chart with its values there, and the
#      Grafana dashboard ConfigMap made from deploy/grafana/central-registry.json the way
#      `make observability-up` makes it.
# The tools are installed by scripts/ensure-k8s-tools.sh into .tools/ and .venv/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=$(scripts/ensure-k8s-tools.sh --print-bin)
helm=$(command -v helm || echo "$bin/helm")
kubectl=$(command -v kubectl || echo "$bin/kubectl")
venv="$root/.venv/bin"
chart=helm/central-registry
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

fail() {
  echo "lint-k8s: $*" >&2
  failed=1
}

# Runs kubernetes-validate --strict on a file; only a ServiceMonitor may lack a schema.
validate() {
  local file=$1 out
  if ! out=$("$venv/kubernetes-validate" --strict --quiet "$file" 2>&1); then
    echo "$out" | grep -E '^(ERROR|WARN)' >&2 || echo "$out" >&2
    fail "$file does not validate"
    return
  fi
  if echo "$out" | grep '^WARN' | grep -v 'find schema for kind ServiceMonitor with api version monitoring.coreos.com/v1' >&2; then
    fail "$file: kubernetes-validate warned (see above)"
  fi
}

echo "hadolint Dockerfile"
"$venv/hadolint" Dockerfile || fail "hadolint found problems in the Dockerfile"

# The image builds with the Rust the workspace pins.
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
grep -q "^ARG RUST_VERSION=$channel\$" Dockerfile ||
  fail "the Dockerfile's RUST_VERSION is not rust-toolchain.toml's channel $channel"
chef=$(sed -n 's/^CARGO_CHEF_VERSION ?= *//p' mk/kubernetes.mk)
grep -q "^ARG CARGO_CHEF_VERSION=$chef\$" Dockerfile ||
  fail "the Dockerfile's CARGO_CHEF_VERSION is not mk/kubernetes.mk's $chef"

echo "yamllint deploy/ and $chart"
"$venv/yamllint" --strict deploy "$chart/values.yaml" "$chart/Chart.yaml" "$chart/ci" .yamllint ||
  fail "yamllint found problems"

service_monitors=0
for values in "$chart"/ci/*.yaml; do
  scenario=$(basename "$values" .yaml)
  echo "helm lint + template + kubernetes-validate: $scenario"
  "$helm" lint --strict --quiet "$chart" -f "$values" >"$work/lint.log" 2>&1 || {
    cat "$work/lint.log" >&2
    fail "helm lint failed for $scenario"
  }
  rendered="$work/$scenario.yaml"
  if ! "$helm" template central-registry "$chart" --namespace central-registry \
    -f "$values" >"$rendered" 2>"$work/template.log"; then
    cat "$work/template.log" >&2
    fail "helm template failed for $scenario"
    continue
  fi
  validate "$rendered"
  service_monitors=$((service_monitors + $(grep -c '^kind: ServiceMonitor$' "$rendered" || true)))
done
[ "$service_monitors" -gt 0 ] || fail "no scenario in $chart/ci renders the ServiceMonitor"

# A chart that renders without a database must refuse to (not start a registry on SQLite
# in every pod, each with its own data).
if "$helm" template central-registry "$chart" --set postgres.enabled=false >/dev/null 2>&1; then
  fail "the chart renders with neither postgres.enabled nor database.existingSecret"
fi

# values.schema.json refuses what the binaries would refuse at start, and typos.
for bad in 'registry.defaultTtl=ten seconds' 'registry.replicas=2' 'otel.protocol=udp' \
  'dns.ttl=500ms' 'dns.domain=my consul'; do
  if "$helm" template central-registry "$chart" --set "$bad" >/dev/null 2>&1; then
    fail "values.schema.json accepts --set '$bad'"
  fi
done

# The DNS settings the registry would refuse at start (or that clash on the Service) fail
# the install instead: DNS on the HTTP port, and DNS (which has no tokens) while reads need
# a token, unless dns.allowUnauthenticated says so.
for bad in 'dns.enabled=true,dns.port=8000' \
  'dns.enabled=true,auth.enabled=true,auth.readToken=read'; do
  if "$helm" template central-registry "$chart" --set "$bad" >/dev/null 2>&1; then
    fail "the chart renders with --set '$bad'"
  fi
done

echo "kubernetes-validate deploy/observability and the dashboard ConfigMap"
validate deploy/observability/jaeger.yaml
# The chart as `make helm-install HELM_VALUES=deploy/observability/...` installs it.
"$helm" lint --strict --quiet "$chart" -f deploy/observability/central-registry-values.yaml \
  >"$work/lint.log" 2>&1 || {
  cat "$work/lint.log" >&2
  fail "helm lint failed with deploy/observability/central-registry-values.yaml"
}
"$helm" template central-registry "$chart" --namespace central-registry \
  -f deploy/observability/central-registry-values.yaml >"$work/observability.yaml"
validate "$work/observability.yaml"
KUBECONFIG=/dev/null "$kubectl" create configmap central-registry-dashboard \
  --from-file=deploy/grafana/central-registry.json --dry-run=client -o yaml \
  >"$work/dashboard.yaml"
validate "$work/dashboard.yaml"

if [ "$failed" != 0 ]; then
  echo "lint-k8s: FAILED" >&2
  exit 1
fi
echo "lint-k8s: ok"
