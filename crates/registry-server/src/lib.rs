//! The central-registry server as a library; `main.rs` is a thin wrapper around it.
//!
//! How the modules fit together, from admission to the store, the view and the other
//! replicas: docs/architecture.md.

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
#[doc(hidden)]
pub mod testing;
pub mod view;
pub mod workers;
pub mod writer;

pub use app::Application;
pub use config::Settings;
