//! The server side of W3C trace context: the span of a request received becomes a child
//! of the `traceparent` its caller sent, so that the caller's trace goes on through this
//! process. Beside the set-up because only binaries that export traces and serve requests
//! need it (the registry and the demo services), never a library.

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt as _;
use registry_api::TraceParent;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes `span` (a server span, not entered yet) a child of the `traceparent` in
/// `headers`, if there is a valid one; answers it. Without trace export this only parses,
/// so the answer still serves to carry the trace on (`registry_client::trace::in_trace`).
///
/// ```
/// use http::HeaderMap;
/// use registry_api::TraceParent;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(
///     "traceparent",
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?,
/// );
/// let span = tracing::info_span!("request");
/// let parent = telemetry::continue_from(&span, &headers);
/// assert_eq!(parent.map(|p| p.trace_id), Some(0x4bf92f3577b34da6a3ce929d0e0e4736));
/// assert_eq!(telemetry::continue_from(&span, &HeaderMap::new()), None);
/// # let _: Option<TraceParent> = parent;
/// # Ok::<(), http::header::InvalidHeaderValue>(())
/// ```
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) -> Option<TraceParent> {
    let parent = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(TraceParent::parse)?;
    let _ = span.set_parent(Context::new().with_remote_span_context(parent.span_context()));
    Some(parent)
}
