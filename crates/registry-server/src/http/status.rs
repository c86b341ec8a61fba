//! The whole system now or at a past moment, and the history of one service.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use registry_api::{History, InstanceId, SelfPreservation, ServiceName, SystemStatus};
use serde::Deserialize;

use super::extract::{Query, param};
use super::{ApiError, AppState};

/// Most events one history answer carries.
const HISTORY_LIMIT: u32 = 10_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/status", get(system_status))
        .route("/v1/history", get(history))
}

/// The query of `GET /v1/status`.
#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default, deserialize_with = "param")]
    at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "param")]
    service: Option<ServiceName>,
}

/// `GET /v1/status[?at=RFC3339][&service=S]`.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    summary = "The whole system now, or as it was at `at`",
    params(
        ("at" = Option<String>, Query, description = "RFC 3339 moment; the future means now"),
        ("service" = Option<String>, Query, description = "Only this service"),
    ),
    responses(
        (status = 200, description = "The system", body = SystemStatus),
        (status = 400, description = "Invalid parameter, or `at` older than the kept history", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong read token", body = registry_api::ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = registry_api::ErrorBody),
    )
)]
async fn system_status(
    State(state): State<AppState>,
    Query(StatusQuery { at, service }): Query<StatusQuery>,
) -> Result<Json<SystemStatus>, ApiError> {
    let only = service.as_ref().map(|s| s.as_str());
    let now = state.now();
    let Some(at) = at.filter(|at| *at < now) else {
        let mut status = state.view.system_status(only, now);
        status.history_starts_at = history_starts_at(&state).await;
        status.epoch = epoch(&state);
        return Ok(Json(status));
    };
    let start = state.store.history_start().await?;
    if at < start.at {
        return Err(ApiError::invalid(
            "at",
            format!(
                "history is kept from {} on; ask for a later moment",
                start.at.to_rfc3339()
            ),
        ));
    }
    let (index, instances) = state.store.state_at(at).await?;
    let since = state.store.self_preservation_at(at).await?;
    let held = instances.iter().filter(|i| i.lease_held).count();
    let instances = instances
        .into_iter()
        .filter(|i| only.is_none_or(|s| s == i.service));
    let mut status = crate::view::system_status(index, at, instances);
    status.history_starts_at = Some(start.at);
    status.epoch = epoch(&state);
    status.self_preservation = SelfPreservation {
        active: since.is_some(),
        since,
        held: u64::try_from(held).unwrap_or(u64::MAX),
    };
    Ok(Json(status))
}

/// The database's epoch, as the `Registry-Epoch` header carries it.
pub(super) fn epoch(state: &AppState) -> Option<String> {
    state.epoch.to_str().ok().map(str::to_owned)
}

/// Longest the live answer waits for the history's start before leaving it out.
const HISTORY_START_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the kept history starts, for the live answer: read from the database, which
/// every replica prunes, and left out (the rest is served from memory) when the database
/// is unreachable or slow.
async fn history_starts_at(state: &AppState) -> Option<DateTime<Utc>> {
    if state.writer.database_unreachable() {
        return None;
    }
    match tokio::time::timeout(HISTORY_START_TIMEOUT, state.store.history_start()).await {
        Ok(Ok(start)) => Some(start.at),
        _ => None,
    }
}

/// The query of the history.
#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default, deserialize_with = "param")]
    service: Option<ServiceName>,
    #[serde(default, deserialize_with = "param")]
    instance: Option<InstanceId>,
    #[serde(default, deserialize_with = "param")]
    since: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "param")]
    until: Option<DateTime<Utc>>,
}

/// `GET /v1/history?service=S[&instance=I][&since=&until=]`: oldest first, `[since, until)`.
#[utoipa::path(
    get,
    path = "/v1/history",
    tag = "status",
    summary = "The changes of one service, oldest first",
    params(
        ("service" = String, Query, description = "Service name (required)"),
        ("instance" = Option<String>, Query, description = "Only this instance"),
        ("since" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("until" = Option<String>, Query, description = "RFC 3339, exclusive"),
    ),
    responses(
        (status = 200, description = "Events", body = History),
        (status = 400, description = "Invalid parameter", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong read token", body = registry_api::ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = registry_api::ErrorBody),
    )
)]
async fn history(
    State(state): State<AppState>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    let HistoryQuery {
        service,
        instance,
        since,
        until,
    } = query;
    let service = service.ok_or_else(|| ApiError::invalid("service", "service is required"))?;
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(ApiError::invalid("until", "until must not be before since"));
    }
    let events = state
        .store
        .history(&service, instance.as_ref(), since, until, HISTORY_LIMIT)
        .await?;
    Ok(Json(History { events }))
}
