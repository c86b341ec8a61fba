//! The v1 HTTP API route by route, as docs/api.md states it, on both stores: status
//! codes, bodies and headers, blocking queries, the event stream, auth and the open
//! operational routes. Raw `reqwest` calls are used wherever the typed client would hide
//! the status code or the wire format.

use std::time::{Duration, Instant};

use crate::support::{Backend, TestRegistry, eventually};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use registry_api::{EventKind, INDEX_HEADER, InstanceSpec, Reason, Status};
use registry_client::{EventStream, RegistryApi, StreamItem};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

/// Every field an instance object carries (docs/api.md, Instances).
const INSTANCE_FIELDS: [&str; 13] = [
    "id",
    "service",
    "url",
    "status",
    "tags",
    "metadata",
    "ttl_seconds",
    "check",
    "registered_at",
    "last_heartbeat_at",
    "lease_expires_at",
    "status_changed_at",
    "last_check",
];

/// How long a test waits for one item of an event stream before failing.
const STREAM_ITEM_DEADLINE: Duration = Duration::from_secs(10);

fn instance_path(service: &str, id: &str) -> String {
    format!("/v1/services/{service}/instances/{id}")
}

/// Sends a request and answers its status and JSON body (`Null` when the body is empty).
async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let bytes = response.bytes().await.expect("body read");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "HTTP {status}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, body)
}

/// Asserts the error shape `{"error":{"code","message","field"?}}`.
#[track_caller]
fn assert_error(body: &Value, code: &str, field: Option<&str>) {
    let error = &body["error"];
    assert_eq!(error["code"], json!(code), "error code in {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error message in {body}"
    );
    match field {
        Some(field) => assert_eq!(error["field"], json!(field), "error field in {body}"),
        None => assert!(error.get("field").is_none(), "no field expected in {body}"),
    }
}

fn time(value: &Value) -> DateTime<Utc> {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value} is not a time: {e}"))
}

fn spec(url: &str) -> InstanceSpec {
    InstanceSpec::new(url)
}

fn spec_with_ttl(url: &str, ttl_seconds: u32) -> InstanceSpec {
    let mut spec = InstanceSpec::new(url);
    spec.ttl_seconds = Some(ttl_seconds);
    spec
}

/// The next item of a typed event stream, within a deadline.
async fn next_item(stream: &mut EventStream) -> StreamItem {
    tokio::time::timeout(STREAM_ITEM_DEADLINE, stream.next())
        .await
        .expect("an event within the deadline")
        .expect("the stream is still open")
        .expect("a well-formed item")
}

