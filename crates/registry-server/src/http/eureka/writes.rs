//! Eureka's writes: register, renew, cancel, the status override and metadata updates.

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use registry_api::{
    EventKind, Instance, InstanceId, Reason, ServiceName, Status, validate_metadata,
};

use super::wire::{self, EurekaStatus, keys};
use super::{EurekaError, change, decode, ids, status};
use crate::http::{ApiError, AppState};
use crate::lifecycle::{self, Change, Mutation};
use crate::writer::{Renewal, UNREACHABLE};

pub fn router(prefix: &str) -> Router<AppState> {
    Router::new()
        .route(&format!("{prefix}/apps/{{app}}"), post(register))
        .route(
            &format!("{prefix}/apps/{{app}}/{{id}}"),
            put(renew).delete(cancel),
        )
        .route(
            &format!("{prefix}/apps/{{app}}/{{id}}/status"),
            put(set_override).delete(remove_override),
        )
        .route(
            &format!("{prefix}/apps/{{app}}/{{id}}/metadata"),
            put(update_metadata),
        )
}

/// The query's pairs, in order.
fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The instance a Eureka app and id name, as the view holds it now, with its model id.
pub fn find(
    state: &AppState,
    service: &ServiceName,
    eureka_id: &str,
) -> Option<(InstanceId, Instance)> {
    ids::candidates(eureka_id).into_iter().find_map(|id| {
        state
            .view
            .read_instance(service.as_str(), id.as_str(), Instance::clone)
            .map(|instance| (id, instance))
    })
}

fn unknown(app: &str, id: &str) -> EurekaError {
    EurekaError::not_found(format!("instance '{id}' of app '{app}' is not registered"))
}

/// The service, the model id and the instance of a request on one instance: 404 when
/// the app or the instance is unknown.
fn known(
    state: &AppState,
    app: &str,
    id: &str,
) -> Result<(ServiceName, InstanceId, Instance), EurekaError> {
    let service = ids::service_of_app(app).map_err(|_| unknown(app, id))?;
    let (model_id, instance) = find(state, &service, id).ok_or_else(|| unknown(app, id))?;
    Ok((service, model_id, instance))
}

