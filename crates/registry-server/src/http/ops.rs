//! Operational routes: liveness, readiness and metrics (the OpenAPI document is
//! `super::openapi`, the page at `/` is `super::dashboard`).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Liveness: the process answers; the database is not consulted. The answer never
/// changes, so it is sent as written rather than built and serialized for each probe.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Response {
    super::json_answer(r#"{"status":"ok"}"#)
}

/// Readiness: the database answers (migrations ran before the listener opened).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Database unavailable", body = registry_api::ErrorBody),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    // Within a probe's usual 1 s timeout, however long the pool would wait for a connection.
    tokio::time::timeout(READY_TIMEOUT, state.store.ping())
        .await
        .map_err(|_| ApiError::unavailable("the registry's database does not answer"))??;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

/// Longest the readiness probe waits for the database.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// Every registry metric in the Prometheus text format (crate::metrics).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let summary = state.view.status_summary(state.now());
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(
            summary.instances,
            summary.services.total,
            || state.view.services(),
            state.view.watchers(),
            state.view.index(),
            state.view.self_preservation().active,
        ),
    )
}
