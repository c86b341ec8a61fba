//! Logging and tracing set up once (see [`registry_client::telemetry`]): `RUST_LOG`
//! filters, `LOG_FORMAT` picks pretty or JSON lines, `OTEL_*` turns on the OTLP export.

use registry_client::telemetry::{self, TelemetryGuard, TelemetryOptions};

use crate::config::LogFormat;

/// Installs the global subscriber; without `LOG_FORMAT`, pretty on a terminal, JSON
/// otherwise. Logs go to stderr so command output on stdout stays clean. Keep the guard
/// until exit: dropping it flushes the spans not exported yet.
pub fn init(format: Option<LogFormat>) -> TelemetryGuard {
    let mut options = TelemetryOptions::new("registry");
    options.format = format.map(|format| match format {
        LogFormat::Json => telemetry::LogFormat::Json,
        LogFormat::Pretty => telemetry::LogFormat::Pretty,
    });
    telemetry::init(options)
}
