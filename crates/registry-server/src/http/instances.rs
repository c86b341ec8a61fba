//! Writes on one instance: register or replace, heartbeat, maintenance, deregister.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::put;
use axum::{Json, Router};
use registry_api::{
    HeartbeatResponse, Instance, InstanceId, InstanceSpec, ServiceName, Status, StatusChange,
};

use super::extract::{ApiJson, declared_length, declares_body, path_error};
use super::{ApiError, AppState};
use crate::lifecycle::{self, Mutation};
use crate::record::InstanceRecord;
use crate::writer::{Renewal, UNREACHABLE};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/services/{service}/instances/{id}",
            put(register).delete(deregister),
        )
        .route(
            "/v1/services/{service}/instances/{id}/heartbeat",
            put(heartbeat),
        )
        .route(
            "/v1/services/{service}/instances/{id}/status",
            put(set_status),
        )
}

/// `{service}` and `{id}` path parameters, validated.
#[derive(Debug)]
pub struct InstancePath {
    pub service: ServiceName,
    pub id: InstanceId,
}

impl<S: Send + Sync> FromRequestParts<S> for InstancePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((service, id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| path_error(e, "service"))?;
        let service = ServiceName::parse(&service)
            .map_err(|m| ApiError::invalid("service", format!("service name {m}")))?;
        let id = InstanceId::parse(&id)
            .map_err(|m| ApiError::invalid("id", format!("instance id {m}")))?;
        Ok(Self { service, id })
    }
}

/// Heartbeat and DELETE take no body; refuse one rather than ignore it. An extractor
/// (after the path, whose errors come first) that reads the request's headers where they
/// are: a `HeaderMap` argument would copy them all for every heartbeat.
struct NoBody;

impl<S: Send + Sync> FromRequestParts<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if declares_body(declared_length(&parts.headers), &parts.headers) {
            return Err(ApiError::invalid("body", "this request takes no body"));
        }
        Ok(Self)
    }
}

fn unknown_instance(path: &InstancePath) -> ApiError {
    ApiError::not_found(
        "id",
        format!(
            "instance '{}' of service '{}' is not registered; register it again",
            path.id, path.service
        ),
    )
}

fn stored(record: Option<InstanceRecord>, path: &InstancePath) -> Result<InstanceRecord, ApiError> {
    record.ok_or_else(|| unknown_instance(path))
}

/// `PUT /v1/services/{service}/instances/{id}`: 201 when new, 200 when replaced.
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}",
    tag = "instances",
    summary = "Register or replace an instance (idempotent)",
    params(
        ("service" = String, Path, description = "Service name (DNS label)"),
        ("id" = String, Path, description = "Instance id: 1-128 of [A-Za-z0-9._-]"),
    ),
    request_body = registry_api::InstanceSpec,
    responses(
        (status = 200, description = "Replaced", body = Instance),
        (status = 201, description = "Registered", body = Instance),
        (status = 400, description = "Invalid input; `field` names it", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = registry_api::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = registry_api::ErrorBody),
        (status = 415, description = "Body is not JSON", body = registry_api::ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = registry_api::ErrorBody),
    )
)]
async fn register(
    State(state): State<AppState>,
    path: InstancePath,
    ApiJson(spec): ApiJson<InstanceSpec>,
) -> Result<(StatusCode, Json<Instance>), ApiError> {
    let validated = spec.validate(
        path.service.clone(),
        path.id.clone(),
        state.settings.default_ttl_seconds(),
    )?;
    let now = state.now();
    let applied = state
        .writer
        .change(
            &path.service,
            &path.id,
            now,
            Box::new(move |old| lifecycle::register(old, &validated, now)),
        )
        .await?;
    let code = if applied.existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let record = stored(applied.record, &path)?;
    Ok((code, Json(record.to_instance())))
}

