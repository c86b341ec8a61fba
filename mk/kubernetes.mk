# Kubernetes: the image, a kind (or minikube) cluster, the Helm chart, the observability
# stack, and the checks CI runs on all of them without a cluster (docs/operations.md).

.PHONY: image kind-up kind-load helm-install demo-k8s observability-up k8s-down lint-k8s image-check

IMAGE ?= central-registry:0.1.0
# kind (default) or minikube: where `make kind-load` puts the image.
CLUSTER ?= kind
KIND_CLUSTER ?= central-registry
K8S_NAMESPACE ?= central-registry
HELM_RELEASE ?= central-registry
# Extra values files or flags for helm-install, e.g.
# HELM_VALUES=deploy/observability/central-registry-values.yaml
HELM_VALUES ?=
HELM_ARGS ?=
OBSERVABILITY_NAMESPACE ?= observability
# Keep in step with CARGO_CHEF_VERSION in the Dockerfile.
CARGO_CHEF_VERSION ?= 0.1.78
# The binaries the Dockerfile copies into the image.
IMAGE_BINS = $(sort $(patsubst target/release/%,%,$(shell grep -o 'target/release/[a-z_-]*' Dockerfile)))

# helm and kubectl: the ones on PATH, else the ones scripts/ensure-k8s-tools.sh installs.
K8S_TOOLS = K8S_BIN="$$(scripts/ensure-k8s-tools.sh --print-bin)" && \
  HELM="$$(command -v helm || echo "$$K8S_BIN/helm")" && \
  KUBECTL="$$(command -v kubectl || echo "$$K8S_BIN/kubectl")"

image: ## Build the image holding every binary with Docker (IMAGE=central-registry:0.1.0)
	docker build -t $(IMAGE) .

kind-up: ## Create the kind cluster of deploy/kind/cluster.yaml (1 control plane, 2 workers)
	@if kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "kind cluster $(KIND_CLUSTER) is already up"; \
	else \
	  kind create cluster --name $(KIND_CLUSTER) --config deploy/kind/cluster.yaml --wait 120s; \
	fi

kind-load: image ## Load the image into the cluster (CLUSTER=kind or CLUSTER=minikube)
	@case '$(CLUSTER)' in \
	  kind) kind load docker-image $(IMAGE) --name $(KIND_CLUSTER) ;; \
	  minikube) minikube image load $(IMAGE) ;; \
	  *) echo "CLUSTER must be kind or minikube" >&2; exit 1 ;; \
	esac

helm-install: ## helm upgrade --install the chart (namespace central-registry) and wait; HELM_VALUES=files
	@$(K8S_TOOLS) && \
	  repo="$${IMAGE%:*}" && tag="$${IMAGE##*:}" && \
	  "$$HELM" upgrade --install $(HELM_RELEASE) helm/central-registry \
	    --namespace $(K8S_NAMESPACE) --create-namespace \
	    --set image.repository="$$repo" --set image.tag="$$tag" \
	    $(foreach f,$(HELM_VALUES),-f $(f)) $(HELM_ARGS) \
	    --wait --timeout 10m
helm-install: export IMAGE := $(IMAGE)

demo-k8s: kind-load helm-install ## Build, load, install, wait for the demo client Job and print its log
	@$(K8S_TOOLS) && \
	  job="$$("$$KUBECTL" -n $(K8S_NAMESPACE) get jobs \
	    -l app.kubernetes.io/instance=$(HELM_RELEASE),app.kubernetes.io/component=demo-client \
	    -o jsonpath='{.items[-1:].metadata.name}')" && \
	  test -n "$$job" || { echo "no demo client Job (demo.enabled=false?)" >&2; exit 1; }; \
	  echo "waiting for job/$$job..."; \
	  "$$KUBECTL" -n $(K8S_NAMESPACE) wait --for=condition=complete --timeout=5m "job/$$job"; ok=$$?; \
	  "$$KUBECTL" -n $(K8S_NAMESPACE) logs "job/$$job"; \
	  "$$KUBECTL" -n $(K8S_NAMESPACE) get pods -l app.kubernetes.io/instance=$(HELM_RELEASE) -o wide; \
	  exit $$ok

