//! Operational routes: liveness, readiness, metrics and the OpenAPI document (the page
//! at `/` is `super::dashboard`).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

use super::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// The OpenAPI document, generated from the wire types and route annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "central-registry",
        description = "Service registry for microservices."
    ),
    paths(
        super::instances::register,
        super::instances::heartbeat,
        super::instances::set_status,
        super::instances::deregister,
        super::services::list,
        super::services::one,
        super::status::system_status,
        super::status::history,
        super::events::events,
        super::seed::register,
        super::seed::lookup,
        super::sd::prometheus,
        healthz,
        readyz,
        metrics,
        openapi,
        super::dashboard::index_page,
    ),
    components(schemas(
        registry_api::InstanceSpec,
        registry_api::CheckSpec,
        registry_api::Check,
        registry_api::CheckResult,
        registry_api::Instance,
        registry_api::Status,
        registry_api::StatusChange,
        registry_api::Event,
        registry_api::EventKind,
        registry_api::Reason,
        registry_api::ServiceList,
        registry_api::ServiceSummary,
        registry_api::ServiceInstances,
        registry_api::SystemStatus,
        registry_api::ServiceStatus,
        registry_api::HeartbeatResponse,
        registry_api::History,
        registry_api::ErrorBody,
        registry_api::ErrorDetail,
        registry_api::ErrorCode,
        registry_api::SeedRegistration,
        registry_api::SeedServiceSpec,
        registry_api::SeedService,
        registry_api::SeedLookup,
    ))
)]
pub struct ApiDoc;

/// Liveness: the process answers; the database is not consulted.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the database answers (migrations ran before the listener opened).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Database unavailable", body = registry_api::ErrorBody),
))]
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    // Within a probe's usual 1 s timeout, however long the pool would wait for a connection.
    tokio::time::timeout(READY_TIMEOUT, state.store.ping())
        .await
        .map_err(|_| ApiError::unavailable("the registry's database does not answer"))??;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

/// Longest the readiness probe waits for the database.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi() -> Json<serde_json::Value> {
    Json(super::doc_rules::document())
}

/// Every registry metric in the Prometheus text format (crate::metrics).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&state.view),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_route() {
        let doc = ApiDoc::openapi();
        let documented: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/v1/services/{service}/instances/{id}",
            "/v1/services/{service}/instances/{id}/heartbeat",
            "/v1/services/{service}/instances/{id}/status",
            "/v1/services",
            "/v1/services/{service}",
            "/v1/status",
            "/v1/history",
            "/v1/events",
            "/v1/sd/prometheus",
            "/service",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/",
        ] {
            assert!(documented.contains(&path), "{path} is not documented");
        }
        let json = serde_json::to_value(&doc).expect("serializes");
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3."))
        );
    }
}