/// The next item, which must be an event (not a reset).
async fn next_event(stream: &mut EventStream) -> registry_api::Event {
    match next_item(stream).await {
        StreamItem::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// One raw server-sent message, to check the framing the typed client hides.
#[derive(Debug)]
struct RawMessage {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// A minimal reader of `text/event-stream` (the registry ends lines with `\n`).
struct RawSse {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl RawSse {
    async fn open(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.expect("request sent");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type {content_type}"
        );
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next message with data (comments such as keepalives are skipped).
    async fn next(&mut self) -> RawMessage {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("UTF-8 message");
                let mut message = RawMessage {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with(':'))
                {
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match name {
                        "id" => message.id = Some(value.to_owned()),
                        "event" => message.event = Some(value.to_owned()),
                        "data" => {
                            if has_data {
                                message.data.push('\n');
                            }
                            message.data.push_str(value);
                            has_data = true;
                        }
                        _ => {}
                    }
                }
                if has_data {
                    return message;
                }
                continue;
            }
            let chunk = tokio::time::timeout(STREAM_ITEM_DEADLINE, self.response.chunk())
                .await
                .expect("a message within the deadline")
                .expect("the stream is readable")
                .expect("the stream is still open");
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writes on one instance
// ---------------------------------------------------------------------------------------

// PUT answers 201 for a new instance and 200 for a replacement, with every instance
// field; the default lease is 10 s, a replacement keeps `registered_at` and returns
// omitted fields to their defaults, and `ttl_seconds: 0` has no lease.
both_stores!(
    register_answers_201_then_200_with_the_whole_instance,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let url = registry.url(&instance_path("sum", "sum-1"));
        let (status, first) = call(registry.http.put(&url).json(&json!({
            "url": "http://10.0.0.1:4040",
            "tags": ["v1", "blue"],
            "metadata": {"zone": "a"}
        })))
        .await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        for field in INSTANCE_FIELDS {
            assert!(
                first.get(field).is_some(),
                "field {field} missing in {first}"
            );
        }
        assert_eq!(first["id"], json!("sum-1"));
        assert_eq!(first["service"], json!("sum"));
        assert_eq!(first["url"], json!("http://10.0.0.1:4040"));
        assert_eq!(first["status"], json!("passing"));
        assert_eq!(first["tags"], json!(["v1", "blue"]));
        assert_eq!(first["metadata"], json!({"zone": "a"}));
        assert_eq!(first["ttl_seconds"], json!(10), "the default TTL is 10 s");
        assert_eq!(first["check"], Value::Null);
        assert_eq!(first["last_check"], Value::Null);
        let registered_at = time(&first["registered_at"]);
        assert_eq!(
            time(&first["lease_expires_at"]) - time(&first["last_heartbeat_at"]),
            chrono::Duration::seconds(10)
        );

        // Replacing with other tags and no metadata: 200, same registered_at, new spec.
        let (status, replaced) = call(registry.http.put(&url).json(&json!({
            "url": "http://10.0.0.1:4040",
            "tags": ["v2"]
        })))
        .await;
        assert_eq!(status, StatusCode::OK, "{replaced}");
        for field in INSTANCE_FIELDS {
            assert!(replaced.get(field).is_some(), "field {field} missing");
        }
        assert_eq!(time(&replaced["registered_at"]), registered_at);
        assert_eq!(replaced["tags"], json!(["v2"]));
        assert_eq!(
            replaced["metadata"],
            json!({}),
            "omitted fields return to defaults"
        );
        assert!(time(&replaced["last_heartbeat_at"]) >= time(&first["last_heartbeat_at"]));

        // ttl_seconds 0: no lease.
        let (status, no_lease) = call(
            registry
                .http
                .put(registry.url(&instance_path("sum", "sum-2")))
                .json(&json!({"url": "http://10.0.0.2:4040", "ttl_seconds": 0})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(no_lease["ttl_seconds"], json!(0));
        assert_eq!(no_lease["lease_expires_at"], Value::Null);

        // What the reads answer is what the write answered.
        let listed = registry.api.service("sum", None).await.expect("service");
        let stored = listed
            .instances
            .iter()
            .find(|i| i.id == "sum-1")
            .expect("sum-1 listed");
        assert_eq!(stored.registered_at, registered_at);
        assert_eq!(stored.tags, vec!["v2".to_owned()]);
        registry.stop().await;
    }
);

// A heartbeat answers 200 `{status, lease_expires_at}`, renews the lease without
// appending an event, and answers 404 for an instance the registry does not know.
both_stores!(
    heartbeat_renews_the_lease_and_404s_an_unknown_instance,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let registered = registry
            .api
            .register("sum", "sum-1", &spec_with_ttl("http://10.0.0.1:4040", 30))
            .await
            .expect("register");
        let index_before = registry.api.service("sum", None).await.expect("read").index;

        let url = registry.url(&format!("{}/heartbeat", instance_path("sum", "sum-1")));
        let (status, body) = call(registry.http.put(&url)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let keys: Vec<&str> = body
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 2, "only status and lease_expires_at: {body}");
        assert_eq!(body["status"], json!("passing"));
        let renewed = time(&body["lease_expires_at"]);
        let first_lease = registered.instance.lease_expires_at.expect("a lease");
        assert!(renewed >= first_lease, "{renewed} >= {first_lease}");
        assert!(renewed <= Utc::now() + chrono::Duration::seconds(30));

        let after = registry.api.service("sum", None).await.expect("read");
        assert_eq!(
            after.index, index_before,
            "a heartbeat on a live lease appends no event"
        );
        assert_eq!(after.instances[0].lease_expires_at, Some(renewed));

        for path in [
            instance_path("sum", "nobody"),
            instance_path("unknown", "sum-1"),
        ] {
            let (status, body) = call(
                registry
                    .http
                    .put(registry.url(&format!("{path}/heartbeat"))),
            )
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
            assert_error(&body, "not_found", Some("id"));
        }
        registry.stop().await;
    }
);

// PUT .../status takes `maintenance` and `passing` (200, the instance), refuses
// `critical` and `warning` (400 on field `status`) and answers 404 when unknown.
both_stores!(
    status_route_sets_and_clears_maintenance_only,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        registry
            .api
            .register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        let url = registry.url(&format!("{}/status", instance_path("sum", "sum-1")));

        let (status, body) = call(
            registry
                .http
                .put(&url)
                .json(&json!({"status": "maintenance"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], json!("maintenance"));
        assert_eq!(body["id"], json!("sum-1"));
        for field in INSTANCE_FIELDS {
            assert!(body.get(field).is_some(), "field {field} missing");
        }
        let index = registry.api.services().await.expect("list").index;

        // Setting maintenance again is idempotent and appends nothing.
        let (status, body) = call(
            registry
                .http
                .put(&url)
                .json(&json!({"status": "maintenance"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], json!("maintenance"));
        assert_eq!(registry.api.services().await.expect("list").index, index);

        for refused in ["critical", "warning"] {
            let (status, body) =
                call(registry.http.put(&url).json(&json!({"status": refused}))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}: {body}");
            assert_error(&body, "invalid_argument", Some("status"));
        }
        let (status, body) =
            call(registry.http.put(&url).json(&json!({"status": "resting"}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("status"));

        let (status, body) =
            call(registry.http.put(&url).json(&json!({"status": "passing"}))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], json!("passing"));

        let unknown = registry.url(&format!("{}/status", instance_path("sum", "nobody")));
        let (status, body) = call(
            registry
                .http
                .put(&unknown)
                .json(&json!({"status": "maintenance"})),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_error(&body, "not_found", Some("id"));

        let history = registry
            .api
            .history("sum", Some("sum-1"), None, None)
            .await
            .expect("history");
        let reasons: Vec<Reason> = history.events.iter().map(|e| e.reason).collect();
        assert_eq!(
            reasons,
            [
                Reason::Registered,
                Reason::MaintenanceSet,
                Reason::MaintenanceCleared
            ]
        );
        registry.stop().await;
    }
);

// DELETE answers 204 with no body and removes the instance; a second DELETE is 404.
both_stores!(delete_answers_204_then_404, |backend: Backend| async move {
    let registry = TestRegistry::start(backend).await;
    registry
        .api
        .register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
        .await
        .expect("register");
    let url = registry.url(&instance_path("sum", "sum-1"));
    let (status, body) = call(registry.http.delete(&url)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null, "204 has no body");
    let after = registry.api.service("sum", None).await.expect("read");
    assert!(after.instances.is_empty());
    assert_eq!(after.index, 2, "the removal is the service's latest event");
    assert!(
        registry
            .api
            .services()
            .await
            .expect("list")
            .services
            .is_empty()
    );

    let (status, body) = call(registry.http.delete(&url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "not_found", Some("id"));

    let last = registry
        .api
        .history("sum", None, None, None)
        .await
        .expect("history")
        .events
        .pop()
        .expect("an event");
    assert_eq!(last.kind, EventKind::Removed);
    assert_eq!(last.reason, Reason::Deregistered);
    assert_eq!((last.from, last.to), (Some(Status::Passing), None));
    registry.stop().await;
});

// Refused writes answer the documented codes: 415 without JSON, 413 over 64 KiB,
// 400 naming an unknown or invalid field, 400 for a body on a heartbeat.
both_stores!(
    malformed_writes_get_the_error_shape,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let url = registry.url(&instance_path("sum", "sum-1"));

        let (status, body) = call(
            registry
                .http
                .put(&url)
                .header(CONTENT_TYPE, "text/plain")
                .body(r#"{"url":"http://10.0.0.1:4040"}"#),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
        assert_error(&body, "unsupported_media_type", None);

        let big = json!({"url": "http://10.0.0.1:4040", "tags": ["x".repeat(70 * 1024)]});
        let (status, body) = call(registry.http.put(&url).json(&big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_error(&body, "payload_too_large", None);

        let (status, body) = call(
            registry
                .http
                .put(&url)
                .json(&json!({"url": "http://10.0.0.1:4040", "bogus": 1})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("bogus"));

        let (status, body) = call(registry.http.put(&url).json(&json!({
            "url": "http://10.0.0.1:4040",
            "check": {"http": "/health", "interval_seconds": 0}
        })))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("check.interval_seconds"));

        let (status, body) = call(
            registry
                .http
                .put(registry.url(&instance_path("Not_A_Name", "sum-1")))
                .json(&json!({"url": "http://10.0.0.1:4040"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("service"));

        registry
            .api
            .register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        let (status, body) = call(
            registry
                .http
                .put(format!("{url}/heartbeat"))
                .json(&json!({"status": "passing"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], json!("invalid_argument"));
        assert_eq!(
            registry.api.services().await.expect("list").index,
            1,
            "nothing refused was written"
        );
        registry.stop().await;
    }
);

// ---------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------

/// Registers a small fleet covering every roll-up rule and waits until the instances with
/// a 1 s lease have lapsed:
/// - `all-up`: 2 passing
/// - `mixed`: 1 passing, 1 maintenance
/// - `drained`: 2 maintenance
/// - `down`: 1 critical
/// - `down-drained`: 1 critical, 1 maintenance
/// - `half-down`: 1 passing, 1 critical
async fn populate_fleet(api: &RegistryApi) {
    let long = |n: u8| spec_with_ttl(&format!("http://10.0.0.{n}:8080"), 300);
    let short = |n: u8| spec_with_ttl(&format!("http://10.0.1.{n}:8080"), 1);
    for (service, id, spec, maintenance) in [
        ("all-up", "u-1", long(1), false),
        ("all-up", "u-2", long(2), false),
        ("mixed", "m-1", long(3), false),
        ("mixed", "m-2", long(4), true),
        ("drained", "d-1", long(5), true),
        ("drained", "d-2", long(6), true),
        ("down", "x-1", short(1), false),
        ("down-drained", "y-1", short(2), false),
        ("down-drained", "y-2", long(7), true),
        ("half-down", "h-1", long(8), false),
        ("half-down", "h-2", short(3), false),
    ] {
        api.register(service, id, &spec).await.expect("register");
        if maintenance {
            api.set_status(service, id, Status::Maintenance)
                .await
                .expect("maintenance");
        }
    }
    eventually(
        Duration::from_secs(10),
        "the 1 s leases to lapse",
        || async {
            let list = api.services().await.ok()?;
            let critical: u64 = list.services.iter().map(|s| s.critical).sum();
            (critical == 3).then_some(())
        },
    )
    .await;
}

// GET /v1/services answers every service with its count per status and the
// global index.
both_stores!(
    services_list_counts_instances_per_status,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        populate_fleet(&registry.api).await;
        let (status, body) = call(registry.http.get(registry.url("/v1/services"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let list: registry_api::ServiceList = serde_json::from_value(body).expect("a service list");
        let counts: Vec<(&str, u64, u64, u64, u64, u64)> = list
            .services
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.instances,
                    s.passing,
                    s.warning,
                    s.critical,
                    s.maintenance,
                )
            })
            .collect();
        assert_eq!(
            counts,
            [
                ("all-up", 2, 2, 0, 0, 0),
                ("down", 1, 0, 0, 1, 0),
                ("down-drained", 2, 0, 0, 1, 1),
                ("drained", 2, 0, 0, 0, 2),
                ("half-down", 2, 1, 0, 1, 0),
                ("mixed", 2, 1, 0, 0, 1),
            ]
        );
        // 11 registrations, 4 maintenance, 3 lapses.
        assert_eq!(list.index, 18, "the global index");
        let status = registry.api.status(None).await.expect("status");
        assert_eq!(status.index, list.index);
        registry.stop().await;
    }
);

// GET /v1/services/{s} answers the service's index in the body and the
// `Registry-Index` header, filters with `?status=`, and answers an unknown service
// with 200 and an empty list.
both_stores!(
    one_service_filters_by_status_and_reports_its_index,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        api.register("sum", "sum-2", &spec("http://10.0.0.2:4040"))
            .await
            .expect("register");
        api.set_status("sum", "sum-2", Status::Maintenance)
            .await
            .expect("maintenance");
        api.register("other", "o-1", &spec("http://10.0.0.3:80"))
            .await
            .expect("register");

        let response = registry
            .http
            .get(registry.url("/v1/services/sum"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK);
        let header: u64 = response
            .headers()
            .get(INDEX_HEADER)
            .expect("Registry-Index header")
            .to_str()
            .expect("ASCII")
            .parse()
            .expect("a number");
        let body: registry_api::ServiceInstances = response.json().await.expect("JSON");
        assert_eq!(header, body.index);
        assert_eq!(
            body.index, 3,
            "the service's own latest event, not the global index"
        );
        assert_eq!(body.name, "sum");
        let ids: Vec<&str> = body.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["sum-1", "sum-2"]);

        let (status, passing) = call(
            registry
                .http
                .get(registry.url("/v1/services/sum?status=passing")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(passing["instances"].as_array().map(Vec::len), Some(1));
        assert_eq!(passing["instances"][0]["id"], json!("sum-1"));
        let drained = api
            .service("sum", Some(Status::Maintenance))
            .await
            .expect("filtered");
        assert_eq!(drained.instances.len(), 1);
        assert_eq!(drained.instances[0].id, "sum-2");

        let (status, body) = call(
            registry
                .http
                .get(registry.url("/v1/services/sum?status=bogus")),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("status"));

        let response = registry
            .http
            .get(registry.url("/v1/services/nobody"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get(INDEX_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("4"),
            "a service with no event answers the global index"
        );
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body, json!({"index": 4, "name": "nobody", "instances": []}));

        let (status, body) = call(registry.http.get(registry.url("/v1/services/Bad_Name"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("service"));
        registry.stop().await;
    }
);

// A blocking query holds through changes of other services and answers as soon as
// its own service changes, long before `wait` runs out, with the new index.
both_stores!(
    blocking_query_is_woken_by_a_change_of_its_service,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = registry.api.clone();
        api.register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        let known = api.service("sum", None).await.expect("read").index;

        let watcher = api.clone();
        let waiter = tokio::spawn(async move {
            let started = Instant::now();
            let answer = watcher
                .watch_service("sum", None, known, Duration::from_secs(10))
                .await;
            (answer, started.elapsed())
        });
        // A change elsewhere must not wake it; letting time pass is the point here.
        api.register("other", "o-1", &spec("http://10.0.0.9:80"))
            .await
            .expect("register other");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiter.is_finished(),
            "a change of another service woke the query"
        );

        api.register("sum", "sum-2", &spec("http://10.0.0.2:4040"))
            .await
            .expect("register");
        let (answer, elapsed) = tokio::time::timeout(Duration::from_secs(15), waiter)
            .await
            .expect("the waiter answers")
            .expect("the waiter ran");
        let answer = answer.expect("blocking query");
        assert!(answer.index > known, "{} > {known}", answer.index);
        assert_eq!(answer.index, 3);
        assert_eq!(answer.instances.len(), 2);
        assert!(
            elapsed < Duration::from_secs(5),
            "woken by the change, not by the 10 s wait: {elapsed:?}"
        );
        registry.stop().await;
    }
);

// With nothing changing, a blocking query answers after `wait` (a duration or
// whole seconds) with the same index.
both_stores!(
    blocking_query_on_an_unchanged_service_answers_after_the_wait,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        let known = api.service("sum", None).await.expect("read").index;

        // A change of another service during the wait changes nothing.
        let other = spec("http://10.0.0.9:80");
        let started = Instant::now();
        let (answer, registered) = tokio::join!(
            api.watch_service("sum", None, known, Duration::from_secs(1)),
            api.register("other", "o-1", &other),
        );
        let elapsed = started.elapsed();
        registered.expect("register other");
        let answer = answer.expect("blocking query");
        assert_eq!(answer.index, known);
        assert!(
            elapsed >= Duration::from_secs(1),
            "held for the wait: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(4),
            "not much longer: {elapsed:?}"
        );

        // `wait` as whole seconds, over raw HTTP.
        let started = Instant::now();
        let response = registry
            .http
            .get(registry.url(&format!("/v1/services/sum?index={known}&wait=1")))
            .send()
            .await
            .expect("sent");
        let elapsed = started.elapsed();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get(INDEX_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(known.to_string().as_str())
        );
        assert!(
            elapsed >= Duration::from_secs(1),
            "held for the wait: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(4),
            "not much longer: {elapsed:?}"
        );

        let (status, body) = call(
            registry
                .http
                .get(registry.url("/v1/services/sum?index=1&wait=soon")),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("wait"));
        let (status, body) =
            call(registry.http.get(registry.url("/v1/services/sum?index=-1"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("index"));
        registry.stop().await;
    }
);

// An `index` greater than the global index (the registry lost its state) answers
// at once with the service's real index, and so does an index behind the service.
both_stores!(
    blocking_query_with_an_index_ahead_answers_at_once,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        api.register("other", "o-1", &spec("http://10.0.0.9:80"))
            .await
            .expect("register");
        let global = api.services().await.expect("list").index;

        for index in [global + 100, 0] {
            let started = Instant::now();
            let answer = api
                .watch_service("sum", None, index, Duration::from_secs(10))
                .await
                .expect("blocking query");
            let elapsed = started.elapsed();
            assert_eq!(answer.index, 1, "the service's index");
            assert_eq!(answer.instances.len(), 1);
            assert!(
                elapsed < Duration::from_secs(2),
                "index {index} answered at once: {elapsed:?}"
            );
        }
        registry.stop().await;
    }
);

// `index=0` never blocks, also on a fresh registry whose index is 0; a service with no
// event yet answers the global index, and a query with it waits for that service's
// first change (no busy poll while it does not exist).
both_stores!(
    index_zero_never_blocks_and_an_unknown_service_waits_for_its_first_change,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        let started = Instant::now();
        let fresh = api
            .watch_service("sum", None, 0, Duration::from_secs(20))
            .await
            .expect("blocking query");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "index=0 on a fresh registry answered at once: {:?}",
            started.elapsed()
        );
        assert_eq!(fresh.index, 0);
        assert!(fresh.instances.is_empty());

        api.register("other", "o-1", &spec("http://10.0.0.9:80"))
            .await
            .expect("register");
        let unknown = api.service("sum", None).await.expect("read");
        assert_eq!(unknown.index, 1, "the global index, not 0");

        let mut watcher = {
            let api = api.clone();
            tokio::spawn(async move {
                api.watch_service("sum", None, unknown.index, Duration::from_secs(20))
                    .await
            })
        };
        // The watch holds while other services change.
        api.register("other", "o-2", &spec("http://10.0.0.8:80"))
            .await
            .expect("register");
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut watcher)
                .await
                .is_err(),
            "the watch of an unknown service answered before the service changed"
        );
        api.register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        let answer = tokio::time::timeout(Duration::from_secs(10), watcher)
            .await
            .expect("woken by the service's first change")
            .expect("joined")
            .expect("blocking query");
        assert_eq!(answer.index, 3);
        assert_eq!(answer.instances.len(), 1);
        registry.stop().await;
    }
);

// GET /v1/status rolls each service up: critical without a passing or warning
// instance, maintenance when all are in maintenance, warning when any is not
// passing, else passing; `at` is the server's time, a future `at` means now and one
// older than the history kept is 400 on `at`.
both_stores!(
    system_status_rolls_up_each_service,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        populate_fleet(&registry.api).await;
        // The registry keeps times to the millisecond.
        let before = Utc::now() - chrono::Duration::milliseconds(1);
        let (code, body) = call(registry.http.get(registry.url("/v1/status"))).await;
        let after = Utc::now();
        assert_eq!(code, StatusCode::OK, "{body}");
        let status: registry_api::SystemStatus = serde_json::from_value(body).expect("status");
        let rolled: Vec<(&str, Status, usize)> = status
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.status, s.instances.len()))
            .collect();
        assert_eq!(
            rolled,
            [
                ("all-up", Status::Passing, 2),
                ("down", Status::Critical, 1),
                ("down-drained", Status::Critical, 2),
                ("drained", Status::Maintenance, 2),
                ("half-down", Status::Warning, 2),
                ("mixed", Status::Warning, 2),
            ]
        );
        assert!(
            before <= status.at && status.at <= after,
            "at is the server's time"
        );
        assert_eq!(
            status.index,
            registry.api.services().await.expect("list").index
        );

        let future = Utc::now() + chrono::Duration::hours(1);
        let now_answer = registry.api.status(Some(future)).await.expect("future at");
        assert!(now_answer.at < future, "a future `at` means now");
        assert_eq!(now_answer.index, status.index);
        assert_eq!(now_answer.services.len(), 6);

        let (code, body) = call(
            registry
                .http
                .get(registry.url("/v1/status?at=2000-01-01T00:00:00Z")),
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("at"));
        let (code, body) = call(registry.http.get(registry.url("/v1/status?at=yesterday"))).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("at"));

        // `history_starts_at` is exactly the oldest moment `at` answers for.
        let start = status.history_starts_at.expect("history_starts_at");
        assert!(start <= status.at);
        let at = |moment: DateTime<Utc>| {
            let query = format!(
                "/v1/status?at={}",
                moment.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
            call(registry.http.get(registry.url(&query)))
        };
        let (code, body) = at(start).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["history_starts_at"], json!(start));
        let (code, body) = at(start - chrono::Duration::milliseconds(1)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("at"));
        registry.stop().await;
    }
);

// GET /v1/history needs `service` (400 otherwise), answers its transitions oldest
// first, and narrows them by `instance` and by `[since, until)`.
both_stores!(
    history_requires_a_service_and_filters_by_instance_and_time,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        // Events in distinct milliseconds (the precision times are stored with), so that
        // a boundary falls between two of them.
        let pause = || tokio::time::sleep(Duration::from_millis(5));
        api.register("hist", "a-1", &spec("http://10.0.0.1:80"))
            .await
            .expect("register");
        pause().await;
        api.register("hist", "a-2", &spec("http://10.0.0.2:80"))
            .await
            .expect("register");
        pause().await;
        api.register("zzz", "z-1", &spec("http://10.0.0.3:80"))
            .await
            .expect("register");
        pause().await;
        api.set_status("hist", "a-1", Status::Maintenance)
            .await
            .expect("maintenance");
        pause().await;
        api.deregister("hist", "a-2").await.expect("deregister");

        let (code, body) = call(registry.http.get(registry.url("/v1/history"))).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("service"));

        let (code, body) = call(registry.http.get(registry.url("/v1/history?service=hist"))).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let all: registry_api::History = serde_json::from_value(body).expect("history");
        let seen: Vec<_> = all
            .events
            .iter()
            .map(|e| (e.index, e.instance.as_str(), e.kind, e.from, e.to, e.reason))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    1,
                    "a-1",
                    EventKind::Registered,
                    None,
                    Some(Status::Passing),
                    Reason::Registered
                ),
                (
                    2,
                    "a-2",
                    EventKind::Registered,
                    None,
                    Some(Status::Passing),
                    Reason::Registered
                ),
                (
                    4,
                    "a-1",
                    EventKind::Status,
                    Some(Status::Passing),
                    Some(Status::Maintenance),
                    Reason::MaintenanceSet
                ),
                (
                    5,
                    "a-2",
                    EventKind::Removed,
                    Some(Status::Passing),
                    None,
                    Reason::Deregistered
                ),
            ]
        );
        assert!(all.events.iter().all(|e| e.service == "hist"));
        assert_eq!(all.events[2].snapshot.status, Status::Maintenance);
        assert_eq!(
            all.events[3].snapshot.id, "a-2",
            "a removal carries the last state"
        );

        let one = api
            .history("hist", Some("a-1"), None, None)
            .await
            .expect("history");
        let indexes: Vec<u64> = one.events.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [1, 4]);

        let boundary = all.events[2].at;
        let since = api
            .history("hist", None, Some(boundary), None)
            .await
            .expect("history");
        let indexes: Vec<u64> = since.events.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [4, 5], "since is inclusive");
        let until = api
            .history("hist", None, None, Some(boundary))
            .await
            .expect("history");
        let indexes: Vec<u64> = until.events.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [1, 2], "until is exclusive");
        let window = api
            .history("hist", None, Some(all.events[1].at), Some(all.events[3].at))
            .await
            .expect("history");
        let indexes: Vec<u64> = window.events.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [2, 4]);

        let (code, body) = call(
            registry
                .http
                .get(registry.url("/v1/history?service=hist&since=nope")),
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("since"));
        let unknown = api
            .history("nobody", None, None, None)
            .await
            .expect("history");
        assert!(unknown.events.is_empty());
        registry.stop().await;
    }
);

// ---------------------------------------------------------------------------------------
// The event stream
// ---------------------------------------------------------------------------------------

// GET /v1/events without `since` sends only live events, each as `id: <index>` and
// `data: <event JSON>` with no `event:` line.
both_stores!(
    event_stream_delivers_live_events_with_id_equal_to_index,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("sum", "before", &spec("http://10.0.0.9:80"))
            .await
            .expect("register");
        let mut raw = RawSse::open(registry.http.get(registry.url("/v1/events"))).await;
        let mut typed = api.events(None, None).await.expect("stream");

        api.register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        api.set_status("sum", "sum-1", Status::Maintenance)
            .await
            .expect("maintenance");
        api.deregister("sum", "sum-1").await.expect("deregister");

        let mut raw_indexes = Vec::new();
        for _ in 0..3 {
            let message = raw.next().await;
            assert_eq!(message.event, None, "plain messages have no event line");
            let event: registry_api::Event =
                serde_json::from_str(&message.data).expect("event JSON");
            assert_eq!(message.id, Some(event.index.to_string()), "id == index");
            raw_indexes.push(event.index);
        }
        assert_eq!(raw_indexes, [2, 3, 4], "only events after the start");

        let kinds = [
            (2, EventKind::Registered, Reason::Registered),
            (3, EventKind::Status, Reason::MaintenanceSet),
            (4, EventKind::Removed, Reason::Deregistered),
        ];
        for (index, kind, reason) in kinds {
            let event = next_event(&mut typed).await;
            assert_eq!(
                (event.index, event.kind, event.reason),
                (index, kind, reason)
            );
            assert_eq!(event.instance, "sum-1");
            assert_eq!(typed.last_event_id(), Some(index));
        }
        registry.stop().await;
    }
);

// A stream resumed with `Last-Event-ID` after a disconnection yields exactly the
// events missed meanwhile, then live ones: no gap, no duplicate.
both_stores!(
    event_stream_resumes_with_last_event_id_without_gap_or_duplicate,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        let mut first = api.events(None, None).await.expect("stream");
        api.register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        api.register("sum", "sum-2", &spec("http://10.0.0.2:4040"))
            .await
            .expect("register");
        api.set_status("sum", "sum-1", Status::Maintenance)
            .await
            .expect("maintenance");
        let mut received = Vec::new();
        for _ in 0..3 {
            received.push(next_event(&mut first).await.index);
        }
        let last = first.last_event_id().expect("an id");
        assert_eq!(last, 3);
        drop(first);

        // Changes while disconnected (the heartbeat appends nothing).
        api.heartbeat("sum", "sum-2").await.expect("heartbeat");
        api.set_status("sum", "sum-1", Status::Passing)
            .await
            .expect("clear");
        api.register("mult", "mult-1", &spec("http://10.0.0.3:4050"))
            .await
            .expect("register");
        api.deregister("sum", "sum-2").await.expect("deregister");
        let current = api.services().await.expect("list").index;
        assert_eq!(current, 6);

        let mut resumed = api.events_resume(last, None).await.expect("resumed");
        let mut missed = Vec::new();
        while missed.last() != Some(&current) {
            missed.push(next_event(&mut resumed).await.index);
        }
        assert_eq!(missed, (last + 1..=current).collect::<Vec<_>>());
        received.extend(&missed);
        assert_eq!(received, (1..=current).collect::<Vec<_>>());

        // Then live, continuing right after.
        api.register("sum", "sum-3", &spec("http://10.0.0.4:4040"))
            .await
            .expect("register");
        let live = next_event(&mut resumed).await;
        assert_eq!(live.index, current + 1, "no duplicate, no gap");
        assert_eq!(live.instance, "sum-3");
        registry.stop().await;
    }
);

// `since=0` replays every kept event in order (the same events as the history)
// and then goes on live.
both_stores!(
    event_stream_since_zero_replays_from_the_start,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        api.set_status("sum", "sum-1", Status::Maintenance)
            .await
            .expect("maintenance");
        api.deregister("sum", "sum-1").await.expect("deregister");

        let mut raw = RawSse::open(registry.http.get(registry.url("/v1/events?since=0"))).await;
        let first = raw.next().await;
        assert_eq!(first.id.as_deref(), Some("1"));
        assert_eq!(first.event, None);

        let mut stream = api.events(Some(0), None).await.expect("stream");
        let history = api.history("sum", None, None, None).await.expect("history");
        for expected in &history.events {
            assert_eq!(&next_event(&mut stream).await, expected);
        }
        api.register("sum", "sum-2", &spec("http://10.0.0.2:4040"))
            .await
            .expect("register");
        assert_eq!(next_event(&mut stream).await.index, 4);
        registry.stop().await;
    }
);

