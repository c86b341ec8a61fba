# `make bench`: the registry's speed and memory against its targets (docs/performance.md).
# Release build, wrk as the load generator (installed here as root), Postgres
# found or started by scripts/ensure-postgres.sh; writes target/bench/latest.json.

.PHONY: bench bench-quick

bench: ## Measure speed and memory (release build, SQLite and Postgres; about 5 minutes)
	@$(MAKE) --no-print-directory bench-run BENCH_ARGS=

bench-quick: ## Smoke run of the benchmark with small counts (figures mean nothing)
	@$(MAKE) --no-print-directory bench-run BENCH_ARGS=--quick

.PHONY: bench-run
bench-run:
	@if ! command -v wrk >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing wrk with apt-get..." >&2; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || \
	    { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2; }; \
	  else \
	    echo "make bench needs wrk: sudo apt-get install wrk" >&2; exit 1; \
	  fi; \
	fi
	$(CARGO) build --release -p registry-server -p registry-bench --bin registry --bin registry-bench
	@DATABASE_URL="$$(scripts/ensure-postgres.sh)" && export DATABASE_URL && \
	  "$${CARGO_TARGET_DIR:-target}/release/registry-bench" $(BENCH_ARGS)
