//! `GET /v1/events`: the change feed as server-sent events, resumable with
//! `Last-Event-ID`, with a `reset` (the whole state) when the gap cannot be replayed.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use chrono::{DateTime, Utc};
use futures::Stream;
use registry_api::{Event, ServiceName};
use serde::Deserialize;

use super::extract::{Query, param, parse_index};
use super::services::ahead_of_the_store;
use super::{ApiError, AppState};

/// Events sent per read of the log.
const BATCH: u32 = 500;
const KEEPALIVE: Duration = Duration::from_secs(15);

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(events))
}

/// `GET /v1/events?since=N[&service=S]`: server-sent events.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "Live change feed (server-sent events), resumable with Last-Event-ID",
    params(
        ("since" = Option<u64>, Query, description = "Send events after this index; default: only new ones"),
        ("service" = Option<String>, Query, description = "Only this service"),
        ("token" = Option<String>, Query, description = "Read token, for clients that cannot set headers"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this index"),
    ),
    responses(
        (status = 200, description = "`id: <index>` and `data: <Event JSON>` per event; `event: reset` with the /v1/status body when history cannot fill the gap", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid parameter", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong read token", body = registry_api::ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = registry_api::ErrorBody),
    )
)]
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(EventsQuery { service, since }): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| parse_index(s.trim()).ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be an event index"))
        })
        .transpose()?;
    let start = last_event_id
        .or(since)
        .unwrap_or_else(|| state.view.index());
    // Fail now, with a proper status, rather than inside the stream.
    let history_start = state.store.history_start().await?;
    let ahead = start > state.view.index() && ahead_of_the_store(&state, start).await;
    // A reset carries the whole state as `GET /v1/status` does, where history starts too.
    let reset = (start < history_start.index || ahead).then_some(history_start.at);
    let stream = feed(state, service, start, reset);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive")))
}

/// The query of the event stream.
#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default, deserialize_with = "param")]
    service: Option<ServiceName>,
    #[serde(default, deserialize_with = "param")]
    since: Option<u64>,
}

/// The stream: a `reset` first when `reset` holds where the kept history starts (the
/// events after `start` cannot be replayed), then every event after the cursor, live.
fn feed(
    state: AppState,
    service: Option<ServiceName>,
    start: u64,
    reset: Option<DateTime<Utc>>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream(move |tx| async move {
        let mut cursor = start;
        if let Some(history_starts_at) = reset {
            let mut status = state
                .view
                .system_status(service.as_ref().map(ServiceName::as_str), state.now());
            status.epoch = super::status::epoch(&state);
            status.history_starts_at = Some(history_starts_at);
            cursor = status.index;
            let data = serde_json::to_string(&status).unwrap_or_default();
            let reset = SseEvent::default()
                .event("reset")
                .id(cursor.to_string())
                .data(data);
            if tx.send(reset).await.is_err() {
                return;
            }
        }
        let mut changes = state.view.subscribe();
        loop {
            // Mark the current index seen before reading, so a change that lands after
            // the read wakes the wait below.
            changes.borrow_and_update();
            let batch = match next_events(&state, cursor, service.as_ref()).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "event stream could not read events; closing it");
                    return;
                }
            };
            let full = batch.len() == BATCH as usize;
            for event in batch {
                cursor = event.index;
                if tx.send(to_sse(&event)).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = state.shutdown.cancelled() => return,
                () = tx.closed() => return,
            }
        }
    })
}

async fn next_events(
    state: &AppState,
    cursor: u64,
    service: Option<&ServiceName>,
) -> Result<Vec<Event>, crate::store::StoreError> {
    match state
        .view
        .recent_events_after(cursor, service.map(ServiceName::as_str), BATCH as usize)
    {
        Some(events) => Ok(events),
        None => state.store.events_after(cursor, service, BATCH).await,
    }
}

fn to_sse(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.index.to_string())
        .data(serde_json::to_string(event).unwrap_or_default())
}

/// A stream fed by a task through a small channel; the task ends when the client goes.
fn async_stream<F, Fut>(produce: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}