// A `since` ahead of the current index first sends `event: reset` whose id is the
// current index and whose data is the /v1/status body; live events follow.
both_stores!(
    event_stream_since_ahead_starts_with_a_reset,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("sum", "sum-1", &spec("http://10.0.0.1:4040"))
            .await
            .expect("register");
        api.register("mult", "mult-1", &spec("http://10.0.0.2:4050"))
            .await
            .expect("register");

        let mut raw = RawSse::open(registry.http.get(registry.url("/v1/events?since=100"))).await;
        let reset = raw.next().await;
        assert_eq!(reset.event.as_deref(), Some("reset"));
        assert_eq!(reset.id.as_deref(), Some("2"));
        let body: registry_api::SystemStatus =
            serde_json::from_str(&reset.data).expect("a /v1/status body");
        assert_eq!(body.index, 2);
        assert_eq!(body.services.len(), 2);
        // Like `GET /v1/status`, it says where the kept history starts.
        let live = api.status(None).await.expect("status");
        assert!(body.history_starts_at.is_some(), "{}", reset.data);
        assert_eq!(body.history_starts_at, live.history_starts_at);

        let mut stream = api.events(Some(100), None).await.expect("stream");
        match next_item(&mut stream).await {
            StreamItem::Reset { index, status } => {
                assert_eq!(index, 2, "the current index");
                assert_eq!(status.index, 2);
                let names: Vec<&str> = status.services.iter().map(|s| s.name.as_str()).collect();
                assert_eq!(names, ["mult", "sum"]);
            }
            other => panic!("expected a reset first, got {other:?}"),
        }
        api.deregister("sum", "sum-1").await.expect("deregister");
        let live = next_event(&mut stream).await;
        assert_eq!(live.index, 3);
        assert_eq!(stream.last_event_id(), Some(3));

        // Filtered by service, the reset holds only that service.
        let mut filtered = api.events(Some(100), Some("mult")).await.expect("stream");
        match next_item(&mut filtered).await {
            StreamItem::Reset { index, status } => {
                assert_eq!(index, 3);
                let names: Vec<&str> = status.services.iter().map(|s| s.name.as_str()).collect();
                assert_eq!(names, ["mult"]);
            }
            other => panic!("expected a reset first, got {other:?}"),
        }
        registry.stop().await;
    }
);

