//! W3C trace context (`traceparent`) carried from an incoming request to the calls it
//! makes, so one request through several services reads as one trace.
//!
//! A service runs each request inside [`in_trace`] with the `traceparent` it received;
//! [`ServiceClient`](crate::caller::ServiceClient) then sends a child of it on every call
//! (a new trace when there is none).
//!
//! The context is the OpenTelemetry [`Context`] attached to the future (not an argument
//! threaded through every function), so it cannot leak from one request to another when
//! tasks move between threads. When the binary exports traces
//! ([`crate::telemetry`]), the `tracing` span entered is that context, and outgoing calls
//! send the id of the client span ([`outgoing_header`]). Work spawned onto another task
//! does not inherit it; wrap that work in [`in_trace`] too.
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

use std::fmt;
use std::future::Future;

use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A parsed `traceparent` header: version 00, trace id, parent span id, flags.
///
/// [`Display`](fmt::Display) writes the header value (lowercase hex, as the spec asks).
///
/// ```
/// use registry_client::trace::TraceParent;
///
/// let context = TraceParent { trace_id: 0xabc, span_id: 0x42, sampled: true };
/// assert_eq!(
///     context.to_string(),
///     "00-00000000000000000000000000000abc-0000000000000042-01"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The id of the whole trace, shared by every span of it (never 0 once parsed).
    pub trace_id: u128,
    /// The id of the span that sent the header: the parent of the receiver's spans
    /// (never 0 once parsed).
    pub span_id: u64,
    /// The `sampled` flag: whether the caller records the trace.
    pub sampled: bool,
}

impl TraceParent {
    /// A new trace with a random trace id and span id, sampled.
    ///
    /// ```
    /// use registry_client::trace::TraceParent;
    ///
    /// let (a, b) = (TraceParent::new_root(), TraceParent::new_root());
    /// assert_ne!(a.trace_id, b.trace_id);
    /// assert!(a.sampled);
    /// assert_eq!(TraceParent::parse(&a.to_string()), Some(a));
    /// ```
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero(rand_u128()),
            span_id: nonzero(rand_u64()),
            sampled: true,
        }
    }

    /// The same trace with a new span id (and the same flags): the context of an
    /// outgoing call.
    ///
    /// ```
    /// use registry_client::trace::TraceParent;
    ///
    /// let parent = TraceParent::new_root();
    /// let child = parent.child();
    /// assert_eq!((child.trace_id, child.sampled), (parent.trace_id, parent.sampled));
    /// assert_ne!(child.span_id, parent.span_id);
    /// ```
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero(rand_u64()),
            ..*self
        }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; `None` for anything else (all-zero ids
    /// included), as the W3C spec asks receivers to ignore such headers.
    ///
    /// ```
    /// use registry_client::trace::TraceParent;
    ///
    /// let t = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    ///     .expect("a valid header");
    /// assert!(t.sampled);
    /// assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    /// assert_eq!(t.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    ///
    /// // Uppercase hex, a zero span id, an unknown version: ignored.
    /// assert_eq!(TraceParent::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), None);
    /// assert_eq!(TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"), None);
    /// assert_eq!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), None);
    /// ```
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

impl TraceParent {
    /// The `traceparent` of `headers`, if there is a valid one.
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<Self> {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
    }

    /// This context as a remote OpenTelemetry span context.
    pub fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.span_id),
            if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )
    }

    /// The context of an OpenTelemetry span, if valid.
    pub fn of(span_context: &SpanContext) -> Option<Self> {
        span_context.is_valid().then(|| Self {
            trace_id: u128::from_be_bytes(span_context.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(span_context.span_id().to_bytes()),
            sampled: span_context.is_sampled(),
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

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

/// Makes `span` (a server span, not entered yet) a child of the `traceparent` in
/// `headers`, if there is a valid one; answers it. Without trace export this only parses.
pub fn continue_from(
    span: &tracing::Span,
    headers: &reqwest::header::HeaderMap,
) -> Option<TraceParent> {
    let parent = TraceParent::from_headers(headers)?;
    let _ = span.set_parent(Context::new().with_remote_span_context(parent.span_context()));
    Some(parent)
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

fn rand_u64() -> u64 {
    rand::random()
}

fn rand_u128() -> u128 {
    rand::random()
}

fn nonzero<T: PartialEq + From<u8>>(value: T) -> T {
    if value == T::from(0) {
        T::from(1)
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

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
