# central-registry: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help build test lint fmt demo run clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-16s %s\n", $$1, $$2}'

build: ## Build every binary (debug)
	$(CARGO) build --workspace --bins

test: ## Run every test (finds or starts Postgres, installs the tools the tests use; SQLite is embedded)
	@scripts/ensure-tools.sh && \
	  DATABASE_URL="$$(scripts/ensure-postgres.sh)" && export DATABASE_URL && \
	  echo "tests use Postgres at $${DATABASE_URL%%@*}@..." && \
	  $(CARGO) build --workspace --bins && \
	  $(CARGO) test --workspace --no-fail-fast

lint: lint-k8s ## cargo fmt --check, clippy with warnings as errors, the Kubernetes files (lint-k8s), no file pointing outside the repository
	scripts/check-self-contained.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

run: ## Run the registry on an embedded SQLite file (./registry.db) on port 8000
	$(CARGO) run --bin registry

demo: build ## The resilience story: local registry (SQLite) + sum, mult, 2x concat, broken and healed
	@target/debug/demo-client --scenario resilience

clean: ## Remove build output
	$(CARGO) clean

# Targets of one area each (Kubernetes, benchmarks, ...) live in mk/*.mk.
include $(sort $(wildcard mk/*.mk))