// `?service=` sends only that service's events, replayed and live.
both_stores!(
    event_stream_filters_by_service,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("beta", "b-1", &spec("http://10.0.0.1:80"))
            .await
            .expect("register");
        api.register("alpha", "a-1", &spec("http://10.0.0.2:80"))
            .await
            .expect("register");
        let mut stream = api.events(Some(0), Some("alpha")).await.expect("stream");
        api.register("beta", "b-2", &spec("http://10.0.0.3:80"))
            .await
            .expect("register");
        api.register("alpha", "a-2", &spec("http://10.0.0.4:80"))
            .await
            .expect("register");
        api.deregister("beta", "b-1").await.expect("deregister");
        api.deregister("alpha", "a-1").await.expect("deregister");

        let mut seen = Vec::new();
        for _ in 0..3 {
            let event = next_event(&mut stream).await;
            assert_eq!(event.service, "alpha", "{event:?}");
            seen.push((event.index, event.instance));
        }
        assert_eq!(
            seen,
            [
                (2, "a-1".to_owned()),
                (4, "a-2".to_owned()),
                (6, "a-1".to_owned())
            ]
        );

        let (code, body) = call(
            registry
                .http
                .get(registry.url("/v1/events?service=Not_Valid")),
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&body, "invalid_argument", Some("service"));
        registry.stop().await;
    }
);