observability-up: ## Prometheus + Grafana (with our dashboard) and Jaeger in namespace observability
	@$(K8S_TOOLS) && \
	  "$$KUBECTL" create namespace $(OBSERVABILITY_NAMESPACE) --dry-run=client -o yaml | "$$KUBECTL" apply -f - && \
	  "$$KUBECTL" -n $(OBSERVABILITY_NAMESPACE) apply -f deploy/observability/jaeger.yaml && \
	  "$$KUBECTL" -n $(OBSERVABILITY_NAMESPACE) create configmap central-registry-dashboard \
	    --from-file=deploy/grafana/central-registry.json --dry-run=client -o yaml | \
	    "$$KUBECTL" label --local -f - grafana_dashboard=1 -o yaml | \
	    "$$KUBECTL" -n $(OBSERVABILITY_NAMESPACE) apply -f - && \
	  "$$HELM" upgrade --install kps kube-prometheus-stack \
	    --repo https://prometheus-community.github.io/helm-charts \
	    --namespace $(OBSERVABILITY_NAMESPACE) \
	    -f deploy/observability/kube-prometheus-stack-values.yaml --wait --timeout 10m && \
	  echo "Grafana: kubectl -n $(OBSERVABILITY_NAMESPACE) port-forward svc/kps-grafana 3000:80 (admin/admin)" && \
	  echo "Jaeger:  kubectl -n $(OBSERVABILITY_NAMESPACE) port-forward svc/jaeger 16686:16686" && \
	  echo "Then: make helm-install HELM_VALUES=deploy/observability/central-registry-values.yaml"

k8s-down: ## Uninstall the release and the observability stack; delete the kind cluster (CLUSTER=kind)
	-@$(K8S_TOOLS) && \
	  "$$HELM" uninstall $(HELM_RELEASE) --namespace $(K8S_NAMESPACE) --ignore-not-found; \
	  "$$HELM" uninstall kps --namespace $(OBSERVABILITY_NAMESPACE) --ignore-not-found; \
	  "$$KUBECTL" delete namespace $(OBSERVABILITY_NAMESPACE) --ignore-not-found
	@if [ '$(CLUSTER)' = kind ]; then kind delete cluster --name $(KIND_CLUSTER); fi

lint-k8s: ## hadolint, yamllint, helm lint + kubernetes-validate of every chart scenario (installs the tools)
	@scripts/lint-k8s.sh

image-check: ## The Dockerfile's build without Docker: cargo-chef recipe and cook, release build of its binaries
	@test -x .tools/bin/cargo-chef || { \
	  echo "installing cargo-chef $(CARGO_CHEF_VERSION) into .tools/ (a few minutes, once)..."; \
	  $(CARGO) install --locked --quiet cargo-chef --version $(CARGO_CHEF_VERSION) --root .tools; }
	@grep -q 'CARGO_CHEF_VERSION=$(CARGO_CHEF_VERSION)$$' Dockerfile || \
	  { echo "the Dockerfile pins another cargo-chef than CARGO_CHEF_VERSION=$(CARGO_CHEF_VERSION)" >&2; exit 1; }
	@test -n "$(IMAGE_BINS)" || { echo "no binary found in the Dockerfile" >&2; exit 1; }
	@# As in the image: prepare the recipe from the whole tree, cook it in an empty folder
	@# (cook writes a skeleton workspace there), then build the real binaries.
	@rm -rf target/image-check && mkdir -p target/image-check/cook
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(CARGO) chef prepare --recipe-path target/image-check/recipe.json
	cd target/image-check/cook && PATH="$(CURDIR)/.tools/bin:$$PATH" CARGO_TARGET_DIR=$(CURDIR)/target \
	  $(CARGO) chef cook --release --locked --recipe-path ../recipe.json
	$(CARGO) build --release --locked $(addprefix --bin ,$(IMAGE_BINS))
	@# The real binaries, not the skeleton's empty mains that cook built on the way.
	@for bin in $(IMAGE_BINS); do \
	  target/release/$$bin --version | grep -q "^$$bin " || \
	    { echo "target/release/$$bin is not the real $$bin" >&2; exit 1; }; \
	done
	@echo "image-check: recipe cooked, release build of $(IMAGE_BINS) ok"
