//! The central-registry server as a library; `main.rs` is a thin wrapper around it.

pub mod app;
pub mod check_targets;
pub mod clock;
pub mod config;
pub mod heartbeats;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod operator;
pub mod rate_limit;
pub mod record;
pub mod replication;
pub mod serve;
pub mod store;
pub mod telemetry;
// Test databases; only in test builds (the `testing` feature, which the workspace's tests
// enable from their dev-dependencies).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
pub mod view;
pub mod workers;

pub use app::Application;
pub use config::Settings;
