//! The central-registry server as a library; `main.rs` is a thin wrapper around it.
//!
//! Public: what the `registry` binary and the tests need (starting an [`Application`],
//! its settings, and the store with its conformance suite's building blocks). The rest
//! is private, so the compiler reports what nothing uses.

pub mod app;
mod check_targets;
pub mod clock;
pub mod config;
mod dns;
mod heartbeats;
mod http;
pub mod lifecycle;
mod metrics;
mod paging;
mod rate_limit;
pub mod record;
mod replication;
pub mod self_preservation;
mod serve;
pub mod store;
mod tally;
// Test databases; only in test builds (the `testing` feature, which the workspace's tests
// enable from their dev-dependencies).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
mod view;
mod workers;
mod writer;

pub use app::Application;
pub use config::Settings;
pub use heartbeats::WRITE_RENEWAL_AFTER;
