//! End-to-end tests that need nothing beyond Rust and Postgres: the HTTP API, the client
//! library, replicas, crashes and outages, tracing and the demo's story, against a
//! registry in this process or the real binaries.
//!
//! One test binary rather than one per file, since linking each one dominates the build
//! of the tests; the tests that drive an outside tool are in `tools/` (the other binary).
//! Run one file's tests with a filter: `cargo test -p registry-tests --test e2e replicas::`.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod caller;
mod consul;
mod crash_safety;
mod demo_scenario;
mod discovery;
mod dns_malformed;
mod dns_replicas;
mod dns_wire;
mod eureka;
mod failover;
mod heartbeats;
mod http_api;
mod lifecycle;
mod paging;
mod panic_routing;
mod registration;
mod registry_outage;
mod relearning;
mod replica_failures;
mod replicas;
mod restart_grace;
mod security;
mod seed_compat;
mod self_preservation;
mod shutdown;
mod smoke;
mod tracing;
