# `make bench`: the registry's speed and memory against its targets (docs/performance.md).
# Release build, wrk as the load generator (installed here as root), dnsperf and NSD for
# the DNS row, etcd and protoc for the etcd rows (installed here as root; without them
# the bench skips those rows and says why), Postgres found or started by
# scripts/ensure-postgres.sh (its pgbench gives the pgbench rows); writes
# target/bench/latest.json.

.PHONY: bench bench-quick bench-instructions bench-scale

bench: ## Measure speed and memory (release build, SQLite and Postgres; about 6 minutes)
	@$(MAKE) --no-print-directory bench-run BENCH_ARGS=

bench-quick: ## Smoke run of the benchmark with small counts (figures mean nothing)
	@$(MAKE) --no-print-directory bench-run BENCH_ARGS=--quick

.PHONY: bench-run
bench-run:
	@scripts/ensure-bench-tools.sh "make bench" wrk=wrk
	@# Debian's nsd and etcd packages may also start services of their own; the bench
	@# starts its own on free ports and leaves those alone.
	@scripts/ensure-bench-tools.sh --optional "the DNS row" dnsperf=dnsperf nsd=nsd
	@# protoc builds the bench's etcd client (the etcd feature, which only this target
	@# enables: make test and CI build without protoc).
	@scripts/ensure-bench-tools.sh --optional "the etcd rows" etcd=etcd-server protoc=protobuf-compiler
	$(CARGO) build --release -p registry-server -p registry-bench --bin registry --bin registry-bench \
	  $$(command -v protoc >/dev/null 2>&1 && echo --features registry-bench/etcd)
	@DATABASE_URL="$$(scripts/ensure-postgres.sh)" && export DATABASE_URL && \
	  "$${CARGO_TARGET_DIR:-target}/release/registry-bench" $(BENCH_ARGS)

# Instructions per request under callgrind: the measure of a change to the request path
# that the machine's load does not move (docs/performance.md). Not part of make test.
bench-instructions: ## Instructions per lookup, heartbeat, /healthz, registration (callgrind; a few minutes)
	@scripts/ensure-bench-tools.sh "make bench-instructions" valgrind=valgrind
	$(CARGO) build --release -p registry-server -p registry-bench --bin registry --bin registry-bench
	@DATABASE_URL="$$(scripts/ensure-postgres.sh)" && export DATABASE_URL && \
	  "$${CARGO_TARGET_DIR:-target}/release/registry-bench" --instructions

# The registry at scale: SCALE_INSTANCES instances (100,000 services of 10 by default) on
# a fresh Postgres database with two replicas, and its dashboard in headless Chromium
# (installed here as root; without it the bench skips those rows and says why); writes
# target/bench/scale.json (docs/performance.md). Long (about 7 minutes at the default),
# so not part of make bench, make test or CI.
SCALE_INSTANCES ?= 1000000
bench-scale: ## The registry at a million instances, two replicas on Postgres (SCALE_INSTANCES=N for another size; about 7 minutes)
	@scripts/ensure-bench-tools.sh "make bench-scale" wrk=wrk
	@# The dashboard rows: Debian's Chromium driven by the browser test's playwright-core.
	@scripts/ensure-bench-tools.sh --optional "the dashboard rows" /usr/bin/chromium=chromium \
	  node=nodejs npm=npm tests/browser/node_modules/playwright-core=npm
	$(CARGO) build --release -p registry-server -p registry-bench --bin registry --bin registry-bench
	@DATABASE_URL="$$(scripts/ensure-postgres.sh)" && export DATABASE_URL && \
	  "$${CARGO_TARGET_DIR:-target}/release/registry-bench" --scale --instances $(SCALE_INSTANCES)
