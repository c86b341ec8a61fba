//! Logging and tracing set up once per binary, shared by the registry and the demo.
//!
//! A crate of its own, apart from `registry-client`: a library that services embed must
//! not install a global subscriber or an exporter behind their back, nor pull the
//! OpenTelemetry SDK into every one of them. Binaries call [`init`] once at the start of
//! `main`; servers make each request's span continue the caller's trace with
//! [`continue_from`].
//!
//! `RUST_LOG` filters the log lines, `LOG_FORMAT` (`json` or `pretty`) picks their format
//! (without it: pretty on a terminal, JSON lines otherwise), always on stderr. JSON lines
//! carry a `trace_id` field when they are written inside a trace. Log lines are made of
//! events only: spans go to traces, not into log lines, so that a request whose handling
//! logs nothing costs no span bookkeeping at all when traces are not exported.
//!
//! Traces are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; otherwise no exporter is created.
//! `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` (default) or `grpc`,
//! `OTEL_SERVICE_NAME` the service name (default: the name the binary passes),
//! `OTEL_TRACES_SAMPLER` and `OTEL_BSP_*` are read by the OpenTelemetry SDK. Keep the
//! returned [`TelemetryGuard`] alive until the end of `main`: dropping it flushes the
//! spans still queued.

mod incoming;
mod per_event;

use std::fmt;
use std::io::IsTerminal;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{FilterExt as _, filter_fn};

use per_event::DecidedPerEvent;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use incoming::continue_from;

/// How log lines are written (`LOG_FORMAT`, or `--log-format` of the registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` when it is `json` or `pretty`.
    pub fn from_env() -> Option<Self> {
        let raw = std::env::var("LOG_FORMAT").ok()?;
        // The names `--log-format` accepts, parsed the same way.
        <Self as clap::ValueEnum>::from_str(raw.trim(), false).ok()
    }
}

/// What [`init`] needs from the binary.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// The service name when `OTEL_SERVICE_NAME` is unset (the binary's name).
    pub service_name: String,
    /// The log filter when `RUST_LOG` is unset.
    pub default_filter: String,
    /// The log format; `None`: `LOG_FORMAT`, else by whether stderr is a terminal.
    pub format: Option<LogFormat>,
}

impl TelemetryOptions {
    /// Options for `service_name`, logging at `info` by default.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            default_filter: "info".into(),
            format: None,
        }
    }
}

/// Flushes and stops the trace export when dropped (or on [`TelemetryGuard::shutdown`]).
#[must_use = "dropping the guard stops the trace export"]
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported (an OTLP endpoint was configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter; later calls do nothing.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.force_flush() {
                eprintln!("could not flush the last spans: {error}");
            }
            if let Err(error) = provider.shutdown() {
                eprintln!("could not stop the trace exporter: {error}");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether the environment asks for an OTLP trace export.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The layer that writes log lines (events only: spans go to traces) in `format` to
/// `writer`, as `filter` keeps them.
fn log_lines<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let filter = DecidedPerEvent(filter.and(filter_fn(|metadata| metadata.is_event())));
    match format {
        LogFormat::Json => fmt
            .json()
            .event_format(JsonWithTraceId(Format::default().json()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => fmt.with_filter(filter).boxed(),
    }
}

/// Installs the global subscriber (logs, and spans to OTLP when configured) and the W3C
/// TraceContext propagator. A second call installs nothing and returns an idle guard.
pub fn init(options: TelemetryOptions) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(&options.default_filter));
    let format =
        options
            .format
            .or_else(LogFormat::from_env)
            .unwrap_or(if std::io::stderr().is_terminal() {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            });
    let mut layers = vec![log_lines(format, filter, std::io::stderr)];
    let mut setup_error = None;
    let provider = if otlp_configured() {
        match build_provider(&options.service_name) {
            Ok(provider) => Some(provider),
            Err(error) => {
                setup_error = Some(error);
                None
            }
        }
    } else {
        None
    };
    if let Some(provider) = &provider {
        let tracer = provider.tracer(service_name(&options.service_name));
        // Spans go out from `info` on, whatever `RUST_LOG` keeps in the logs.
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(DecidedPerEvent(
                tracing_subscriber::filter::LevelFilter::INFO,
            ))
            .boxed();
        layers.push(otel);
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return TelemetryGuard::default();
    }
    match (&provider, setup_error) {
        (Some(provider), _) => {
            opentelemetry::global::set_tracer_provider(provider.clone());
            let protocol = Some(protocol()).filter(|p| !p.is_empty());
            let protocol = protocol.as_deref().unwrap_or("http/protobuf");
            tracing::info!(protocol, "traces are exported over OTLP");
        }
        (None, Some(error)) => tracing::warn!(
            %error,
            "could not set up the OTLP trace export; traces are not exported"
        ),
        (None, None) => tracing::info!("traces are not exported (no OTEL_EXPORTER_OTLP_ENDPOINT)"),
    }
    TelemetryGuard { provider }
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else empty.
fn protocol() -> String {
    std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .map(|protocol| protocol.trim().to_owned())
        .unwrap_or_default()
}

fn service_name(default: &str) -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn build_provider(default_name: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    let exporter = match protocol().as_str() {
        "grpc" => SpanExporter::builder().with_tonic().build(),
        "" | "http/protobuf" => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
        other => return Err(format!("unsupported OTLP protocol '{other}'")),
    }
    .map_err(|error| error.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name(default_name))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The JSON format of `tracing-subscriber`, plus `trace_id` (the OpenTelemetry context
/// current while the event is written: the span entered, or the context of
/// `registry_client::trace::in_trace`).
struct JsonWithTraceId(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTraceId
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let context = opentelemetry::Context::current();
        let span = context.span();
        let span_context = span.span_context();
        let trimmed = line.trim_end();
        match trimmed.strip_suffix('}') {
            Some(body) if span_context.is_valid() => writeln!(
                writer,
                "{body},\"trace_id\":\"{}\"}}",
                span_context.trace_id()
            ),
            _ => writer.write_str(&line),
        }
    }
}
