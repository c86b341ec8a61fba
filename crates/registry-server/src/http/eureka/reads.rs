//! Eureka's reads, all answered from the view: the registry, its delta, one application,
//! one instance, and the instances of a VIP address.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use registry_api::{EventKind, Instance};
use serde_json::{Value, json};

use super::render::{self, applications, grouped, hashcode};
use super::writes::find;
use super::{EurekaError, answer, answer_bytes, encode, ids, wants_json};
use crate::http::AppState;

/// How far back `GET /eureka/apps/delta` looks, as Eureka's server keeps its changes.
const DELTA_WINDOW: chrono::TimeDelta = chrono::TimeDelta::seconds(180);
/// Most recent events the delta reads; older changes are left to a full fetch (a client
/// whose copy then differs sees the hash code differ and fetches everything).
const DELTA_EVENTS: u32 = 4_000;

pub fn router(prefix: &str) -> Router<AppState> {
    Router::new()
        .route(&format!("{prefix}/apps"), get(all_apps))
        .route(&format!("{prefix}/apps/"), get(all_apps))
        .route(&format!("{prefix}/apps/delta"), get(delta))
        .route(&format!("{prefix}/apps/{{app}}"), get(one_app))
        .route(&format!("{prefix}/apps/{{app}}/{{id}}"), get(one_instance))
        .route(&format!("{prefix}/instances/{{id}}"), get(any_instance))
        .route(&format!("{prefix}/vips/{{vip}}"), get(vip))
        .route(&format!("{prefix}/svips/{{svip}}"), get(secure_vip))
}

/// `GET /eureka/apps`: every instance of every service.
async fn all_apps(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (index, all) = state.view.all_instances();
    answer(
        &headers,
        &applications(index, hashcode(&all), grouped(&all)),
    )
}

/// `GET /eureka/apps/delta`: the instances that changed in the last 180 s, each with its
/// `actionType`, and the hash code of the whole registry after them.
async fn delta(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, EurekaError> {
    let (index, all) = state.view.all_instances();
    let since = state.now() - DELTA_WINDOW;
    let after = index.saturating_sub(u64::from(DELTA_EVENTS));
    // The view keeps the latest events since it was loaded; right after a start (or a
    // burst), older ones come from the store, or the delta would miss them.
    let events = match state.view.recent_events_after(after, None, usize::MAX) {
        Some(events) => events,
        None => state.store.events_after(after, None, DELTA_EVENTS).await?,
    };
    let now_by_key: BTreeMap<(&str, &str), &Instance> = all
        .iter()
        .map(|i| ((i.service.as_str(), i.id.as_str()), i))
        .collect();
    // The latest change of each instance in the window, with what it left. Its action is
    // the latest change's, as on Eureka's server: a client that already holds the
    // instance ignores an `ADDED` (eureka-js-client does), so a change after the
    // registration is `MODIFIED`.
    let mut changed: BTreeMap<(String, String), (bool, Instance)> = BTreeMap::new();
    for event in events.iter().filter(|e| e.at >= since && e.index <= index) {
        let key = (event.service.clone(), event.instance.clone());
        let added = event.kind == EventKind::Registered;
        changed.insert(key, (added, event.snapshot.clone()));
    }
    let mut by_service: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for ((service, id), (added, snapshot)) in changed {
        let shown = match now_by_key.get(&(service.as_str(), id.as_str())) {
            Some(current) if added => render::instance(current, "ADDED"),
            Some(current) => render::instance(current, "MODIFIED"),
            None => render::instance(&snapshot, "DELETED"),
        };
        by_service.entry(service).or_default().push(shown);
    }
    let apps = by_service
        .into_iter()
        .map(|(service, instances)| {
            json!({"name": ids::app_of_service(&service), "instance": instances})
        })
        .collect();
    Ok(answer(&headers, &applications(index, hashcode(&all), apps)))
}

/// `GET /eureka/apps/{app}`: 404 when the app has no instance. Made once per state of the
/// service and format, and shared by the lookups that follow until the service changes.
async fn one_app(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> Result<Response, EurekaError> {
    let missing = || EurekaError::not_found(format!("app '{app}' is not registered"));
    let service = ids::service_of_app(&app).map_err(|_| missing())?;
    let json = wants_json(&headers);
    let key = if json {
        "eureka-app-json"
    } else {
        "eureka-app-xml"
    };
    let (_, body) = state
        .view
        .service_answer(service.as_str(), key, |_, instances| {
            if instances.is_empty() {
                return Bytes::new();
            }
            let document = json!({"application": render::application(service.as_str(), instances)});
            Bytes::from(encode(json, &document))
        });
    if body.is_empty() {
        return Err(missing());
    }
    Ok(answer_bytes(json, body))
}

/// `GET /eureka/apps/{app}/{id}`.
async fn one_instance(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, EurekaError> {
    let missing =
        || EurekaError::not_found(format!("instance '{id}' of app '{app}' is not registered"));
    let service = ids::service_of_app(&app).map_err(|_| missing())?;
    let (_, instance) = find(&state, &service, &id).ok_or_else(missing)?;
    Ok(answer(
        &headers,
        &json!({"instance": render::instance(&instance, "ADDED")}),
    ))
}

/// `GET /eureka/instances/{id}`: the instance with this id in any app.
async fn any_instance(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, EurekaError> {
    let instance = ids::candidates(&id)
        .into_iter()
        .find_map(|model| {
            state
                .view
                .instances_with_id(model.as_str())
                .into_iter()
                .next()
        })
        .ok_or_else(|| EurekaError::not_found(format!("instance '{id}' is not registered")))?;
    Ok(answer(
        &headers,
        &json!({"instance": render::instance(&instance, "ADDED")}),
    ))
}

fn by_vip(state: &AppState, headers: &HeaderMap, vip: &str, secure: bool) -> Response {
    let (index, all) = state.view.all_instances();
    let matching: Vec<Instance> = all
        .into_iter()
        .filter(|i| render::has_vip(i, vip, secure))
        .collect();
    answer(
        headers,
        &applications(index, hashcode(&matching), grouped(&matching)),
    )
}

/// `GET /eureka/vips/{vip}`.
async fn vip(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(vip): Path<String>,
) -> Response {
    by_vip(&state, &headers, &vip, false)
}

/// `GET /eureka/svips/{svip}`.
async fn secure_vip(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(svip): Path<String>,
) -> Response {
    by_vip(&state, &headers, &svip, true)
}
