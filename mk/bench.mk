# `make bench`: the registry's speed and memory against its targets (docs/performance.md).
# Release build, wrk as the load generator (installed here as root), dnsperf and NSD for
# the DNS row, etcd and protoc for the etcd rows (installed here as root; without them
# the bench skips those rows and says why), Postgres found or started by
# scripts/ensure-postgres.sh (its pgbench gives the pgbench rows); writes
# target/bench/latest.json.

.PHONY: bench bench-quick bench-instructions

bench: ## Measure speed and memory (release build, SQLite and Postgres; about 6 minutes)
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
	@# nsd is in /usr/sbin, not on every user's PATH. Debian's package also sets up its own
	@# nsd service; the bench starts one of its own on a free port and leaves that alone.
	@if ! command -v dnsperf >/dev/null 2>&1 || ! PATH="$$PATH:/usr/sbin:/sbin" command -v nsd >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing dnsperf and nsd with apt-get..." >&2; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf nsd >/dev/null 2>&1 || \
	    { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf nsd >&2; } || \
	    echo "dnsperf and nsd could not be installed: the DNS row is skipped" >&2; \
	  else \
	    echo "the DNS row needs dnsperf and nsd (sudo apt-get install dnsperf nsd): skipped" >&2; \
	  fi; \
	fi
	@# etcd's rows: Debian's etcd 3.4, and protoc to build the bench's etcd client (the
	@# etcd feature, which only this target enables: make test and CI build without
	@# protoc). Debian's package may also start its own etcd service; the bench starts
	@# one of its own on free ports and leaves that alone.
	@if ! PATH="$$PATH:/usr/sbin:/sbin" command -v etcd >/dev/null 2>&1 || ! command -v protoc >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing etcd-server and protobuf-compiler with apt-get..." >&2; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler >/dev/null 2>&1 || \
	    { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler >&2; } || \
	    echo "etcd-server and protobuf-compiler could not be installed: the etcd rows are skipped" >&2; \
	  else \
	    echo "the etcd rows need etcd and protoc (sudo apt-get install etcd-server protobuf-compiler): skipped" >&2; \
	  fi; \
	fi
	$(CARGO) build --release -p registry-server -p registry-bench --bin registry --bin registry-bench \
	  $$(command -v protoc >/dev/null 2>&1 && echo --features registry-bench/etcd)
	@DATABASE_URL="$$(scripts/ensure-postgres.sh)" && export DATABASE_URL && \
	  "$${CARGO_TARGET_DIR:-target}/release/registry-bench" $(BENCH_ARGS)

# Instructions per request under callgrind: the measure of a change to the request path
# that the machine's load does not move (docs/performance.md). Not part of make test.
bench-instructions: ## Instructions per lookup, heartbeat, /healthz, registration (callgrind; a few minutes)
	@if ! command -v valgrind >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing valgrind with apt-get..." >&2; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1 || \
	    { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >&2; }; \
	  else \
	    echo "make bench-instructions needs valgrind: sudo apt-get install valgrind" >&2; exit 1; \
	  fi; \
	fi
	$(CARGO) build --release -p registry-server -p registry-bench --bin registry --bin registry-bench
	@DATABASE_URL="$$(scripts/ensure-postgres.sh)" && export DATABASE_URL && \
	  "$${CARGO_TARGET_DIR:-target}/release/registry-bench" --instructions
