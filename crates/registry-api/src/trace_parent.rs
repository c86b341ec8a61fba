//! The W3C `traceparent` header, which carries one trace through every service a request
//! passes: the registry reads it on the requests it receives, the client sends it on the
//! calls it makes, so both sides share this one parser and writer.
//!
//! It also converts to and from OpenTelemetry's [`SpanContext`], the form in which the
//! client and the binaries' trace export hold the same context in process.

use std::fmt;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// A parsed `traceparent` header: version 00, trace id, parent span id, flags.
///
/// [`Display`](fmt::Display) writes the header value (lowercase hex, as the spec asks).
///
/// ```
/// use registry_api::TraceParent;
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
    /// use registry_api::TraceParent;
    ///
    /// let (a, b) = (TraceParent::new_root(), TraceParent::new_root());
    /// assert_ne!(a.trace_id, b.trace_id);
    /// assert!(a.sampled);
    /// assert_eq!(TraceParent::parse(&a.to_string()), Some(a));
    /// ```
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero(rand::random()),
            span_id: nonzero(rand::random()),
            sampled: true,
        }
    }

    /// The same trace with a new span id (and the same flags): the context of an
    /// outgoing call.
    ///
    /// ```
    /// use registry_api::TraceParent;
    ///
    /// let parent = TraceParent::new_root();
    /// let child = parent.child();
    /// assert_eq!((child.trace_id, child.sampled), (parent.trace_id, parent.sampled));
    /// assert_ne!(child.span_id, parent.span_id);
    /// ```
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero(rand::random()),
            ..*self
        }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; `None` for anything else (all-zero ids
    /// included), as the W3C spec asks receivers to ignore such headers.
    ///
    /// ```
    /// use registry_api::TraceParent;
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
    ///
    /// ```
    /// use registry_api::TraceParent;
    ///
    /// let parent = TraceParent::new_root();
    /// assert_eq!(TraceParent::of(&parent.span_context()), Some(parent));
    /// ```
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

/// Zero means "no id" in the spec: a random draw of zero becomes one.
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

    #[test]
    fn unsampled_contexts_stay_unsampled_through_opentelemetry() {
        let unsampled = TraceParent {
            sampled: false,
            ..TraceParent::new_root()
        };
        let context = unsampled.span_context();
        assert!(context.is_remote() && !context.is_sampled());
        assert_eq!(TraceParent::of(&context), Some(unsampled));
        assert_eq!(TraceParent::of(&SpanContext::empty_context()), None);
    }
}
