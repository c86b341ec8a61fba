//! Reads of services: the list with counts, and one service's instances, optionally as
//! a blocking query that holds until the service changes.

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use registry_api::{ServiceList, Status};
use serde::Deserialize;

use super::extract::{PageQuery, Query, ServicePath, param};
use super::{ApiError, AppState};

/// `wait` when a blocking query gives none.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Longest `wait` honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/services", get(list))
}

/// The blocking query holds the request for up to `wait`, so it is outside the request
/// timeout.
pub fn long_poll_router() -> Router<AppState> {
    Router::new().route("/v1/services/{service}", get(one))
}

/// `GET /v1/services[?name=][&limit=][&cursor=]`.
#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "services",
    summary = "Every service with its instance count per status, or one page of them",
    params(
        ("name" = Option<String>, Query, description = "Only services whose name contains this text (case-insensitive)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000: answers one page of services in name order, with `next_cursor` when more follow"),
        ("cursor" = Option<String>, Query, description = "Where the page starts: a `next_cursor` as given (opaque); pages of 100 when no `limit`"),
    ),
    responses(
        (status = 200, description = "Services", body = ServiceList),
        (status = 400, description = "Invalid parameter", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong read token", body = registry_api::ErrorBody),
    )
)]
async fn list(State(state): State<AppState>, Query(page): Query<PageQuery>) -> Json<ServiceList> {
    Json(state.view.services_selected(&page.selection(None)))
}

/// The query of a lookup.
#[derive(Deserialize)]
struct LookupQuery {
    #[serde(default, deserialize_with = "param")]
    status: Option<Status>,
    #[serde(default, deserialize_with = "param")]
    index: Option<u64>,
    #[serde(default, deserialize_with = "param")]
    wait: Option<Duration>,
}

/// `GET /v1/services/{service}?status=&index=&wait=`.
#[utoipa::path(
    get,
    path = "/v1/services/{service}",
    tag = "services",
    summary = "Instances of one service; a blocking query when `index` is given",
    params(
        ("service" = String, Path, description = "Service name"),
        ("status" = Option<registry_api::Status>, Query, description = "Only instances with this status"),
        ("index" = Option<u64>, Query, description = "Hold until the service's index passes this; 0 answers at once"),
        ("wait" = Option<String>, Query, description = "Longest hold: 500ms, 30s, 1m30s or whole seconds; default 30s, at most 5m"),
    ),
    responses(
        (status = 200, description = "The instances (empty for an unknown service)", body = registry_api::ServiceInstances,
            headers(("Registry-Index" = u64, description = "The service's index"))),
        (status = 400, description = "Invalid parameter", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong read token", body = registry_api::ErrorBody),
    )
)]
async fn one(
    State(state): State<AppState>,
    ServicePath(service): ServicePath,
    Query(query): Query<LookupQuery>,
) -> Result<Response, ApiError> {
    let LookupQuery {
        status: only,
        index,
        wait,
    } = query;
    let wait = wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    // `index=0` never blocks: the caller has seen nothing yet and learns the index now.
    if let Some(known) = index.filter(|&known| known > 0) {
        wait_for_change(&state, service.as_str(), known, wait).await;
    }
    // Served from the view's serialized answer: no copy of the instances per lookup.
    let (index, body) = state
        .view
        .service_json(service.as_str(), only)
        .map_err(|error| {
            tracing::error!(%error, "cannot serialize a lookup answer");
            ApiError::internal()
        })?;
    let mut response = super::json_answer(body);
    response
        .headers_mut()
        .insert(super::INDEX, HeaderValue::from(index));
    Ok(response)
}

/// Holds until the service's index passes `known`, `wait` (plus jitter) runs out, or the
/// server shuts down. Answers at once when `known` is ahead of the registry (it lost its
/// state, so the caller must not wait for an index that will not come).
async fn wait_for_change(state: &AppState, service: &str, known: u64, wait: Duration) {
    let mut changes = state.view.subscribe();
    if known > state.view.index() && ahead_of_the_store(state, known).await {
        return;
    }
    let jitter_cap = wait.as_millis() / 16;
    let jitter = if jitter_cap == 0 {
        0
    } else {
        rand::random_range(0..=u64::try_from(jitter_cap).unwrap_or(u64::MAX))
    };
    let deadline = tokio::time::Instant::now() + wait + Duration::from_millis(jitter);
    loop {
        if state.view.service_index(service) > known {
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(deadline) => return,
            () = state.shutdown.cancelled() => return,
        }
    }
}

/// Whether `index` is beyond anything the registry ever wrote. A client may know an index
/// this replica's view has not reached yet (it asked another replica): that is not lost
/// state, so the view catches up and the store has the last word.
pub async fn ahead_of_the_store(state: &AppState, index: u64) -> bool {
    if state.view.catch_up(state.store.as_ref()).await.is_ok() && index <= state.view.index() {
        return false;
    }
    state
        .store
        .current_index()
        .await
        .map_or(true, |current| index > current)
}
