//! Consul's reads, all answered from the view and all blocking queries: with `index`, a
//! read holds until what it answers changes (the service's index for one service, the
//! registry's index for answers over every service), as Consul's do.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use registry_api::{Instance, Status};
use serde_json::{Value, json};

use super::render::{self, Context};
use super::{ConsulError, ConsulQuery, answer, answer_bytes, block, to_json};
use crate::http::AppState;
use crate::http::address::UrlAddress;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/service/{id}", get(agent_service))
        .route("/v1/agent/checks", get(agent_checks))
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{service}", get(catalog_service))
        .route("/v1/catalog/datacenters", get(catalog_datacenters))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/health/service/{service}", get(health_service))
        .route("/v1/health/checks/{service}", get(health_checks))
        .route("/v1/health/state/{state}", get(health_state))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
}

/// `filter` is Consul's expression language: refused rather than ignored, since ignoring
/// it would answer more than was asked.
fn refuse_filter(query: &ConsulQuery) -> Result<(), ConsulError> {
    if query.get("filter").is_some_and(|f| !f.is_empty()) {
        return Err(ConsulError::bad_request(
            "filter expressions are not supported by this registry",
        ));
    }
    Ok(())
}

fn ctx<'a>(state: &'a AppState, index: u64) -> Context<'a> {
    Context {
        datacenter: &state.settings.datacenter,
        index: super::consul_index(index),
    }
}

/// Every instance after a blocking wait on the registry's index.
async fn everything(
    state: &AppState,
    query: &ConsulQuery,
) -> Result<(u64, Vec<Instance>), ConsulError> {
    refuse_filter(query)?;
    block(state, query, || state.view.index()).await;
    Ok(state.view.all_instances())
}

/// One service's instances after a blocking wait on the service's index.
async fn one_service(
    state: &AppState,
    query: &ConsulQuery,
    service: &str,
) -> Result<(u64, Vec<Instance>), ConsulError> {
    refuse_filter(query)?;
    block(state, query, || state.view.service_index(service)).await;
    let answer = state.view.service(service, None);
    Ok((answer.index, answer.instances))
}

/// One service's answer after a blocking wait on the service's index, made once per
/// state of the service and `key` (the shape and its filters) and shared until it changes.
async fn one_service_answer(
    state: &AppState,
    query: &ConsulQuery,
    service: &str,
    key: &str,
    make: impl FnOnce(&Context<'_>, &[&Instance]) -> Value,
) -> Result<Response, ConsulError> {
    refuse_filter(query)?;
    block(state, query, || state.view.service_index(service)).await;
    let (index, body) = state.view.service_answer(service, key, |index, instances| {
        to_json(&make(&ctx(state, index), instances))
    });
    Ok(answer_bytes(index, body))
}

/// The cache key of an answer filtered by tags.
fn tags_key(shape: &str, tags: &[&str]) -> String {
    let mut key = shape.to_owned();
    for tag in tags {
        key.push('\u{1f}');
        key.push_str(tag);
    }
    key
}

/// Keys of the agent's maps: the instance id, or `<service>/<id>` for an id that several
/// services have (Consul's ids are unique per agent, ours per service).
fn agent_keys(instances: &[Instance]) -> Vec<String> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for instance in instances {
        *seen.entry(instance.id.as_str()).or_default() += 1;
    }
    instances
        .iter()
        .map(|i| {
            if seen.get(i.id.as_str()).copied().unwrap_or(0) > 1 {
                format!("{}/{}", i.service, i.id)
            } else {
                i.id.clone()
            }
        })
        .collect()
}

/// `GET /v1/agent/services`: id -> service.
async fn agent_services(
    State(state): State<AppState>,
    query: ConsulQuery,
) -> Result<Response, ConsulError> {
    let (index, instances) = everything(&state, &query).await?;
    let ctx = ctx(&state, index);
    let mut out = serde_json::Map::new();
    for (key, instance) in agent_keys(&instances).into_iter().zip(&instances) {
        out.insert(key, render::agent_service(instance, &ctx));
    }
    Ok(answer(index, &Value::Object(out)))
}

