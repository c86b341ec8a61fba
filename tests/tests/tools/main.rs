//! End-to-end tests that drive a tool from outside the Rust workspace: Prometheus and
//! promtool (metrics, HTTP service discovery, the Grafana dashboard's queries), the
//! unmodified Consul clients py-consul and the npm `consul` (the Consul API), `dig` and
//! HAProxy (the DNS interface), Schemathesis (API fuzzing), Chromium with Node.js (the
//! dashboard in a browser), helm and PyYAML (the chart's contract with the binaries), and
//! `ip` as root (a network partition). `scripts/ensure-tools.sh` installs them; without
//! one, the tests that need it fail and say what is missing.
//!
//! One test binary rather than one per file, since linking each one dominates the build
//! of the tests; the others are in `e2e/`. Run one file's tests with a filter:
//! `cargo test -p registry-tests --test tools partition::`.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod api_fuzz;
mod browser_dashboard;
mod chart_contract;
mod consul_clients;
mod dashboard;
mod dns_dig;
mod eureka_clients;
mod haproxy_dns;
mod metrics;
mod partition;
mod prometheus_sd;