// ---------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------

// With a write token set, every write without it (or with a wrong one) is 401 with
// the error body, checked before size and content; with it, writes work; reads
// stay open.
both_stores!(
    writes_need_the_token_reads_stay_open,
    |backend: Backend| async move {
        let registry = TestRegistry::start_with(backend, |s| s.token = Some("s3cret".into())).await;
        let http = &registry.http;
        let url = registry.url(&instance_path("sum", "sum-1"));
        let body = json!({"url": "http://10.0.0.1:4040"});

        for token in [None, Some("wrong"), Some("s3cret-but-longer")] {
            let mut request = http.put(&url).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let (code, answer) = call(request).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "token {token:?}: {answer}");
            assert_error(&answer, "unauthorized", None);
        }
        // Auth first: an oversized or non-JSON body without a token is still a 401.
        let big = json!({"url": "http://10.0.0.1:4040", "tags": ["x".repeat(70 * 1024)]});
        let (code, _) = call(http.put(&url).json(&big)).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, _) = call(http.put(&url).header(CONTENT_TYPE, "text/plain").body("x")).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);

        let (code, answer) = call(http.put(&url).bearer_auth("s3cret").json(&body)).await;
        assert_eq!(code, StatusCode::CREATED, "{answer}");

        for request in [
            http.put(format!("{url}/heartbeat")),
            http.put(format!("{url}/status"))
                .json(&json!({"status": "maintenance"})),
            http.delete(&url),
        ] {
            let (code, answer) = call(request).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{answer}");
            assert_error(&answer, "unauthorized", None);
        }
        let (code, _) = call(http.put(format!("{url}/heartbeat")).bearer_auth("s3cret")).await;
        assert_eq!(code, StatusCode::OK);

        for path in [
            "/v1/services",
            "/v1/services/sum",
            "/v1/status",
            "/v1/history?service=sum",
        ] {
            let (code, answer) = call(http.get(registry.url(path))).await;
            assert_eq!(code, StatusCode::OK, "{path} is open: {answer}");
        }
        RawSse::open(http.get(registry.url("/v1/events?since=0"))).await;

        let (code, _) = call(http.delete(&url).bearer_auth("s3cret")).await;
        assert_eq!(code, StatusCode::NO_CONTENT);
        registry.stop().await;
    }
);

