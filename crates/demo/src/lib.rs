//! The demo of central-registry: the seed's three services (`sum`, `mult`, `concat`) and
//! the client that runs the seed's flow and the resilience story. Built only on
//! `registry-client` and `registry-api`, like any service that uses the registry.

pub mod cluster;
pub mod fault;
pub mod scenario;
pub mod service;

/// Logging for the demo binaries: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json`
/// for JSON lines, readable lines otherwise; always on stderr.
pub fn init_logging() {
    init_logging_with("info");
}

/// [`init_logging`] with another default level when `RUST_LOG` is unset.
pub fn init_logging_with(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
