//! The demo of central-registry: the seed's three services (`sum`, `mult`, `concat`) and
//! the client that runs the seed's flow and the resilience story. Built on
//! `registry-client` and `registry-api`, like any service that uses the registry (with
//! `telemetry` for logs and traces, and `registry-cli` for the status table it prints).

pub mod cluster;
pub mod fault;
pub mod scenario;
pub mod service;

/// Logging and tracing for the demo binaries ([`telemetry::init`]): `RUST_LOG` filters
/// (default `info`), `LOG_FORMAT=json` for JSON lines, readable lines otherwise; always on
/// stderr. `OTEL_*` turns on the trace export; keep the guard until exit.
pub fn init_logging(binary: &str) -> telemetry::TelemetryGuard {
    init_logging_with(binary, "info")
}

/// [`init_logging`] with another default level when `RUST_LOG` is unset.
pub fn init_logging_with(binary: &str, default_level: &str) -> telemetry::TelemetryGuard {
    use telemetry::{LogFormat, TelemetryOptions};
    telemetry::init(TelemetryOptions {
        default_filter: default_level.to_owned(),
        // Readable unless JSON is asked for, even off a terminal: the demo is read by people.
        format: Some(LogFormat::from_env().unwrap_or(LogFormat::Pretty)),
        ..TelemetryOptions::new(binary)
    })
}
