//! The whole system now or at a past moment, and the history of one service.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use registry_api::{
    History, InstanceId, SelfPreservation, ServiceName, StatusSummary, SystemStatus,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{PageQuery, Query, param};
use super::{ApiError, AppState};
use crate::paging::Selection;

/// Most events one history answer carries.
const HISTORY_LIMIT: u32 = 10_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/status", get(system_status))
        .route("/v1/history", get(history))
}

/// The query of `GET /v1/status` (its paging parameters are a [`PageQuery`]).
#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default, deserialize_with = "param")]
    at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "param")]
    service: Option<ServiceName>,
    #[serde(default, deserialize_with = "param")]
    summary: Option<bool>,
}

/// What `GET /v1/status` answers: the services with their instances, or (`summary=true`)
/// their counts.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum StatusAnswer {
    System(SystemStatus),
    Summary(StatusSummary),
}

impl StatusAnswer {
    /// Adds what the view does not know: where the kept history starts, and the epoch.
    fn with_context(
        mut self,
        history_starts_at: Option<DateTime<Utc>>,
        epoch: Option<String>,
    ) -> Self {
        match &mut self {
            Self::System(status) => {
                status.history_starts_at = history_starts_at;
                status.epoch = epoch;
            }
            Self::Summary(summary) => {
                summary.history_starts_at = history_starts_at;
                summary.epoch = epoch;
            }
        }
        self
    }

    fn set_self_preservation(&mut self, mode: SelfPreservation) {
        match self {
            Self::System(status) => status.self_preservation = mode,
            Self::Summary(summary) => summary.self_preservation = mode,
        }
    }
}

/// `GET /v1/status[?at=RFC3339][&service=S][&name=][&limit=][&cursor=][&summary=true]`.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    summary = "The whole system now, or as it was at `at`; one page of it, or its summary",
    params(
        ("at" = Option<String>, Query, description = "RFC 3339 moment; the future means now"),
        ("service" = Option<String>, Query, description = "Only this service"),
        ("name" = Option<String>, Query, description = "Only services whose name contains this text (case-insensitive)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000: answers one page of services in name order, with `next_cursor` when more follow"),
        ("cursor" = Option<String>, Query, description = "Where the page starts: a `next_cursor` as given (opaque); pages of 100 when no `limit`"),
        ("summary" = Option<bool>, Query, description = "`true`: the counts per status and the first critical instances (a StatusSummary) instead of the services; not with `service`, `name`, `limit` or `cursor`"),
    ),
    responses(
        (status = 200, description = "The system (a SystemStatus), or its summary (a StatusSummary) with `summary=true`", body = StatusAnswer),
        (status = 400, description = "Invalid parameter, or `at` older than the kept history", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong read token", body = registry_api::ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = registry_api::ErrorBody),
    )
)]
async fn system_status(
    State(state): State<AppState>,
    Query(StatusQuery {
        at,
        service,
        summary,
    }): Query<StatusQuery>,
    Query(page): Query<PageQuery>,
) -> Result<Json<StatusAnswer>, ApiError> {
    let summary = summary.unwrap_or(false);
    if summary {
        refuse_selection_in_summary(service.as_ref(), &page)?;
    }
    let selection = page.selection(service.as_ref().map(ServiceName::as_str));
    let now = state.now();
    let answer = match at.filter(|at| *at < now) {
        None => live(&state, now, &selection, summary).await,
        Some(at) => past(&state, at, &selection, summary).await?,
    };
    Ok(Json(answer))
}

/// `GET /v1/status` now: served from the view.
async fn live(
    state: &AppState,
    now: DateTime<Utc>,
    selection: &Selection,
    summary: bool,
) -> StatusAnswer {
    let answer = if summary {
        StatusAnswer::Summary(state.view.status_summary(now))
    } else {
        StatusAnswer::System(state.view.system_status_selected(selection, now))
    };
    answer.with_context(history_starts_at(state).await, epoch(state))
}

/// A summary counts the whole system: it takes no parameter that selects services.
fn refuse_selection_in_summary(
    service: Option<&ServiceName>,
    page: &PageQuery,
) -> Result<(), ApiError> {
    let given = service.map(|_| "service").or_else(|| page.first_given());
    match given {
        Some(field) => Err(ApiError::invalid(
            field,
            format!("{field} does not apply to summary=true, which counts the whole system"),
        )),
        None => Ok(()),
    }
}

/// `GET /v1/status?at=` for a moment past: rebuilt from the history.
async fn past(
    state: &AppState,
    at: DateTime<Utc>,
    selection: &Selection,
    summary: bool,
) -> Result<StatusAnswer, ApiError> {
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
    let since = state.store.self_preservation_at(at).await?;
    let (held, answer) = if summary {
        let (index, instances) = state.store.state_at(at, None).await?;
        let held = instances.iter().filter(|i| i.lease_held).count();
        let summary = crate::view::status_summary(index, at, instances);
        (held, StatusAnswer::Summary(summary))
    } else {
        let (index, instances) = selected_state_at(state.store.as_ref(), at, selection).await?;
        let status = crate::view::system_status(index, at, instances, selection);
        let held = status
            .services
            .iter()
            .flat_map(|service| &service.instances)
            .filter(|i| i.lease_held)
            .count();
        (held, StatusAnswer::System(status))
    };
    let mut answer = answer.with_context(Some(start.at), epoch(state));
    answer.set_self_preservation(SelfPreservation {
        active: since.is_some(),
        since,
        held: u64::try_from(held).unwrap_or(u64::MAX),
    });
    Ok(answer)
}

/// The instances at `at` of at least the services `selection` answers: one service's
/// alone, or for a page the services after its cursor that existed by then, read a page's
/// worth at a time until one more than the page had instances then (so that the page
/// knows whether another follows), or the history has no more. Unpaged, every service.
async fn selected_state_at(
    store: &dyn crate::store::Store,
    at: DateTime<Utc>,
    selection: &Selection,
) -> crate::store::StoreResult<(u64, Vec<registry_api::Instance>)> {
    if let Some(service) = &selection.service {
        return store
            .state_at(at, Some(std::slice::from_ref(service)))
            .await;
    }
    let Some(limit) = selection.limit else {
        return store.state_at(at, None).await;
    };
    let wanted = limit + 1;
    let batch = u32::try_from(wanted).unwrap_or(u32::MAX);
    let containing = selection.name.as_ref().map(|name| name.text());
    let mut after = selection.after_name().map(str::to_owned);
    let mut instances = Vec::new();
    let mut services_then = std::collections::BTreeSet::new();
    loop {
        let names = store
            .service_names(at, after.as_deref(), containing, batch)
            .await?;
        let (index, found) = store.state_at(at, Some(&names)).await?;
        services_then.extend(found.iter().map(|i| i.service.clone()));
        instances.extend(found);
        if services_then.len() >= wanted || names.len() < wanted {
            return Ok((index, instances));
        }
        after = names.last().cloned();
    }
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
