//! The agent's writes: register, deregister, maintenance, and the reports of TTL checks.
//!
//! Consul's agent names a service by its id alone; ours are unique per service only, so
//! each route acts on the one instance with that id and answers 409 naming the services
//! when several have it (docs/consul.md, Ids).

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use registry_api::{Instance, Status};

use super::wire::{self, check_ids};
use super::{ConsulError, ConsulQuery, with_index};
use crate::http::AppState;
use crate::lifecycle::{self, Mutation};
use crate::store::InstanceKey;
use crate::writer::{Renewal, UNREACHABLE};

/// Longest note or output a TTL check's report keeps, in characters (Consul's default
/// output limit is 4 KiB); the rest is cut.
const MAX_OUTPUT_CHARS: usize = 4096;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/service/register", put(register))
        .route("/v1/agent/service/deregister/{id}", put(deregister))
        .route("/v1/agent/service/maintenance/{id}", put(maintenance))
        .route("/v1/agent/check/pass/{check_id}", put(pass))
        .route("/v1/agent/check/warn/{check_id}", put(warn))
        .route("/v1/agent/check/fail/{check_id}", put(fail))
        .route("/v1/agent/check/update/{check_id}", put(update))
}

/// An empty 200, Consul's answer to every agent write.
fn done(state: &AppState) -> Response {
    with_index(state.view.index(), StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/register`.
async fn register(
    State(state): State<AppState>,
    query: ConsulQuery,
    request: Request,
) -> Result<Response, ConsulError> {
    // Our registration replaces the whole definition, checks included: with or without
    // the flag, checks missing from the body are gone, as Consul does with it.
    query.flag("replace-existing-checks")?;
    let peer = crate::serve::peer(&request).map(|addr| addr.ip());
    let body = crate::http::extract::read_body(request).await?;
    let mapped = wire::map_service(wire::parse_service(&body)?, peer)?;
    let others: Vec<String> = state
        .view
        .instances_with_id(mapped.id.as_str())
        .into_iter()
        .filter(|i| i.service != mapped.service.as_str())
        .map(|i| i.service)
        .collect();
    if !others.is_empty() {
        return Err(ConsulError::new(
            StatusCode::CONFLICT,
            format!(
                "service ID \"{}\" is already registered for service {}; deregister it there first or choose another ID",
                mapped.id,
                others.join(", ")
            ),
        ));
    }
    let validated = mapped
        .spec
        .validate(
            mapped.service.clone(),
            mapped.id.clone(),
            state.settings.default_ttl_seconds(),
        )
        .map_err(|error| {
            ConsulError::bad_request(format!(
                "Invalid {}: {}",
                consul_field(&error.field),
                error.message
            ))
        })?;
    let now = state.now();
    state
        .writer
        .change(
            &mapped.service,
            &mapped.id,
            now,
            Box::new(move |old| lifecycle::register(old, &validated, now)),
        )
        .await?;
    Ok(done(&state))
}

/// A field of our model named as the Consul body names it, for messages.
fn consul_field(field: &str) -> String {
    const NAMES: [(&str, &str); 9] = [
        ("url", "Address and Port (the URL)"),
        ("tags", "Tags"),
        ("metadata", "Meta"),
        ("ttl_seconds", "TTL"),
        ("check.http", "Check.HTTP"),
        ("check.tcp", "Check.TCP"),
        ("check.interval_seconds", "Check.Interval"),
        ("check.timeout_seconds", "Check.Timeout"),
        (
            "deregister_critical_after",
            "DeregisterCriticalServiceAfter",
        ),
    ];
    for (ours, theirs) in NAMES {
        if let Some(rest) = field.strip_prefix(ours) {
            return format!("{theirs}{rest}");
        }
    }
    field.to_owned()
}

/// The key of an instance the view holds, typed again for the write path.
fn key_of(instance: Instance) -> Result<InstanceKey, ConsulError> {
    Ok(crate::store::stored_key(instance.service, instance.id)?)
}

/// The one instance with this id: 404 when none, 409 naming the services when several.
fn one_instance(state: &AppState, id: &str) -> Result<Instance, ConsulError> {
    let mut found = state.view.instances_with_id(id);
    match found.len() {
        0 => Err(ConsulError::not_found(format!(
            "Unknown service ID \"{id}\""
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(ConsulError::new(
            StatusCode::CONFLICT,
            format!(
                "service ID \"{id}\" is registered for several services ({}); use the v1 API, which names the service",
                found
                    .iter()
                    .map(|i| i.service.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// `PUT /v1/agent/service/deregister/{id}`: 200, as clients expect.
async fn deregister(
    State(state): State<AppState>,
    _query: ConsulQuery,
    Path(id): Path<String>,
) -> Result<Response, ConsulError> {
    let (service, instance_id) = key_of(one_instance(&state, &id)?)?;
    let applied = state
        .writer
        .change(
            &service,
            &instance_id,
            state.now(),
            Box::new(|old| old.map_or(Mutation::Unchanged, lifecycle::deregister)),
        )
        .await?;
    if !applied.existed {
        return Err(ConsulError::not_found(format!(
            "Unknown service ID \"{id}\""
        )));
    }
    Ok(done(&state))
}

/// `PUT /v1/agent/service/maintenance/{id}?enable=&reason=`.
async fn maintenance(
    State(state): State<AppState>,
    query: ConsulQuery,
    Path(id): Path<String>,
) -> Result<Response, ConsulError> {
    if query.get("enable").is_none() {
        return Err(ConsulError::bad_request("Missing value for enable"));
    }
    let on = query.flag("enable")?;
    let because = query
        .get("reason")
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    if let Some(reason) = &because {
        crate::http::instances::maintenance_reason(reason)?;
    }
    let (service, instance_id) = key_of(one_instance(&state, &id)?)?;
    let now = state.now();
    state
        .writer
        .change(
            &service,
            &instance_id,
            now,
            Box::new(move |old| {
                old.map_or(Mutation::Unchanged, |o| {
                    lifecycle::set_maintenance_because(o, on, because.clone(), now)
                })
            }),
        )
        .await?;
    Ok(done(&state))
}

async fn pass(
    State(state): State<AppState>,
    query: ConsulQuery,
    Path(check_id): Path<String>,
) -> Result<Response, ConsulError> {
    let note = query.get("note").map(str::to_owned);
    report(&state, &check_id, Status::Passing, note).await
}

async fn warn(
    State(state): State<AppState>,
    query: ConsulQuery,
    Path(check_id): Path<String>,
) -> Result<Response, ConsulError> {
    let note = query.get("note").map(str::to_owned);
    report(&state, &check_id, Status::Warning, note).await
}

async fn fail(
    State(state): State<AppState>,
    query: ConsulQuery,
    Path(check_id): Path<String>,
) -> Result<Response, ConsulError> {
    let note = query.get("note").map(str::to_owned);
    report(&state, &check_id, Status::Critical, note).await
}

/// `PUT /v1/agent/check/update/{check_id}` with `{"Status","Output"}`.
async fn update(
    State(state): State<AppState>,
    _query: ConsulQuery,
    Path(check_id): Path<String>,
    request: Request,
) -> Result<Response, ConsulError> {
    let body = crate::http::extract::read_body(request).await?;
    let update = wire::parse_check_update(&body)?;
    let status = match update.status.as_str() {
        "passing" => Status::Passing,
        "warning" => Status::Warning,
        _ => Status::Critical,
    };
    report(&state, &check_id, status, Some(update.output)).await
}

/// The instance whose TTL check `check_id` names (`service:<ID>`, or `service:<ID>:<n>`
/// when it has several checks, the TTL check first).
fn ttl_check_owner(state: &AppState, check_id: &str) -> Result<InstanceKey, ConsulError> {
    let unknown = || ConsulError::not_found(format!("Unknown check ID \"{check_id}\""));
    if check_id.starts_with("_service_maintenance:") {
        return Err(ConsulError::bad_request(format!(
            "check \"{check_id}\" is the maintenance check; use /v1/agent/service/maintenance"
        )));
    }
    let rest = check_id.strip_prefix("service:").ok_or_else(unknown)?;
    // Instance ids have no ':', so a last ':' starts the check's number.
    let id = rest.split(':').next().unwrap_or(rest);
    let instance = match one_instance(state, id) {
        Err(error) if error.status == StatusCode::NOT_FOUND => return Err(unknown()),
        other => other?,
    };
    let has_ttl = instance.ttl_seconds > 0;
    let count = usize::from(has_ttl) + usize::from(instance.check.is_some());
    let ids = check_ids(&instance.id, count.max(1));
    match ids.iter().position(|known| known == check_id) {
        Some(0) if has_ttl => key_of(instance),
        Some(_) => Err(ConsulError::bad_request(format!(
            "check \"{check_id}\" is not a TTL check: the registry runs it itself"
        ))),
        None => Err(unknown()),
    }
}

/// A TTL check's report: renews the lease with the status and the note, which hold until
/// the next report or the lapse. A note alone is stored and shown but appends no event.
async fn report(
    state: &AppState,
    check_id: &str,
    status: Status,
    note: Option<String>,
) -> Result<Response, ConsulError> {
    let (service, instance_id) = ttl_check_owner(state, check_id)?;
    // Kept as reported (newlines included), cut to Consul's limit as Consul does, without
    // NUL, which Postgres cannot store in JSON.
    let note = note
        .map(|n| {
            n.chars()
                .filter(|c| *c != '\0')
                .take(MAX_OUTPUT_CHARS)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty());
    let now = state.now();
    // A plain `pass` on a live lease is a heartbeat: renewed in memory and written with
    // others, as v1 heartbeats are (the queue refuses a lease that reported something).
    let plain = status == Status::Passing && note.is_none();
    let renewal = state
        .writer
        .renew(
            &service,
            &instance_id,
            now,
            plain,
            Box::new(move |old| {
                old.map_or(Mutation::Unchanged, |o| {
                    lifecycle::report(o, status, note.clone(), now)
                })
            }),
        )
        .await?;
    match renewal {
        Renewal::Unreachable => Err(ConsulError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            UNREACHABLE,
        )),
        Renewal::Queued(_) | Renewal::Written(_) => Ok(done(state)),
    }
}