// With a read token set, reads need the read or the write token, writes still
// need the write token, the operational routes stay open, and /v1/events also
// takes `?token=`.
both_stores!(
    reads_need_a_token_when_a_read_token_is_set,
    |backend: Backend| async move {
        let registry = TestRegistry::start_with(backend, |s| {
            s.token = Some("writer".into());
            s.read_token = Some("reader".into());
        })
        .await;
        let http = &registry.http;

        for path in [
            "/v1/services",
            "/v1/services/sum",
            "/v1/status",
            "/v1/history?service=sum",
        ] {
            let (code, answer) = call(http.get(registry.url(path))).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}: {answer}");
            assert_error(&answer, "unauthorized", None);
            let (code, _) = call(http.get(registry.url(path)).bearer_auth("wrong")).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{path} with a wrong token");
            for token in ["reader", "writer"] {
                let (code, answer) = call(http.get(registry.url(path)).bearer_auth(token)).await;
                assert_eq!(code, StatusCode::OK, "{path} with {token}: {answer}");
            }
        }
        // The query token is for EventSource only.
        let (code, _) = call(http.get(registry.url("/v1/services?token=reader"))).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);

        let url = registry.url(&instance_path("sum", "sum-1"));
        let body = json!({"url": "http://10.0.0.1:4040"});
        let (code, answer) = call(http.put(&url).bearer_auth("reader").json(&body)).await;
        assert_eq!(
            code,
            StatusCode::UNAUTHORIZED,
            "the read token cannot write: {answer}"
        );
        let (code, _) = call(http.put(&url).bearer_auth("writer").json(&body)).await;
        assert_eq!(code, StatusCode::CREATED);

        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"] {
            let response = http.get(registry.url(path)).send().await.expect("sent");
            assert_eq!(response.status(), StatusCode::OK, "{path} stays open");
        }

        let (code, answer) = call(http.get(registry.url("/v1/events"))).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{answer}");
        assert_error(&answer, "unauthorized", None);
        let (code, _) = call(http.get(registry.url("/v1/events?token=wrong"))).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        for token in ["reader", "writer"] {
            let mut raw =
                RawSse::open(http.get(registry.url(&format!("/v1/events?since=0&token={token}"))))
                    .await;
            assert_eq!(raw.next().await.id.as_deref(), Some("1"));
        }
        RawSse::open(http.get(registry.url("/v1/events")).bearer_auth("reader")).await;
        registry.stop().await;
    }
);

