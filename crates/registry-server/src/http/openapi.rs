//! The OpenAPI document served at `/openapi.json`: derived from the wire types and the
//! route annotations, then given the rules of the wire format the derived schemas cannot
//! state by themselves (name, id, URL and duration patterns, the limits of
//! `registry_api::limits`, the statuses a client may set) and the links from a
//! registration to what can be done with it, so generated clients and API fuzzers
//! (stateful ones included) know exactly what the registry accepts.
//!
//! The rules are applied to the document as JSON: utoipa's link type writes
//! `operation_id` where OpenAPI wants `operationId`.

use axum::routing::get;
use axum::{Json, Router};
use registry_api::limits;
use serde_json::{Value, json};
use utoipa::OpenApi;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi))
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
        super::legacy::register,
        super::legacy::lookup,
        super::sd::prometheus,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
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
        registry_api::StatusSummary,
        registry_api::StatusCounts,
        super::status::StatusAnswer,
        registry_api::SelfPreservation,
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi() -> Json<serde_json::Value> {
    Json(document())
}

/// `ServiceName::parse` as a regular expression (a DNS label).
pub const SERVICE_NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// `InstanceId::parse` as a regular expression: 1-128 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub const INSTANCE_ID_PATTERN: &str = r"^(?!\.\.?$)[A-Za-z0-9._-]{1,128}$";

/// The OpenAPI document served at `/openapi.json`.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    constrain_parameters(&mut doc);
    if let Some(schemas) = doc.pointer_mut("/components/schemas") {
        constrain_bodies(schemas);
    }
    link_registration(&mut doc);
    document_rate_limit(&mut doc);
    doc
}

/// Every operation of the document, with its method.
fn operations(doc: &mut Value) -> impl Iterator<Item = (&String, &mut Value)> {
    doc.get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.iter_mut())
}

