//! The original registry's routes, so its Node services and client work unchanged:
//! `POST /service` registers `<host>-<port>` with an active `GET /status` check,
//! `GET /service?service=NAME` answers one passing instance in round robin.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use registry_api::{
    Check, Instance, InstanceId, SeedLookup, SeedRegistration, SeedService, ServiceName, Status,
    Validated,
};

use super::extract::{Query, RawBody, ServiceQuery, parse_json};
use super::{ApiError, AppState};
use crate::lifecycle;

/// How the seed registry polled its services.
const SEED_CHECK_PATH: &str = "/status";
const SEED_CHECK_INTERVAL_SECONDS: u32 = 5;
const SEED_CHECK_TIMEOUT_SECONDS: u32 = 2;

pub fn router() -> Router<AppState> {
    Router::new().route("/service", get(lookup).post(register))
}

/// `POST /service {"service":{"name","uri","online"?}}`: 201, also when repeated.
#[utoipa::path(
    post,
    path = "/service",
    operation_id = "seed_register",
    tag = "seed",
    summary = "Original registry: register a service (polled on GET <uri>/status)",
    request_body = SeedRegistration,
    responses(
        (status = 201, description = "Registered", body = SeedService),
        (status = 400, description = "Invalid input", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = registry_api::ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = registry_api::ErrorBody),
    )
)]
async fn register(
    State(state): State<AppState>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<SeedService>), ApiError> {
    let SeedRegistration { service } = parse_json(&body)?;
    let name = ServiceName::parse(&service.name)
        .map_err(|m| ApiError::invalid("service.name", format!("service name {m}")))?;
    let url = registry_api::validate_url(&service.uri)
        .map_err(|m| ApiError::invalid("service.uri", m))?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let port = url.port_or_known_default().unwrap_or_default();
    let id = InstanceId::sanitized(&format!("{host}-{port}")).map_err(|m| {
        ApiError::invalid("service.uri", format!("gives no usable instance id: {m}"))
    })?;
    let mut expect = BTreeMap::new();
    expect.insert("status".to_owned(), "ok".to_owned());
    let spec = Validated {
        service: name.clone(),
        id: id.clone(),
        url: service.uri.clone(),
        tags: vec!["seed".to_owned()],
        metadata: BTreeMap::new(),
        ttl_seconds: 0,
        check: Some(Check {
            http: Some(SEED_CHECK_PATH.to_owned()),
            tcp: None,
            interval_seconds: SEED_CHECK_INTERVAL_SECONDS,
            timeout_seconds: SEED_CHECK_TIMEOUT_SECONDS,
            expect_json: Some(expect),
        }),
        deregister_critical_after: None,
        initial_status: None,
    };
    let now = state.now();
    let applied = state
        .writer
        .change(
            &name,
            &id,
            now,
            Box::new(move |old| lifecycle::register(old, &spec, now)),
        )
        .await?;
    let online = applied.record.is_some_and(|r| r.status == Status::Passing);
    Ok((
        StatusCode::CREATED,
        Json(SeedService {
            name: service.name,
            uri: service.uri,
            online,
        }),
    ))
}

/// `GET /service?service=NAME` (one instance) or `GET /service` (the whole map).
#[utoipa::path(
    get,
    path = "/service",
    operation_id = "seed_lookup",
    tag = "seed",
    summary = "Original registry: one instance of a service (round robin), or the whole map",
    params(("service" = Option<String>, Query, description = "Service name; without it, the map of every service")),
    responses(
        (status = 200, description = "`{name, uri, online}`, or a map of them by name", body = SeedLookup),
        (status = 400, description = "Invalid name", body = registry_api::ErrorBody),
        (status = 404, description = "No instance of that service", body = registry_api::ErrorBody),
    )
)]
async fn lookup(
    State(state): State<AppState>,
    Query(ServiceQuery { service }): Query<ServiceQuery>,
) -> Result<Json<SeedLookup>, ApiError> {
    let Some(name) = service else {
        return Ok(Json(SeedLookup::All(whole_map(&state))));
    };
    let instances = state.view.service(name.as_str(), None).instances;
    if instances.is_empty() {
        return Err(ApiError::not_found(
            "service",
            format!("no instance of service '{name}' is registered"),
        ));
    }
    let passing: Vec<Instance> = instances
        .iter()
        .filter(|i| i.status == Status::Passing)
        .cloned()
        .collect();
    let answer = match state.view.next_round_robin(name.as_str(), &passing) {
        Some(chosen) => seed_view(chosen, true),
        None => seed_view(last_known(&instances), false),
    };
    Ok(Json(SeedLookup::One(answer)))
}

fn whole_map(state: &AppState) -> BTreeMap<String, SeedService> {
    state
        .view
        .system_status(None, state.now())
        .services
        .into_iter()
        .filter_map(|service| {
            let passing = service
                .instances
                .iter()
                .find(|i| i.status == Status::Passing);
            let entry = match passing {
                Some(instance) => seed_view(instance, true),
                None => seed_view(
                    service
                        .instances
                        .iter()
                        .max_by_key(|i| i.status_changed_at)?,
                    false,
                ),
            };
            Some((service.name, entry))
        })
        .collect()
}

/// The instance whose state changed last: the best guess of where the service lives.
fn last_known(instances: &[Instance]) -> &Instance {
    instances
        .iter()
        .max_by_key(|i| i.status_changed_at)
        .unwrap_or(&instances[0])
}

fn seed_view(instance: &Instance, online: bool) -> SeedService {
    SeedService {
        name: instance.service.clone(),
        uri: instance.url.clone(),
        online,
    }
}