// ---------------------------------------------------------------------------------------
// Operational routes and routing errors
// ---------------------------------------------------------------------------------------

// /healthz and /readyz answer 200, /metrics Prometheus text, /openapi.json an
// OpenAPI 3 document, and / the HTML dashboard.
both_stores!(operational_routes_answer, |backend: Backend| async move {
    let registry = TestRegistry::start(backend).await;
    let http = &registry.http;
    registry.api.healthz().await.expect("healthz");
    registry.api.readyz().await.expect("readyz");
    for path in ["/healthz", "/readyz"] {
        let response = http.get(registry.url(path)).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    let response = http
        .get(registry.url("/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("text");
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE registry_")),
        "Prometheus text with registry_ metrics: {text}"
    );

    let (code, doc) = call(http.get(registry.url("/openapi.json"))).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );

    let response = http.get(registry.url("/")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = response.text().await.expect("text");
    assert!(html.to_ascii_lowercase().contains("<html"), "{html}");
    registry.stop().await;
});

// /openapi.json is the OpenAPI 3 document of the whole API: every route of docs/api.md
// (Routes) appears in `paths` with its method.
both_stores!(
    openapi_documents_every_v1_route,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let (code, doc) = call(registry.http.get(registry.url("/openapi.json"))).await;
        assert_eq!(code, StatusCode::OK);
        let expected = [
            ("/v1/services/{service}/instances/{id}", "put"),
            ("/v1/services/{service}/instances/{id}", "delete"),
            ("/v1/services/{service}/instances/{id}/heartbeat", "put"),
            ("/v1/services/{service}/instances/{id}/status", "put"),
            ("/v1/services", "get"),
            ("/v1/services/{service}", "get"),
            ("/v1/status", "get"),
            ("/v1/events", "get"),
            ("/v1/history", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ];
        let missing: Vec<String> = expected
            .iter()
            .filter(|(path, method)| doc["paths"][path][method].is_null())
            .map(|(path, method)| format!("{} {path}", method.to_uppercase()))
            .collect();
        assert!(missing.is_empty(), "undocumented routes: {missing:?}");
        registry.stop().await;
    }
);

// An unknown route is 404 `not_found` and a known route with the wrong method is
// 405 `method_not_allowed`, both with the JSON error body.
both_stores!(
    unknown_routes_and_wrong_methods_answer_json_errors,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let http = &registry.http;
        for path in ["/v2/services", "/v1/nothing", "/v1/services/sum/instances"] {
            let (code, body) = call(http.get(registry.url(path))).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{path}: {body}");
            assert_error(&body, "not_found", None);
        }
        for request in [
            http.post(registry.url("/v1/services")),
            http.delete(registry.url("/v1/status")),
            http.get(registry.url(&instance_path("sum", "sum-1"))),
            http.post(registry.url(&format!("{}/heartbeat", instance_path("sum", "sum-1")))),
        ] {
            let (code, body) = call(request).await;
            assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{body}");
            assert_error(&body, "method_not_allowed", None);
        }
        registry.stop().await;
    }
);
