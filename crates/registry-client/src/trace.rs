//! W3C trace context (`traceparent`) carried from an incoming request to the calls it
//! makes, so one request through several services reads as one trace.
//!
//! A service runs each request inside [`in_trace`] with the `traceparent` it received;
//! [`ServiceClient`](crate::caller::ServiceClient) then sends a child of it on every call
//! (a new trace when there is none).

use std::fmt;
use std::future::Future;

tokio::task_local! {
    static CURRENT: TraceParent;
}

/// A parsed `traceparent` header: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// A new trace with a random trace id and span id.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero(rand_u128()),
            span_id: nonzero(rand_u64()),
            sampled: true,
        }
    }

    /// The same trace with a new span id: the context of an outgoing call.
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
    /// let t = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    /// assert!(t.sampled);
    /// assert_eq!(t.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
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

/// Runs `work` with `parent` as the current trace context.
pub async fn in_trace<F: Future>(parent: TraceParent, work: F) -> F::Output {
    CURRENT.scope(parent, work).await
}

/// The current trace context, if the task runs inside [`in_trace`].
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|t| *t).ok()
}

/// The `traceparent` for an outgoing call: a child of the current context, or a new trace.
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