/// `PUT .../heartbeat`: 404 tells the client to register again.
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}/heartbeat",
    tag = "instances",
    summary = "Renew the lease",
    params(
        ("service" = String, Path, description = "Service name (DNS label)"),
        ("id" = String, Path, description = "Instance id: 1-128 of [A-Za-z0-9._-]"),
    ),
    responses(
        (status = 200, description = "Lease renewed", body = HeartbeatResponse),
        (status = 400, description = "Invalid input", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = registry_api::ErrorBody),
        (status = 404, description = "Unknown instance: register again", body = registry_api::ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = registry_api::ErrorBody),
    )
)]
async fn heartbeat(
    State(state): State<AppState>,
    path: InstancePath,
    _: NoBody,
) -> Result<Response, ApiError> {
    let now = state.now();
    let renewal = state
        .writer
        .renew(
            &path.service,
            &path.id,
            now,
            true,
            Box::new(move |old| old.map_or(Mutation::Unchanged, |o| lifecycle::heartbeat(o, now))),
        )
        .await?;
    let renewed = match renewal {
        Renewal::Unreachable => return Err(ApiError::unavailable(UNREACHABLE)),
        Renewal::Queued(renewed) => renewed,
        Renewal::Written(applied) => {
            let record = stored(applied.record, &path)?;
            HeartbeatResponse {
                status: record.status,
                lease_expires_at: record.lease_expires_at,
            }
        }
    };
    Ok(super::json_answer(renewed.to_json()))
}

/// `PUT .../status`: `maintenance` drains the instance, `passing` clears maintenance.
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}/status",
    tag = "instances",
    summary = "Set or clear maintenance",
    params(
        ("service" = String, Path, description = "Service name (DNS label)"),
        ("id" = String, Path, description = "Instance id: 1-128 of [A-Za-z0-9._-]"),
    ),
    request_body = StatusChange,
    responses(
        (status = 200, description = "The instance", body = Instance),
        (status = 400, description = "Invalid input", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = registry_api::ErrorBody),
        (status = 404, description = "Unknown instance", body = registry_api::ErrorBody),
        (status = 415, description = "Body is not JSON", body = registry_api::ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = registry_api::ErrorBody),
    )
)]
async fn set_status(
    State(state): State<AppState>,
    path: InstancePath,
    ApiJson(change): ApiJson<StatusChange>,
) -> Result<Json<Instance>, ApiError> {
    let maintenance = match change.status {
        Status::Maintenance => true,
        Status::Passing => false,
        other => {
            return Err(ApiError::invalid(
                "status",
                format!(
                    "'{}' cannot be set; use 'maintenance' or 'passing' (health comes from leases and checks)",
                    other.as_str()
                ),
            ));
        }
    };
    let because = change
        .reason
        .map(|reason| maintenance_reason(&reason).map(|()| reason))
        .transpose()?;
    let now = state.now();
    let applied = state
        .writer
        .change(
            &path.service,
            &path.id,
            now,
            Box::new(move |old| {
                old.map_or(Mutation::Unchanged, |o| {
                    lifecycle::set_maintenance_because(o, maintenance, because.clone(), now)
                })
            }),
        )
        .await?;
    Ok(Json(stored(applied.record, &path)?.to_instance()))
}

/// Longest maintenance reason, in characters (as a metadata value).
pub const MAX_MAINTENANCE_REASON_CHARS: usize = registry_api::limits::MAX_METADATA_VALUE_CHARS;

/// A maintenance reason within [`MAX_MAINTENANCE_REASON_CHARS`], without control
/// characters (they break logs, and Postgres cannot store NUL).
pub fn maintenance_reason(reason: &str) -> Result<(), ApiError> {
    if reason.chars().count() > MAX_MAINTENANCE_REASON_CHARS || reason.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "reason",
            format!(
                "must be at most {MAX_MAINTENANCE_REASON_CHARS} characters, without control characters"
            ),
        ));
    }
    Ok(())
}

/// `DELETE /v1/services/{service}/instances/{id}`: 204, or 404 when unknown.
#[utoipa::path(
    delete,
    path = "/v1/services/{service}/instances/{id}",
    tag = "instances",
    summary = "Deregister",
    params(
        ("service" = String, Path, description = "Service name (DNS label)"),
        ("id" = String, Path, description = "Instance id: 1-128 of [A-Za-z0-9._-]"),
    ),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 400, description = "Invalid input", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = registry_api::ErrorBody),
        (status = 404, description = "Unknown instance", body = registry_api::ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = registry_api::ErrorBody),
    )
)]
async fn deregister(
    State(state): State<AppState>,
    path: InstancePath,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    let applied = state
        .writer
        .change(
            &path.service,
            &path.id,
            state.now(),
            Box::new(|old| old.map_or(Mutation::Unchanged, lifecycle::deregister)),
        )
        .await?;
    if applied.existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(unknown_instance(&path))
    }
}
