//! W3C trace context (`traceparent`) carried from an incoming request to the calls it
//! makes, so one request through several services reads as one trace.
//!
//! A service runs each request inside [`in_trace`] with the `traceparent` it received;
//! [`ServiceClient`](crate::caller::ServiceClient) then sends a child of it on every call
//! (a new trace when there is none).
//!
//! The context is the OpenTelemetry [`Context`] attached to the future (not an argument
//! threaded through every function), so it cannot leak from one request to another when
//! tasks move between threads. When the binary exports traces (the `telemetry` crate sets
//! that up, and its `continue_from` makes a server span the child of the header received),
//! the `tracing` span entered is that context, and outgoing calls send the id of the
//! client span ([`outgoing_header`]). Work spawned onto another task does not inherit it;
//! wrap that work in [`in_trace`] too.
//!
//! This module only carries the context: installing a subscriber or an exporter is the
//! binary's business, not that of a library every service embeds.
//!
//! ```
//! use registry_client::trace::{self, TraceParent};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // In a request handler: the header received, or a new trace when it is missing or bad.
//! let received = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! let parent = received.and_then(TraceParent::parse).unwrap_or_else(TraceParent::new_root);
//! let header = trace::in_trace(parent, async {
//!     // ... what ServiceClient sends on each call made while handling the request:
//!     trace::outgoing().to_string()
//! })
//! .await;
//! assert!(header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
//! # }
//! ```

use std::future::Future;

use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header's value, re-exported so that a caller of this module names it without a
/// second dependency.
pub use registry_api::TraceParent;

/// Runs `work` with `parent` as the current trace context: [`current`] answers it, and
/// calls made by `work` through [`ServiceClient`](crate::caller::ServiceClient) send
/// children of it. Nested calls replace the context for the inner work only.
///
/// ```
/// use registry_client::trace::{self, TraceParent};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let parent = TraceParent::new_root();
/// let seen = trace::in_trace(parent, async { trace::current() }).await;
/// assert_eq!(seen, Some(parent));
/// assert_eq!(trace::current(), None, "only inside");
/// # }
/// ```
pub async fn in_trace<F: Future>(parent: TraceParent, work: F) -> F::Output {
    let context = Context::current().with_remote_span_context(parent.span_context());
    work.with_context(context).await
}

/// The current trace context, if the task runs inside [`in_trace`]; `None` elsewhere
/// (also outside any Tokio task).
///
/// ```
/// use registry_client::trace::{self, TraceParent};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(trace::current(), None);
/// let parent = TraceParent::new_root();
/// trace::in_trace(parent, async {
///     let trace_id = trace::current().map(|t| format!("{:032x}", t.trace_id));
///     assert_eq!(trace_id, Some(format!("{:032x}", parent.trace_id))); // e.g. for a log field
/// })
/// .await;
/// # }
/// ```
pub fn current() -> Option<TraceParent> {
    let context = Context::current();
    let span = context.span();
    TraceParent::of(span.span_context())
}

/// The `traceparent` to send for a client `span`: the span itself when it is an exported
/// OpenTelemetry span, else a new child of `fallback`.
pub fn header_for(span: &tracing::Span, fallback: &TraceParent) -> String {
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    match TraceParent::of(span_context).filter(|_| !span_context.is_remote()) {
        Some(own) => own.to_string(),
        None => fallback.child().to_string(),
    }
}

/// The `traceparent` to send on a call made now: the span entered when it is a local
/// OpenTelemetry span (traces are exported), else a child of [`current`], else `None`.
pub fn outgoing_header() -> Option<String> {
    let context = Context::current();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() && !span_context.is_remote() {
        TraceParent::of(span_context).map(|t| t.to_string())
    } else {
        current().map(|t| t.child().to_string())
    }
}

/// The `traceparent` for an outgoing call: a child of the current context, or a new trace.
/// For calls made without [`ServiceClient`](crate::caller::ServiceClient).
///
/// ```
/// use registry_client::trace::{self, TraceParent};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let parent = TraceParent::new_root();
/// let sent = trace::in_trace(parent, async { trace::outgoing() }).await;
/// assert_eq!(sent.trace_id, parent.trace_id);
/// assert_ne!(sent.span_id, parent.span_id);
/// // e.g. request.header("traceparent", sent.to_string())
/// # }
/// ```
pub fn outgoing() -> TraceParent {
    current().map_or_else(TraceParent::new_root, |t| t.child())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outgoing_calls_continue_the_current_trace() {
        let parent = TraceParent::new_root();
        let child = in_trace(parent, async { outgoing() }).await;
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        let unrelated = outgoing();
        assert_ne!(
            unrelated.trace_id, parent.trace_id,
            "outside a trace, a new one"
        );
    }
}
