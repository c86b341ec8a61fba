//! A per-layer filter that decides every event and span anew instead of letting tracing
//! cache its verdict per call site.
//!
//! Why: with cached verdicts, the registry lost log lines. Building its HTTP client for
//! active checks (rustls logs a debug record through the `log` bridge) before opening a
//! Postgres store made the next event of that thread, `registry listening`, vanish at
//! `RUST_LOG=info`, while `RUST_LOG=debug` showed it. tracing-subscriber keeps each
//! per-layer filter's verdict in a thread-local state that a refused record can leave
//! behind; a filter asked for every event writes its verdict before each one. Events are
//! rare (a request that goes well logs nothing), so the extra check costs little. The
//! end-to-end tests that start the registry on Postgres and wait for that line guard it.

use tracing::subscriber::Interest;
use tracing::{Event, Metadata, span};
use tracing_subscriber::layer::{Context, Filter};

pub struct DecidedPerEvent<F>(pub F);

impl<S, F: Filter<S>> Filter<S> for DecidedPerEvent<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.0.callsite_enabled(meta).is_never() {
            Interest::never()
        } else {
            Interest::sometimes()
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, cx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        self.0.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_enter(id, cx);
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_exit(id, cx);
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        self.0.on_close(id, cx);
    }
}