/// Every write may answer 429 when `REGISTRY_WRITE_RATE_LIMIT` is set.
fn document_rate_limit(doc: &mut Value) {
    let writes = operations(doc)
        .filter(|(method, _)| matches!(method.as_str(), "put" | "post" | "delete"))
        .map(|(_, operation)| operation);
    for operation in writes {
        merge(
            operation,
            "/responses",
            json!({"429": {
                "description": "Too many writes from this client (see Retry-After)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            }}),
        );
    }
}

/// `registry_api::parse_duration` within the range it accepts: whole seconds, or up to six
/// parts such as `1m30s` of at most nine digits each (so no sum overflows).
pub const DURATION_PATTERN: &str = "^([0-9]{1,18}|([0-9]{1,9}(ms|s|m|h|d)){1,6})$";

/// Text without control characters (`char::is_control`), as tags and metadata must be.
pub const NO_CONTROL_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// An event index as text (`Last-Event-ID`): what `parse_index` accepts, 0 to `i64::MAX`.
pub const INDEX_TEXT_PATTERN: &str = "^[0-9]{1,18}$";

/// A paging cursor's alphabet (base64url without padding): what a cursor is written
/// with, not a check of its content, which `Cursor::decode` makes (400 otherwise).
pub const CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]{2,}$";

/// What `NameFilter::parse` accepts: part of a service name, in any case.
pub const NAME_FILTER_PATTERN: &str = "^[A-Za-z0-9-]{1,63}$";

/// Parameters take the rules of the parsers behind them: `service`, `id` and `instance`
/// the name and id patterns, moments RFC 3339 (`format: date-time`), `wait` the duration
/// pattern, indexes the range `parse_index` accepts, `limit`, `cursor` and `name` what
/// paging accepts.
fn constrain_parameters(doc: &mut Value) {
    for (_, operation) in operations(doc) {
        let parameters = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten();
        for parameter in parameters {
            let is_moment = parameter.pointer("/schema/type") == Some(&json!("string"));
            let rule = match parameter.get("name").and_then(Value::as_str) {
                Some("service") => json!({"pattern": SERVICE_NAME_PATTERN}),
                Some("id" | "instance") => json!({"pattern": INSTANCE_ID_PATTERN}),
                Some("at" | "since" | "until") if is_moment => json!({"format": "date-time"}),
                Some("wait") => json!({"pattern": DURATION_PATTERN}),
                Some("limit") => json!({"minimum": 1, "maximum": crate::paging::MAX_LIMIT}),
                Some("cursor") => json!({"pattern": CURSOR_PATTERN}),
                Some("name") => json!({"pattern": NAME_FILTER_PATTERN}),
                Some("index" | "since") => json!({"minimum": 0, "maximum": i64::MAX}),
                Some("Last-Event-ID") => {
                    json!({"type": "string", "pattern": INDEX_TEXT_PATTERN, "format": null})
                }
                _ => continue,
            };
            merge(parameter, "/schema", rule);
            if let Some(schema) = parameter.get_mut("schema").and_then(Value::as_object_mut) {
                schema.retain(|_, value| !value.is_null());
            }
        }
    }
}

fn constrain_bodies(schemas: &mut Value) {
    let instance = "/InstanceSpec/properties";
    let check = "/CheckSpec/properties";
    let interval = json!({"minimum": 1, "maximum": limits::MAX_INTERVAL_SECONDS});
    let metadata_key = json!({
        "minLength": 1,
        "maxLength": limits::MAX_METADATA_KEY_CHARS,
        "pattern": NO_CONTROL_PATTERN,
    });
    let metadata_value = json!({
        "type": "string",
        "maxLength": limits::MAX_METADATA_VALUE_CHARS,
        "pattern": NO_CONTROL_PATTERN,
    });
    let rules = [
        (
            format!("{instance}/url"),
            json!({"pattern": registry_api::URL_PATTERN, "maxLength": limits::MAX_URL_BYTES}),
        ),
        (
            "/SeedServiceSpec/properties/uri".to_owned(),
            json!({"pattern": registry_api::URL_PATTERN, "maxLength": limits::MAX_URL_BYTES}),
        ),
        (
            format!("{instance}/tags"),
            json!({"maxItems": limits::MAX_TAGS}),
        ),
        (
            format!("{instance}/tags/items"),
            json!({"minLength": 1, "maxLength": limits::MAX_TAG_CHARS, "pattern": NO_CONTROL_PATTERN}),
        ),
        (
            format!("{instance}/metadata"),
            json!({
                "maxProperties": limits::MAX_METADATA_PAIRS,
                "propertyNames": metadata_key.clone(),
                "additionalProperties": metadata_value.clone(),
            }),
        ),
        (
            format!("{instance}/ttl_seconds"),
            json!({"maximum": limits::MAX_TTL_SECONDS}),
        ),
        (
            format!("{instance}/deregister_critical_after"),
            json!({"pattern": DURATION_PATTERN}),
        ),
        (
            format!("{check}/tcp"),
            json!({"pattern": r"^[^\x00-\x20]+:[0-9]{1,5}$"}),
        ),
        (
            format!("{check}/http"),
            json!({"pattern": "^/([^/].*)?$", "maxLength": limits::MAX_CHECK_PATH_BYTES}),
        ),
        (format!("{check}/interval_seconds"), interval.clone()),
        (format!("{check}/timeout_seconds"), interval),
        (
            format!("{check}/expect_json"),
            json!({
                "minProperties": 1,
                "maxProperties": limits::MAX_EXPECT_JSON_PAIRS,
                "propertyNames": metadata_key,
                "additionalProperties": metadata_value,
            }),
        ),
        (
            "/StatusChange/properties/reason".to_owned(),
            json!({
                "maxLength": super::instances::MAX_MAINTENANCE_REASON_CHARS,
                "pattern": NO_CONTROL_PATTERN,
            }),
        ),
        (
            "/SeedServiceSpec/properties/name".to_owned(),
            json!({"pattern": SERVICE_NAME_PATTERN}),
        ),
    ];
    for (pointer, rule) in rules {
        merge(schemas, &pointer, rule);
    }
    // Health comes from leases and checks: a client sets only these two.
    if let Some(status) = schemas.pointer_mut("/StatusChange/properties/status") {
        *status = json!({"type": "string", "enum": ["maintenance", "passing"]});
    }
    // Maintenance is set with `PUT .../status`, never at registration.
    if let Some(status) = schemas.pointer_mut("/InstanceSpec/properties/initial_status") {
        *status = json!({
            "type": ["string", "null"],
            "enum": ["passing", "warning", "critical", null],
        });
    }
}

/// Adds the fields of `rule` (an object) to the schema at `pointer` when it exists, so a
/// renamed field is skipped rather than invented; the tests below notice it.
fn merge(root: &mut Value, pointer: &str, rule: Value) {
    let (Some(schema), Value::Object(rule)) = (
        root.pointer_mut(pointer).and_then(Value::as_object_mut),
        rule,
    ) else {
        return;
    };
    schema.extend(rule);
}

/// A registration's answer links to the heartbeat, status, deregistration and lookup of
/// the instance it created.
fn link_registration(doc: &mut Value) {
    let instance = |operation_id: &str| {
        json!({
            "operationId": operation_id,
            "parameters": {"service": "$request.path.service", "id": "$request.path.id"},
        })
    };
    let links = json!({
        "heartbeat": instance("heartbeat"),
        "set_status": instance("set_status"),
        "deregister": instance("deregister"),
        "lookup": {"operationId": "one", "parameters": {"service": "$request.path.service"}},
    });
    for code in ["200", "201"] {
        let pointer =
            format!("/paths/~1v1~1services~1{{service}}~1instances~1{{id}}/put/responses/{code}");
        merge(doc, &pointer, json!({"links": links}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_carry_the_name_and_id_patterns() {
        let doc = document();
        let parameters =
            &doc["paths"]["/v1/services/{service}/instances/{id}"]["put"]["parameters"];
        let pattern = |name: &str| {
            parameters
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
                .map(|p| p["schema"]["pattern"].clone())
        };
        assert_eq!(pattern("service"), Some(SERVICE_NAME_PATTERN.into()));
        assert_eq!(pattern("id"), Some(INSTANCE_ID_PATTERN.into()));
    }

    /// Each pattern accepts only what its parser accepts (a pattern may leave some
    /// accepted values out, never let a refused one in).
    #[test]
    fn patterns_accept_only_what_the_parsers_accept() {
        let url = regex::Regex::new(registry_api::URL_PATTERN).expect("URL pattern");
        for raw in [
            "http://10.0.0.7:8080",
            "https://concat.default.svc:443/api?x=1#top",
            "http://a",
            "http://A-b.c0/",
            "http://localhost:65535/",
            "http://localhost:0080",
            "https://[::1]:8443/api",
            "http://[2001:db8::7]/",
            "http://[::ffff:1.2.3.4]/",
            "http://[1::2::3]/",
            "http://my-host.example.com/path with",
            "http://host/\u{feff}",
            "http://host/\u{85}",
            "http://host/\u{a0}",
            "http://host/é?q=ü",
            "http://user@host/",
            "http://host:65536/",
            "http://host:08080/",
            "http://host:/",
            "http://1.2.3.4.5/",
            "http://1.2.3.04/",
            "http://a.1/",
            "http://256.0.0.1/",
            "http://host./",
            "http://host*/",
            "http://ho_st/",
            "http://host\\path",
            "HTTP://host/",
            "ftp://host/",
            "http:///path",
            "",
        ] {
            assert_eq!(
                url.is_match(raw),
                registry_api::validate_url(raw).is_ok(),
                "pattern and validate_url disagree on {raw:?}"
            );
        }

        let duration = regex::Regex::new(DURATION_PATTERN).expect("duration pattern");
        for raw in [
            "500ms",
            "30s",
            "1m30s",
            "999999999999999999",
            "999999999d999999999d999999999d999999999d999999999d999999999d",
            "",
            "1x",
            "s",
        ] {
            assert_eq!(
                duration.is_match(raw),
                registry_api::parse_duration(raw).is_ok(),
                "{raw:?}"
            );
        }
        let index = regex::Regex::new(INDEX_TEXT_PATTERN).expect("index pattern");
        for raw in ["0", "42", "999999999999999999", "", "null", "-1"] {
            assert_eq!(
                index.is_match(raw),
                super::super::extract::parse_index(raw).is_ok(),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn paging_patterns_agree_with_the_parsers() {
        let name = regex::Regex::new(NAME_FILTER_PATTERN).expect("name filter pattern");
        for raw in [
            "sum",
            "SUM",
            "a-b",
            "0",
            &"a".repeat(63),
            &"a".repeat(64),
            "",
            "a_b",
            "a b",
            "é",
        ] {
            assert_eq!(
                name.is_match(raw),
                crate::paging::NameFilter::parse(raw).is_ok(),
                "{raw:?}"
            );
        }
        let cursor = regex::Regex::new(CURSOR_PATTERN).expect("cursor pattern");
        for after in ["a", "sum", &"z".repeat(63)] {
            let written = crate::paging::Cursor::after(after).encode();
            assert!(cursor.is_match(&written), "{written}");
        }
    }

    #[test]
    fn writes_may_answer_429() {
        let doc = document();
        let put = &doc["paths"]["/v1/services/{service}/instances/{id}"]["put"];
        assert!(put["responses"]["429"].is_object());
        let get = &doc["paths"]["/v1/services/{service}"]["get"];
        assert!(get["responses"]["429"].is_null());
    }

    #[test]
    fn bodies_carry_the_limits() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let spec = &schemas["InstanceSpec"]["properties"];
        assert_eq!(spec["url"]["maxLength"], limits::MAX_URL_BYTES);
        assert_eq!(spec["tags"]["maxItems"], limits::MAX_TAGS);
        assert_eq!(spec["tags"]["items"]["maxLength"], limits::MAX_TAG_CHARS);
        assert_eq!(
            spec["metadata"]["maxProperties"],
            limits::MAX_METADATA_PAIRS
        );
        assert_eq!(spec["ttl_seconds"]["maximum"], limits::MAX_TTL_SECONDS);
        let check = &schemas["CheckSpec"]["properties"];
        assert_eq!(check["http"]["maxLength"], limits::MAX_CHECK_PATH_BYTES);
        assert_eq!(check["interval_seconds"]["minimum"], 1);
        assert_eq!(
            check["timeout_seconds"]["maximum"],
            limits::MAX_INTERVAL_SECONDS
        );
        assert_eq!(
            check["expect_json"]["maxProperties"],
            limits::MAX_EXPECT_JSON_PAIRS
        );
        let status = &schemas["StatusChange"]["properties"]["status"];
        assert_eq!(status["enum"], json!(["maintenance", "passing"]));
        assert_eq!(
            schemas["SeedServiceSpec"]["properties"]["name"]["pattern"],
            SERVICE_NAME_PATTERN
        );
    }

    #[test]
    fn operation_ids_are_unique_and_links_name_real_ones() {
        let doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for item in doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
        {
            for operation in item.as_object().into_iter().flat_map(|o| o.values()) {
                let id = operation["operationId"].as_str().expect("operationId");
                assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            }
        }
        let put = &doc["paths"]["/v1/services/{service}/instances/{id}"]["put"];
        for code in ["200", "201"] {
            let links = put["responses"][code]["links"].as_object().expect("links");
            assert_eq!(links.len(), 4);
            for link in links.values() {
                let target = link["operationId"].as_str().expect("link operationId");
                assert!(ids.contains(target), "link to unknown operation {target}");
            }
        }
    }

    #[test]
    fn paging_and_the_summary_are_documented() {
        let doc = document();
        let parameters = |path: &str| -> Vec<String> {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        };
        for path in ["/v1/services", "/v1/status"] {
            for name in ["name", "limit", "cursor"] {
                assert!(parameters(path).iter().any(|p| p == name), "{path}: {name}");
            }
        }
        assert!(parameters("/v1/status").iter().any(|p| p == "summary"));
        let limit = doc["paths"]["/v1/services"]["get"]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "limit")
            .map(|p| p["schema"]["maximum"].clone());
        assert_eq!(limit, Some(json!(crate::paging::MAX_LIMIT)));
        let schemas = &doc["components"]["schemas"];
        for (schema, field) in [
            ("ServiceList", "next_cursor"),
            ("SystemStatus", "next_cursor"),
            ("StatusSummary", "critical"),
            ("StatusSummary", "critical_total"),
            ("StatusCounts", "maintenance"),
        ] {
            assert!(
                schemas[schema]["properties"][field].is_object(),
                "{schema}.{field}"
            );
        }
        let answer = &doc["paths"]["/v1/status"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["$ref"];
        assert_eq!(answer, "#/components/schemas/StatusAnswer");
        assert_eq!(
            schemas["StatusAnswer"]["oneOf"].as_array().map(Vec::len),
            Some(2)
        );
    }

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