/// `POST /eureka/apps/{app}`: exactly 204, as clients check.
async fn register(
    State(state): State<AppState>,
    Path(app): Path<String>,
    request: Request,
) -> Result<Response, EurekaError> {
    let service = ids::service_of_app(&app).map_err(EurekaError::bad_request)?;
    let headers = request.headers().clone();
    let body = crate::http::extract::read_body(request).await?;
    let registration = wire::parse_registration(&decode(&headers, &body)?)?;
    if !registration.app.eq_ignore_ascii_case(&app) {
        return Err(EurekaError::bad_request(format!(
            "instance.app '{}' is not the app of the path, '{app}'",
            registration.app
        )));
    }
    let id = ids::model_id(&registration.instance_id).map_err(EurekaError::bad_request)?;
    // An instance of another API whose id reads as this one on Eureka (`my_id`, which a
    // Eureka registration stores as `my_5fid`): two instances under one Eureka id would
    // make clients' copies differ from the registry's hash code forever.
    if let Some((other, _)) = find(&state, &service, &registration.instance_id)
        && other != id
    {
        return Err(EurekaError::new(
            StatusCode::CONFLICT,
            format!(
                "instance id '{}' is taken in app '{app}' by the instance '{other}' of another API; deregister it there or choose another id",
                registration.instance_id
            ),
        ));
    }
    let validated = wire::to_spec(&registration)?
        .validate(
            service.clone(),
            id.clone(),
            state.settings.default_ttl_seconds(),
        )
        .map_err(ApiError::from)?;
    let reported = registration.status;
    let now = state.now();
    change(
        &state,
        &service,
        &id,
        now,
        Box::new(move |old| {
            let registered = lifecycle::register(old, &validated, now);
            status::with_status(old, registered, reported, false, now)
        }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /eureka/apps/{app}/{id}`: a heartbeat. 404 (the client registers again) when the
/// instance is unknown, when its override was removed without a value, or when the
/// client's `lastDirtyTimestamp` is newer than the one it registered with.
async fn renew(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, EurekaError> {
    let (service, model_id, instance) = known(&state, &app, &id)?;
    if status::needs_registration(&instance) {
        return Err(unknown(&app, &id));
    }
    let pairs = query_pairs(query.as_deref());
    let given = query_value(&pairs, "lastDirtyTimestamp").and_then(|t| t.parse::<u64>().ok());
    let stored = instance
        .metadata
        .get(keys::LAST_DIRTY)
        .and_then(|t| t.parse::<u64>().ok());
    if let (Some(given), Some(stored)) = (given, stored)
        && given > stored
    {
        return Err(unknown(&app, &id));
    }
    let now = state.now();
    // A status the instance reported (DOWN) holds across renewals, as in Eureka.
    let renewal = state
        .writer
        .renew(
            &service,
            &model_id,
            now,
            true,
            Box::new(move |old| {
                old.map_or(Mutation::Unchanged, |o| {
                    let held = o.lease_status.unwrap_or(Status::Passing);
                    lifecycle::report(o, held, o.lease_output.clone(), now)
                })
            }),
        )
        .await?;
    match renewal {
        Renewal::Unreachable => Err(EurekaError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            UNREACHABLE,
        )),
        Renewal::Written(applied) if applied.record.is_none() => Err(unknown(&app, &id)),
        Renewal::Queued(_) | Renewal::Written(_) => Ok(StatusCode::OK.into_response()),
    }
}

/// `DELETE /eureka/apps/{app}/{id}`: exactly 200, as clients check; 404 when unknown.
async fn cancel(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, EurekaError> {
    let (service, model_id, _) = known(&state, &app, &id)?;
    let applied = change(
        &state,
        &service,
        &model_id,
        state.now(),
        Box::new(|old| old.map_or(Mutation::Unchanged, lifecycle::deregister)),
    )
    .await?;
    if !applied.existed {
        return Err(unknown(&app, &id));
    }
    Ok(StatusCode::OK.into_response())
}

/// Sets a status as an override on a known instance.
async fn force_status(
    state: &AppState,
    app: &str,
    id: &str,
    wanted: EurekaStatus,
) -> Result<Response, EurekaError> {
    let (service, model_id, _) = known(state, app, id)?;
    let now = state.now();
    let applied = change(
        state,
        &service,
        &model_id,
        now,
        Box::new(move |old| status::with_status(old, Mutation::Unchanged, wanted, true, now)),
    )
    .await?;
    if applied.record.is_none() {
        return Err(unknown(app, id));
    }
    Ok(StatusCode::OK.into_response())
}

fn status_value(pairs: &[(String, String)]) -> Result<Option<EurekaStatus>, EurekaError> {
    query_value(pairs, "value")
        .filter(|v| !v.is_empty())
        .map(|raw| {
            EurekaStatus::parse(raw).ok_or_else(|| {
                EurekaError::bad_request(format!(
                    "value '{raw}' is not a Eureka status (UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN)"
                ))
            })
        })
        .transpose()
}

/// `PUT .../{id}/status?value=OUT_OF_SERVICE`: the override holds until removed.
async fn set_override(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, EurekaError> {
    let pairs = query_pairs(query.as_deref());
    let wanted =
        status_value(&pairs)?.ok_or_else(|| EurekaError::bad_request("value is required"))?;
    force_status(&state, &app, &id, wanted).await
}

/// `DELETE .../{id}/status[?value=UP]`: removes the override; without a value the
/// instance is `UNKNOWN` until the client registers again (its next renewal answers 404).
async fn remove_override(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, EurekaError> {
    let pairs = query_pairs(query.as_deref());
    let wanted = status_value(&pairs)?.unwrap_or(EurekaStatus::Unknown);
    force_status(&state, &app, &id, wanted).await
}

/// `PUT .../{id}/metadata?key=value&...`: adds or replaces the pairs given.
async fn update_metadata(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, EurekaError> {
    let pairs = query_pairs(query.as_deref());
    if let Some((key, _)) = pairs.iter().find(|(key, _)| key.starts_with(keys::PREFIX)) {
        return Err(EurekaError::bad_request(format!(
            "metadata key '{key}': keys starting with '{}' are the registry's own",
            keys::PREFIX
        )));
    }
    let (service, model_id, instance) = known(&state, &app, &id)?;
    let mut merged = instance.metadata.clone();
    merged.extend(pairs.iter().cloned());
    validate_metadata(&merged).map_err(ApiError::from)?;
    let applied = change(
        &state,
        &service,
        &model_id,
        state.now(),
        Box::new(move |old| {
            let Some(old) = old else {
                return Mutation::Unchanged;
            };
            let mut record = old.clone();
            record.metadata.extend(pairs.iter().cloned());
            if record.metadata == old.metadata {
                return Mutation::Unchanged;
            }
            Mutation::Save {
                change: Some(Change {
                    kind: EventKind::Updated,
                    reason: Reason::Updated,
                    from: Some(old.status),
                    to: Some(record.status),
                }),
                record,
                reschedule_check: false,
            }
        }),
    )
    .await?;
    if !applied.existed {
        return Err(unknown(&app, &id));
    }
    Ok(StatusCode::OK.into_response())
}