/// `GET /v1/agent/service/{id}`.
async fn agent_service(
    State(state): State<AppState>,
    query: ConsulQuery,
    Path(id): Path<String>,
) -> Result<Response, ConsulError> {
    let service = {
        let found = state.view.instances_with_id(&id);
        match found.as_slice() {
            [] => return Err(ConsulError::not_found(format!("unknown service ID: {id}"))),
            [one] => one.service.clone(),
            several => {
                return Err(ConsulError::new(
                    axum::http::StatusCode::CONFLICT,
                    format!(
                        "service ID \"{id}\" is registered for several services ({})",
                        several
                            .iter()
                            .map(|i| i.service.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    };
    let (index, instances) = one_service(&state, &query, &service).await?;
    let Some(instance) = instances.iter().find(|i| i.id == id) else {
        return Err(ConsulError::not_found(format!("unknown service ID: {id}")));
    };
    Ok(answer(
        index,
        &render::agent_service(instance, &ctx(&state, index)),
    ))
}

/// `GET /v1/agent/checks`: check id -> check.
async fn agent_checks(
    State(state): State<AppState>,
    query: ConsulQuery,
) -> Result<Response, ConsulError> {
    let (index, instances) = everything(&state, &query).await?;
    let ctx = ctx(&state, index);
    let mut out = serde_json::Map::new();
    for instance in &instances {
        for check in render::checks(instance, &ctx) {
            let id = check["CheckID"].as_str().unwrap_or_default().to_owned();
            out.insert(id, check);
        }
    }
    Ok(answer(index, &Value::Object(out)))
}

/// The node name the registry answers as an agent.
const AGENT_NODE: &str = "central-registry";

/// `GET /v1/agent/self`: every top-level value an object, as clients index into them.
async fn agent_self(
    State(state): State<AppState>,
    _query: ConsulQuery,
) -> Result<Response, ConsulError> {
    let dc = state.settings.datacenter.as_str();
    let addr = state.settings.addr;
    let body = json!({
        "Config": {
            "Datacenter": dc,
            "PrimaryDatacenter": dc,
            "NodeName": AGENT_NODE,
            "NodeID": render::node_id(AGENT_NODE),
            "Server": true,
            "Revision": "",
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "DebugConfig": {},
        "Coord": {"Vec": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5},
        "Member": {
            "Name": AGENT_NODE,
            "Addr": addr.ip().to_string(),
            "Port": addr.port(),
            "Tags": {"dc": dc, "role": "consul", "build": env!("CARGO_PKG_VERSION")},
            "Status": 1,
        },
        "Stats": {},
        "Meta": {},
        "xDS": {},
    });
    Ok(answer(state.view.index(), &body))
}

/// `GET /v1/catalog/services`: name -> every tag of its instances.
async fn catalog_services(
    State(state): State<AppState>,
    query: ConsulQuery,
) -> Result<Response, ConsulError> {
    let (index, instances) = everything(&state, &query).await?;
    let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for instance in instances {
        services
            .entry(instance.service)
            .or_default()
            .extend(instance.tags);
    }
    Ok(answer(index, &json!(services)))
}

/// `GET /v1/catalog/service/{service}`: flat node-and-service objects; `tag` repeatable.
async fn catalog_service(
    State(state): State<AppState>,
    query: ConsulQuery,
    Path(service): Path<String>,
) -> Result<Response, ConsulError> {
    let tags: Vec<&str> = query.all("tag").collect();
    let key = tags_key("catalog", &tags);
    one_service_answer(&state, &query, &service, &key, |ctx, instances| {
        instances
            .iter()
            .filter(|i| has_tags(i, &tags))
            .map(|i| render::catalog_entry(i, ctx))
            .collect()
    })
    .await
}

fn has_tags(instance: &Instance, tags: &[&str]) -> bool {
    tags.iter()
        .all(|t| instance.tags.iter().any(|have| have == t))
}

/// `GET /v1/catalog/datacenters`: the one this registry is.
async fn catalog_datacenters(
    State(state): State<AppState>,
    _query: ConsulQuery,
) -> Result<Response, ConsulError> {
    Ok(answer(
        state.view.index(),
        &json!([state.settings.datacenter]),
    ))
}

/// `GET /v1/catalog/nodes`: one synthesized node per instance host.
async fn catalog_nodes(
    State(state): State<AppState>,
    query: ConsulQuery,
) -> Result<Response, ConsulError> {
    let (index, instances) = everything(&state, &query).await?;
    let hosts: BTreeSet<String> = instances.iter().map(|i| UrlAddress::of(i).host).collect();
    let ctx = ctx(&state, index);
    let out: Vec<Value> = hosts.iter().map(|h| render::node(h, &ctx)).collect();
    Ok(answer(index, &Value::Array(out)))
}

/// `GET /v1/health/service/{service}?passing&tag=`: `[{Node, Service, Checks}]`.
async fn health_service(
    State(state): State<AppState>,
    query: ConsulQuery,
    Path(service): Path<String>,
) -> Result<Response, ConsulError> {
    let passing = query.flag("passing")?;
    let tags: Vec<&str> = query.all("tag").collect();
    let key = tags_key(if passing { "health-passing" } else { "health" }, &tags);
    one_service_answer(&state, &query, &service, &key, |ctx, instances| {
        instances
            .iter()
            .filter(|i| has_tags(i, &tags))
            .filter(|i| !passing || i.status == Status::Passing)
            .map(|i| render::health_entry(i, ctx))
            .collect()
    })
    .await
}

/// `GET /v1/health/checks/{service}`.
async fn health_checks(
    State(state): State<AppState>,
    query: ConsulQuery,
    Path(service): Path<String>,
) -> Result<Response, ConsulError> {
    one_service_answer(&state, &query, &service, "checks", |ctx, instances| {
        instances
            .iter()
            .flat_map(|i| render::checks(i, ctx))
            .collect()
    })
    .await
}

/// `GET /v1/health/state/{state}`: `any`, `passing`, `warning` or `critical`.
async fn health_state(
    State(state): State<AppState>,
    query: ConsulQuery,
    Path(wanted): Path<String>,
) -> Result<Response, ConsulError> {
    if !matches!(wanted.as_str(), "any" | "passing" | "warning" | "critical") {
        return Err(ConsulError::bad_request(format!(
            "Invalid state \"{wanted}\" (any, passing, warning or critical)"
        )));
    }
    let (index, instances) = everything(&state, &query).await?;
    let ctx = ctx(&state, index);
    let out: Vec<Value> = instances
        .iter()
        .flat_map(|i| render::checks(i, &ctx))
        .filter(|c| wanted == "any" || c["Status"] == wanted.as_str())
        .collect();
    Ok(answer(index, &Value::Array(out)))
}

/// `GET /v1/status/leader`: this registry (every replica is as good as a leader: the
/// database orders writes).
async fn status_leader(
    State(state): State<AppState>,
    _query: ConsulQuery,
) -> Result<Response, ConsulError> {
    Ok(answer(
        state.view.index(),
        &json!(state.settings.addr.to_string()),
    ))
}

/// `GET /v1/status/peers`.
async fn status_peers(
    State(state): State<AppState>,
    _query: ConsulQuery,
) -> Result<Response, ConsulError> {
    Ok(answer(
        state.view.index(),
        &json!([state.settings.addr.to_string()]),
    ))
}
