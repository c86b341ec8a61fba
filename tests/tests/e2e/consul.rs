//! Consul's HTTP API on the registry (docs/consul.md), driven with raw HTTP: the routes'
//! shapes and casing, blocking queries, Go booleans and durations, the datacenter, tokens,
//! the rest of Consul's API refused, bad bodies refused with a 400 each, and one registry
//! behind both APIs (what Consul registers, v1 sees, and the other way round).

use std::time::{Duration, Instant};

use crate::support::{Backend, TestRegistry, eventually};
use registry_api::{InstanceSpec, Status};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(20);

/// One answer: status, `X-Consul-Index`, content type and body.
struct Answer {
    status: StatusCode,
    index: Option<u64>,
    content_type: String,
    text: String,
    known_leader: Option<String>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

async fn call(
    registry: &TestRegistry,
    method: Method,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = registry.http.request(method, registry.url(path));
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the registry answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let index = header("X-Consul-Index").map(|v| v.parse().expect("a number"));
    let content_type = header("content-type").unwrap_or_default();
    let known_leader = header("X-Consul-KnownLeader");
    Answer {
        status: response.status(),
        index,
        content_type,
        known_leader,
        text: response.text().await.expect("a body"),
    }
}

async fn get(registry: &TestRegistry, path: &str) -> Answer {
    call(registry, Method::GET, path, None, &[]).await
}

async fn put(registry: &TestRegistry, path: &str, body: Option<&str>) -> Answer {
    call(registry, Method::PUT, path, body, &[]).await
}

async fn register(registry: &TestRegistry, body: Value) {
    let answer = put(
        registry,
        "/v1/agent/service/register",
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

both_stores!(
    what_a_consul_client_registers_is_one_registry_with_v1,
    |backend| async move {
        let registry = TestRegistry::start(backend).await;
        register(
            &registry,
            json!({
                "Name": "web",
                "ID": "web-1",
                "Address": "10.0.0.7",
                "Port": 8080,
                "Tags": ["blue", "v2"],
                "Meta": {"version": "2.1"},
                "Check": {"TTL": "30s"},
            }),
        )
        .await;

        // A new TTL check starts critical, as in Consul, until its first report.
        let health = get(&registry, "/v1/health/service/web?passing")
            .await
            .json();
        assert_eq!(health, json!([]));
        let checks = get(&registry, "/v1/agent/checks").await.json();
        assert_eq!(checks["service:web-1"]["Status"], "critical");
        let passed = put(&registry, "/v1/agent/check/pass/service:web-1", None).await;
        assert_eq!(passed.status, StatusCode::OK, "{}", passed.text);

        // v1 sees it, with the URL made of Address and Port.
        let v1 = registry.api.service("web", None).await.expect("v1 lookup");
        assert_eq!(v1.instances.len(), 1);
        let instance = &v1.instances[0];
        assert_eq!(instance.id, "web-1");
        assert_eq!(instance.url, "http://10.0.0.7:8080");
        assert_eq!(instance.tags, vec!["blue", "v2"]);
        assert_eq!(
            instance.metadata.get("version").map(String::as_str),
            Some("2.1")
        );
        assert_eq!(instance.ttl_seconds, 30);

        // The agent's view.
        let services = get(&registry, "/v1/agent/services").await;
        assert_eq!(services.status, StatusCode::OK);
        assert_eq!(services.known_leader.as_deref(), Some("true"));
        let web = &services.json()["web-1"];
        assert_eq!(web["ID"], "web-1");
        assert_eq!(web["Service"], "web");
        assert_eq!(web["Address"], "10.0.0.7");
        assert_eq!(web["Port"], 8080);
        assert_eq!(web["Tags"], json!(["blue", "v2"]));
        assert_eq!(web["Meta"], json!({"version": "2.1"}));
        let one = get(&registry, "/v1/agent/service/web-1").await;
        assert_eq!(one.json()["Service"], "web");
        assert_eq!(
            get(&registry, "/v1/agent/service/nope").await.status,
            StatusCode::NOT_FOUND
        );
        let checks = get(&registry, "/v1/agent/checks").await.json();
        assert_eq!(checks["service:web-1"]["Status"], "passing");
        assert_eq!(checks["service:web-1"]["ServiceID"], "web-1");

        // The catalog.
        let catalog = get(&registry, "/v1/catalog/services").await.json();
        assert_eq!(catalog, json!({"web": ["blue", "v2"]}));
        let entries = get(&registry, "/v1/catalog/service/web").await.json();
        let entry = &entries[0];
        for (key, want) in [
            ("ServiceID", json!("web-1")),
            ("ServiceName", json!("web")),
            ("ServiceAddress", json!("10.0.0.7")),
            ("ServicePort", json!(8080)),
            ("ServiceTags", json!(["blue", "v2"])),
            ("ServiceMeta", json!({"version": "2.1"})),
            ("Address", json!("10.0.0.7")),
            ("Datacenter", json!("dc1")),
        ] {
            assert_eq!(entry[key], want, "{key}");
        }
        let nodes = get(&registry, "/v1/catalog/nodes").await.json();
        assert_eq!(nodes[0]["Address"], "10.0.0.7");
        assert_eq!(nodes[0]["ID"], entry["ID"], "one stable node per host");
        assert_eq!(
            get(&registry, "/v1/catalog/datacenters").await.json(),
            json!(["dc1"])
        );

        // Health.
        let health = get(&registry, "/v1/health/service/web").await;
        let health = health.json();
        assert_eq!(health[0]["Node"]["Address"], "10.0.0.7");
        assert_eq!(health[0]["Node"]["Datacenter"], "dc1");
        assert_eq!(health[0]["Service"]["ID"], "web-1");
        assert_eq!(health[0]["Checks"][0]["CheckID"], "service:web-1");
        let checks = get(&registry, "/v1/health/checks/web").await.json();
        assert_eq!(checks[0]["CheckID"], "service:web-1");
        let any = get(&registry, "/v1/health/state/any").await.json();
        assert_eq!(any.as_array().map(Vec::len), Some(1));
        let critical = get(&registry, "/v1/health/state/critical").await.json();
        assert_eq!(critical, json!([]));
        assert_eq!(
            get(&registry, "/v1/health/state/bogus").await.status,
            StatusCode::BAD_REQUEST
        );

        // A TTL report is a heartbeat.
        let before = registry
            .api
            .service("web", None)
            .await
            .expect("v1")
            .instances[0]
            .last_heartbeat_at;
        let passed = put(
            &registry,
            "/v1/agent/check/pass/service:web-1?note=ok",
            None,
        )
        .await;
        assert_eq!(passed.status, StatusCode::OK, "{}", passed.text);
        let after = registry
            .api
            .service("web", None)
            .await
            .expect("v1")
            .instances[0]
            .last_heartbeat_at;
        assert!(after > before, "the lease was renewed");
        assert_eq!(
            put(&registry, "/v1/agent/check/pass/service:nope", None)
                .await
                .status,
            StatusCode::NOT_FOUND
        );

        // Deregister answers 200, then 404.
        let gone = put(&registry, "/v1/agent/service/deregister/web-1", None).await;
        assert_eq!(gone.status, StatusCode::OK, "{}", gone.text);
        assert!(
            registry
                .api
                .service("web", None)
                .await
                .expect("v1")
                .instances
                .is_empty()
        );
        let again = put(&registry, "/v1/agent/service/deregister/web-1", None).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        assert!(
            again.content_type.starts_with("text/plain"),
            "{}",
            again.content_type
        );
        registry.stop().await;
    }
);

both_stores!(
    what_v1_registers_consul_clients_discover,
    |backend| async move {
        let registry = TestRegistry::start(backend).await;
        let mut spec = InstanceSpec::new("http://192.168.1.20:9000");
        spec.tags = vec!["primary".into()];
        spec.metadata.insert("zone".into(), "a".into());
        spec.ttl_seconds = Some(0);
        registry
            .api
            .register("orders", "orders-a", &spec)
            .await
            .expect("v1 register");
        let health = get(&registry, "/v1/health/service/orders?passing=1")
            .await
            .json();
        assert_eq!(health.as_array().map(Vec::len), Some(1));
        let service = &health[0]["Service"];
        assert_eq!(service["ID"], "orders-a");
        assert_eq!(service["Address"], "192.168.1.20");
        assert_eq!(service["Port"], 9000);
        assert_eq!(service["Tags"], json!(["primary"]));
        assert_eq!(service["Meta"], json!({"zone": "a"}));
        assert_eq!(
            health[0]["Checks"],
            json!([]),
            "no lease and no check: no checks"
        );
        registry.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_address_is_the_registering_peers() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    register(&registry, json!({"name": "api", "port": 7000})).await;
    let v1 = registry.api.service("api", None).await.expect("v1");
    assert_eq!(v1.instances[0].id, "api", "ID defaults to Name");
    assert_eq!(v1.instances[0].url, "http://127.0.0.1:7000");
    assert_eq!(v1.instances[0].ttl_seconds, 0, "no TTL check: no lease");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_wake_on_a_change_made_through_v1() {
    let registry = TestRegistry::start(Backend::Sqlite).await;

    // A fresh registry: the index is never 0, and index=0 never blocks.
    let first = get(&registry, "/v1/health/service/web?index=0&wait=30s").await;
    let index = first.index.expect("X-Consul-Index");
    assert!(index > 0, "never 0");
    for path in [
        "/v1/agent/services",
        "/v1/agent/checks",
        "/v1/agent/self",
        "/v1/catalog/services",
        "/v1/catalog/datacenters",
        "/v1/catalog/nodes",
        "/v1/catalog/service/web",
        "/v1/health/checks/web",
        "/v1/health/state/any",
        "/v1/status/leader",
        "/v1/status/peers",
    ] {
        let answer = get(&registry, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text);
        assert!(
            answer.index.is_some_and(|i| i > 0),
            "{path}: X-Consul-Index"
        );
    }

    // A blocking query on a service that does not exist yet holds...
    let started = Instant::now();
    let held = get(
        &registry,
        &format!("/v1/health/service/web?index={index}&wait=300ms"),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    assert_eq!(held.index, Some(index), "same content, same index");

    // ...and wakes within a second of a change made elsewhere.
    let blocking = {
        let http = registry.http.clone();
        let url = registry.url(&format!("/v1/health/service/web?index={index}&wait=10s"));
        tokio::spawn(async move {
            let response = http.get(url).send().await.expect("answer");
            let index: u64 = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("index");
            (Instant::now(), index, response.text().await.expect("body"))
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut spec = InstanceSpec::new("http://10.1.1.1:80");
    spec.ttl_seconds = Some(0);
    let changed_at = Instant::now();
    registry
        .api
        .register("web", "w1", &spec)
        .await
        .expect("v1 register");
    let (woke_at, new_index, body) = blocking.await.expect("the blocking query ends");
    assert!(
        woke_at.duration_since(changed_at) < Duration::from_secs(1),
        "woke {:?} after the change",
        woke_at.duration_since(changed_at)
    );
    assert!(new_index > index);
    assert!(body.contains("\"w1\""), "{body}");

    // An index ahead of the registry answers at once.
    let started = Instant::now();
    let ahead = get(&registry, "/v1/health/service/web?index=999999&wait=10s").await;
    assert_eq!(ahead.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Go durations: bad ones are a 400.
    for wait in ["120000ms", "1m", "1h30m"] {
        let answer = get(&registry, &format!("/v1/catalog/services?wait={wait}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{wait}");
    }
    for wait in ["ten", "10x", "-1s"] {
        let answer = get(
            &registry,
            &format!("/v1/catalog/services?index=1&wait={wait}"),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{wait}");
    }
    assert_eq!(
        get(&registry, "/v1/catalog/services?index=abc")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    for consistency in ["stale", "consistent", "cached"] {
        let answer = get(&registry, &format!("/v1/catalog/services?{consistency}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{consistency}");
    }
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_tags_and_maintenance_read_as_consul_does() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    register(
        &registry,
        json!({"Name": "web", "ID": "a", "Address": "10.0.0.1", "Port": 80, "Tags": ["x", "y"]}),
    )
    .await;
    register(
        &registry,
        json!({"Name": "web", "ID": "b", "Address": "10.0.0.2", "Port": 80, "Tags": ["x"]}),
    )
    .await;
    let ids = |answer: Value| -> Vec<String> {
        answer
            .as_array()
            .expect("a list")
            .iter()
            .map(|e| e["Service"]["ID"].as_str().expect("an id").to_owned())
            .collect()
    };
    let tagged = get(&registry, "/v1/health/service/web?tag=x&tag=y")
        .await
        .json();
    assert_eq!(ids(tagged), vec!["a"], "every tag must match");
    let catalog = get(&registry, "/v1/catalog/service/web?tag=y").await.json();
    assert_eq!(catalog.as_array().map(Vec::len), Some(1));

    let maintenance = put(
        &registry,
        "/v1/agent/service/maintenance/a?enable=True&reason=deploying",
        None,
    )
    .await;
    assert_eq!(maintenance.status, StatusCode::OK, "{}", maintenance.text);
    let v1 = registry
        .api
        .service("web", Some(Status::Maintenance))
        .await
        .expect("v1");
    assert_eq!(v1.instances.len(), 1);
    for passing in [
        "passing",
        "passing=1",
        "passing=true",
        "passing=True",
        "passing=t",
    ] {
        let answer = get(&registry, &format!("/v1/health/service/web?{passing}"))
            .await
            .json();
        assert_eq!(ids(answer), vec!["b"], "{passing}");
    }
    for not_passing in ["passing=0", "passing=false", "passing=F"] {
        let answer = get(&registry, &format!("/v1/health/service/web?{not_passing}"))
            .await
            .json();
        assert_eq!(ids(answer).len(), 2, "{not_passing}");
    }
    assert_eq!(
        get(&registry, "/v1/health/service/web?passing=yes")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let all = get(&registry, "/v1/health/service/web").await.json();
    let checks = &all[0]["Checks"];
    let maint = checks
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["CheckID"] == "_service_maintenance:a")
        .expect("the maintenance check");
    assert_eq!(maint["Status"], "critical");
    assert_eq!(maint["Notes"], "deploying", "the reason");
    assert_eq!(
        v1.instances[0].maintenance_reason.as_deref(),
        Some("deploying")
    );
    let critical = get(&registry, "/v1/health/state/critical").await.json();
    assert_eq!(critical[0]["CheckID"], "_service_maintenance:a");

    assert_eq!(
        put(&registry, "/v1/agent/service/maintenance/a", None)
            .await
            .status,
        StatusCode::BAD_REQUEST,
        "enable is required"
    );
    let off = put(
        &registry,
        "/v1/agent/service/maintenance/a?enable=false",
        None,
    )
    .await;
    assert_eq!(off.status, StatusCode::OK);
    let answer = get(&registry, "/v1/health/service/web?passing")
        .await
        .json();
    assert_eq!(ids(answer).len(), 2);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_datacenter_has_no_path() {
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.datacenter = "eu-west".into();
    })
    .await;
    let refused = get(&registry, "/v1/catalog/services?dc=dc1").await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(refused.text, "No path to datacenter");
    let write = put(
        &registry,
        "/v1/agent/service/register?dc=dc2",
        Some(r#"{"Name":"a"}"#),
    )
    .await;
    assert_eq!(write.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        get(&registry, "/v1/catalog/services?dc=eu-west")
            .await
            .status,
        StatusCode::OK
    );
    let me = get(&registry, "/v1/agent/self").await.json();
    assert_eq!(me["Config"]["Datacenter"], "eu-west");
    assert!(me["Config"]["NodeName"].is_string());
    for (key, value) in me.as_object().expect("an object") {
        assert!(value.is_object(), "{key} is an object");
    }
    assert_eq!(
        get(&registry, "/v1/catalog/datacenters").await.json(),
        json!(["eu-west"])
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_read_as_consul_clients_send_them() {
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.token = Some("write-secret".into());
        settings.read_token = Some("read-secret".into());
    })
    .await;
    let body = r#"{"Name":"web","Address":"10.0.0.1","Port":80}"#;
    let path = "/v1/agent/service/register";

    let refused = call(&registry, Method::PUT, path, Some(body), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.text, "Permission denied");
    let wrong = call(
        &registry,
        Method::PUT,
        path,
        Some(body),
        &[("X-Consul-Token", "nope")],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let read_only = call(
        &registry,
        Method::PUT,
        path,
        Some(body),
        &[("X-Consul-Token", "read-secret")],
    )
    .await;
    assert_eq!(
        read_only.status,
        StatusCode::FORBIDDEN,
        "the read token cannot write"
    );

    for headers in [
        vec![("X-Consul-Token", "write-secret")],
        vec![("Authorization", "Bearer write-secret")],
    ] {
        let ok = call(&registry, Method::PUT, path, Some(body), &headers).await;
        assert_eq!(ok.status, StatusCode::OK, "{headers:?}: {}", ok.text);
    }
    let by_query = call(
        &registry,
        Method::PUT,
        &format!("{path}?token=write-secret"),
        Some(body),
        &[],
    )
    .await;
    assert_eq!(by_query.status, StatusCode::OK);

    assert_eq!(
        get(&registry, "/v1/agent/services").await.status,
        StatusCode::FORBIDDEN
    );
    for (path, headers) in [
        (
            "/v1/agent/services",
            vec![("X-Consul-Token", "read-secret")],
        ),
        ("/v1/agent/services?token=read-secret", vec![]),
        (
            "/v1/health/service/web",
            vec![("Authorization", "Bearer read-secret")],
        ),
    ] {
        let answer = call(&registry, Method::GET, path, None, &headers).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
    }
    // v1 keeps its own rules: 401 in its JSON shape, no X-Consul-Token.
    let v1 = call(
        &registry,
        Method::GET,
        "/v1/services",
        None,
        &[("X-Consul-Token", "read-secret")],
    )
    .await;
    assert_eq!(v1.status, StatusCode::UNAUTHORIZED);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_consuls_api_is_refused_and_ours_still_served() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    for (method, path) in [
        (Method::GET, "/v1/kv/config/db"),
        (Method::PUT, "/v1/kv/config/db"),
        (Method::PUT, "/v1/session/create"),
        (Method::GET, "/v1/acl/tokens"),
        (Method::GET, "/v1/connect/ca/roots"),
        (Method::GET, "/v1/agent/members"),
        (Method::PUT, "/v1/agent/check/register"),
        (Method::PUT, "/v1/txn"),
        (Method::PUT, "/v1/event/fire/deploy"),
        (Method::GET, "/v1/query"),
        (Method::GET, "/v1/coordinate/nodes"),
        (Method::GET, "/v1/operator/raft/configuration"),
        (Method::GET, "/v1/snapshot"),
        (Method::GET, "/v1/config/service-defaults"),
        (Method::GET, "/v1/internal/ui/services"),
        (Method::PUT, "/v1/catalog/register"),
        (Method::GET, "/v1/health/node/n1"),
        (Method::GET, "/v1/status/other"),
    ] {
        let answer = call(&registry, method.clone(), path, None, &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_IMPLEMENTED,
            "{method} {path}"
        );
        assert!(answer.content_type.starts_with("text/plain"), "{path}");
        assert!(
            answer.text.contains("not implemented by this registry"),
            "{path}: {}",
            answer.text
        );
    }
    let wrong_method = call(&registry, Method::POST, "/v1/agent/services", None, &[]).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong_method.content_type.starts_with("text/plain"));

    // Our own routes under /v1/ keep answering as before.
    for path in [
        "/v1/status",
        "/v1/services",
        "/v1/services/web",
        "/v1/history?service=web",
        "/v1/sd/prometheus",
    ] {
        let answer = get(&registry, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text);
        assert!(
            answer.content_type.starts_with("application/json"),
            "{path}"
        );
        assert!(answer.index.is_none(), "{path} is not Consul's");
    }
    let unknown = get(&registry, "/v1/nothing-here").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.content_type.starts_with("application/json"));
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_consul_bodies_are_a_clear_400_never_a_500() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let cases: &[(&str, &str, &str)] = &[
        ("not JSON", "{", "decode"),
        ("a list", "[]", "object"),
        ("no name", r#"{"Port":80}"#, "name"),
        ("name of the wrong type", r#"{"Name":5}"#, "Name"),
        ("port as a string", r#"{"Name":"a","Port":"80"}"#, "Port"),
        ("port out of range", r#"{"Name":"a","Port":70000}"#, "Port"),
        ("tags not a list", r#"{"Name":"a","Tags":"x"}"#, "Tags"),
        ("a tag not a string", r#"{"Name":"a","Tags":[1]}"#, "Tags"),
        (
            "meta value not a string",
            r#"{"Name":"a","Meta":{"k":1}}"#,
            "Meta",
        ),
        (
            "name outside the rules",
            r#"{"Name":"Web_App"}"#,
            "DNS label",
        ),
        (
            "id outside the rules",
            r#"{"Name":"a","ID":"a b"}"#,
            "instance id",
        ),
        (
            "a bad TTL",
            r#"{"Name":"a","Check":{"TTL":"ten"}}"#,
            "duration",
        ),
        (
            "a TTL as a number",
            r#"{"Name":"a","Check":{"TTL":10}}"#,
            "TTL",
        ),
        (
            "a bad interval",
            r#"{"Name":"a","Check":{"HTTP":"http://127.0.0.1/","Interval":"5"}}"#,
            "duration",
        ),
        (
            "no interval",
            r#"{"Name":"a","Check":{"HTTP":"http://127.0.0.1/"}}"#,
            "Interval",
        ),
        (
            "a script check",
            r#"{"Name":"a","Check":{"Args":["true"],"Interval":"5s"}}"#,
            "not supported",
        ),
        (
            "a gRPC check",
            r#"{"Name":"a","Check":{"GRPC":"127.0.0.1:1","Interval":"5s"}}"#,
            "not supported",
        ),
        (
            "no check kind",
            r#"{"Name":"a","Check":{"Interval":"5s"}}"#,
            "TTL, HTTP or TCP",
        ),
        (
            "two kinds in one check",
            r#"{"Name":"a","Check":{"TTL":"5s","HTTP":"http://127.0.0.1/"}}"#,
            "exactly one",
        ),
        (
            "checks not a list",
            r#"{"Name":"a","Checks":{"TTL":"5s"}}"#,
            "Checks",
        ),
        (
            "two TTL checks",
            r#"{"Name":"a","Checks":[{"TTL":"5s"},{"TTL":"6s"}]}"#,
            "at most one",
        ),
        (
            "an HTTP check on another host",
            r#"{"Name":"a","Address":"10.0.0.1","Port":80,"Check":{"HTTP":"http://10.0.0.2:80/","Interval":"5s"}}"#,
            "own address",
        ),
        (
            "a TTL too long",
            r#"{"Name":"a","Check":{"TTL":"48h"}}"#,
            "TTL",
        ),
        (
            "a check id of its own",
            r#"{"Name":"a","Check":{"TTL":"5s","CheckID":"mine"}}"#,
            "CheckID",
        ),
        (
            "a proxy",
            r#"{"Name":"a","Kind":"connect-proxy"}"#,
            "not supported",
        ),
        (
            "an unknown status",
            r#"{"Name":"a","Check":{"TTL":"5s","Status":"fine"}}"#,
            "status",
        ),
        (
            "a bad address",
            r#"{"Name":"a","Address":"a b","Port":80}"#,
            "Address",
        ),
    ];
    for (what, body, mentions) in cases {
        let answer = put(&registry, "/v1/agent/service/register", Some(body)).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            answer.text
        );
        assert!(answer.content_type.starts_with("text/plain"), "{what}");
        assert!(
            answer
                .text
                .to_lowercase()
                .contains(&mentions.to_lowercase()),
            "{what}: the message should mention {mentions:?}: {}",
            answer.text
        );
    }
    for body in ["{", r#"{"Status":"fine"}"#, r#"{"Status":1}"#] {
        let answer = put(&registry, "/v1/agent/check/update/service:a", Some(body)).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.text
        );
    }
    assert!(
        registry
            .api
            .services()
            .await
            .expect("v1")
            .services
            .is_empty()
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_in_several_services_is_a_conflict_for_the_agent() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let mut spec = InstanceSpec::new("http://10.0.0.1:80");
    spec.ttl_seconds = Some(0);
    registry
        .api
        .register("sum", "node-1", &spec)
        .await
        .expect("register");
    registry
        .api
        .register("mult", "node-1", &spec)
        .await
        .expect("register");
    let answer = put(&registry, "/v1/agent/service/deregister/node-1", None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(
        answer.text.contains("mult") && answer.text.contains("sum"),
        "{}",
        answer.text
    );
    let services = get(&registry, "/v1/agent/services").await.json();
    assert!(services.get("sum/node-1").is_some(), "{services}");
    let taken = put(
        &registry,
        "/v1/agent/service/register",
        Some(r#"{"Name":"concat","ID":"node-1","Address":"10.0.0.1","Port":80}"#),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuls_port_serves_consuls_api() {
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.consul_addr = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let consul = format!(
        "http://{}",
        registry.consul_addr.expect("the Consul listener")
    );
    let http = &registry.http;
    let answer = http
        .put(format!("{consul}/v1/agent/service/register"))
        .body(r#"{"Name":"web","Address":"10.0.0.3","Port":80}"#)
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let v1 = registry.api.service("web", None).await.expect("v1");
    assert_eq!(v1.instances.len(), 1, "the same registry");
    let health: Value = eventually(DEADLINE, "the health answer", || async {
        let response = http
            .get(format!("{consul}/v1/health/service/web"))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    })
    .await;
    assert_eq!(health[0]["Service"]["Address"], "10.0.0.3");
    let ours = http
        .get(format!("{consul}/v1/services"))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        ours.status(),
        StatusCode::NOT_FOUND,
        "only Consul's API there"
    );
    let kv = http
        .get(format!("{consul}/v1/kv/a"))
        .send()
        .await
        .expect("answer");
    assert_eq!(kv.status(), StatusCode::NOT_IMPLEMENTED);
    registry.stop().await;
}

both_stores!(an_http_check_is_run_by_the_registry, |backend| async move {
    let registry = TestRegistry::start(backend).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("bound").port();
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    register(
            &registry,
            json!({
                "Name": "checked",
                "ID": "checked-1",
                "Address": "127.0.0.1",
                "Port": port,
                "Checks": [
                    {"HTTP": format!("http://127.0.0.1:{port}/health"), "Interval": "1s", "Timeout": "1s"},
                    {"TTL": "60s"},
                ],
            }),
        )
        .await;
    let checks_of = |answer: Value| -> Vec<(String, String, String)> {
        answer
            .as_array()
            .expect("checks")
            .iter()
            .map(|c| {
                (
                    c["CheckID"].as_str().unwrap_or_default().to_owned(),
                    c["Status"].as_str().unwrap_or_default().to_owned(),
                    c["Output"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    // A client that percent-encodes the check id (npm's `consul`) reports the TTL check.
    let reported = put(
        &registry,
        "/v1/agent/check/pass/service%3Achecked-1%3A1",
        None,
    )
    .await;
    assert_eq!(reported.status, StatusCode::OK, "{}", reported.text);
    // The registry's check ran and passed; its output is shown.
    let passed = eventually(DEADLINE, "the HTTP check's first result", || async {
        let checks = checks_of(get(&registry, "/v1/health/checks/checked").await.json());
        checks
            .iter()
            .any(|(id, status, output)| {
                id == "service:checked-1:2" && status == "passing" && output.contains("200")
            })
            .then_some(checks)
    })
    .await;
    assert!(
        passed
            .iter()
            .any(|(id, status, _)| id == "service:checked-1:1" && status == "passing"),
        "the TTL check comes first: {passed:?}"
    );
    let not_ttl = put(&registry, "/v1/agent/check/pass/service:checked-1:2", None).await;
    assert_eq!(
        not_ttl.status,
        StatusCode::BAD_REQUEST,
        "the HTTP check is the registry's"
    );

    // Its server gone, the instance turns critical, and a blocking query sees it.
    let before = get(&registry, "/v1/health/service/checked?passing").await;
    assert_eq!(before.json().as_array().map(Vec::len), Some(1));
    server.abort();
    let index = before.index.expect("index");
    let critical = eventually(DEADLINE, "the HTTP check to fail", || async {
        let answer = get(
            &registry,
            &format!("/v1/health/service/checked?passing&index={index}&wait=5s"),
        )
        .await;
        (answer.json() == json!([])).then_some(answer)
    })
    .await;
    assert!(critical.index.expect("index") > index);
    let checks = checks_of(get(&registry, "/v1/health/checks/checked").await.json());
    assert!(
        checks
            .iter()
            .any(|(id, status, _)| id == "service:checked-1:2" && status == "critical"),
        "{checks:?}"
    );
    assert!(
        checks
            .iter()
            .any(|(id, status, _)| id == "service:checked-1:1" && status == "passing"),
        "the lease is live: {checks:?}"
    );
    registry.stop().await;
});

both_stores!(
    ttl_reports_set_the_status_until_the_next_and_a_note_alone_wakes_nothing,
    |backend| async move {
        let registry = TestRegistry::start(backend).await;
        register(
            &registry,
            json!({"Name": "job", "ID": "job-1", "Address": "10.0.0.8", "Port": 80,
                   "Check": {"TTL": "60s", "Status": "passing"}}),
        )
        .await;
        let status_of = |answer: &Answer| -> (String, String) {
            let check = &answer.json()[0];
            (
                check["Status"].as_str().unwrap_or_default().to_owned(),
                check["Output"].as_str().unwrap_or_default().to_owned(),
            )
        };
        let start = get(&registry, "/v1/health/checks/job").await;
        assert_eq!(
            status_of(&start).0,
            "passing",
            "Status given at registration"
        );

        let warned = put(
            &registry,
            "/v1/agent/check/warn/service:job-1?note=slow%20disk",
            None,
        )
        .await;
        assert_eq!(warned.status, StatusCode::OK, "{}", warned.text);
        let warning = get(&registry, "/v1/health/checks/job").await;
        assert_eq!(status_of(&warning), ("warning".into(), "slow disk".into()));
        let v1 = registry.api.service("job", None).await.expect("v1");
        assert_eq!(
            v1.instances[0].status,
            Status::Warning,
            "v1 sees the report"
        );

        // The same status with a new output: shown, but the index stays and a blocking
        // query does not wake.
        let index = warning.index.expect("index");
        let noted = put(
            &registry,
            "/v1/agent/check/update/service:job-1",
            Some(r#"{"Status":"warning","Output":"slower disk"}"#),
        )
        .await;
        assert_eq!(noted.status, StatusCode::OK, "{}", noted.text);
        let shown = get(&registry, "/v1/health/checks/job").await;
        assert_eq!(status_of(&shown), ("warning".into(), "slower disk".into()));
        assert_eq!(shown.index, Some(index), "an output alone moves no index");
        let started = Instant::now();
        let held = get(
            &registry,
            &format!("/v1/health/checks/job?index={index}&wait=500ms"),
        )
        .await;
        assert!(started.elapsed() >= Duration::from_millis(500), "it waited");
        assert_eq!(held.index, Some(index));

        let failed = put(&registry, "/v1/agent/check/fail/service:job-1", None).await;
        assert_eq!(failed.status, StatusCode::OK);
        let critical = get(&registry, "/v1/health/checks/job").await;
        assert_eq!(status_of(&critical).0, "critical");
        assert!(critical.index.expect("index") > index);
        let passing = get(&registry, "/v1/health/service/job?passing")
            .await
            .json();
        assert_eq!(passing, json!([]));

        let updated = put(
            &registry,
            "/v1/agent/check/update/service:job-1",
            Some(r#"{"status":"passing","output":"all good"}"#),
        )
        .await;
        assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
        let good = get(&registry, "/v1/health/checks/job").await;
        assert_eq!(status_of(&good), ("passing".into(), "all good".into()));
        registry.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_passes_while_a_connection_opens_and_reaping_is_per_instance() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("bound").port();
    let accepting = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    register(
        &registry,
        json!({"Name": "db", "ID": "db-1", "Address": "127.0.0.1", "Port": port,
               "Check": {"TCP": format!("127.0.0.1:{port}"), "Interval": "1s",
                         "DeregisterCriticalServiceAfter": "2s"}}),
    )
    .await;
    let instance = registry
        .api
        .service("db", None)
        .await
        .expect("v1")
        .instances[0]
        .clone();
    assert_eq!(instance.deregister_critical_after.as_deref(), Some("2s"));
    let check = instance.check.expect("an active check");
    assert_eq!(check.tcp, Some(format!("127.0.0.1:{port}")));
    eventually(DEADLINE, "the TCP check to pass", || async {
        let answer = get(&registry, "/v1/health/service/db?passing").await.json();
        (answer.as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    let checks = get(&registry, "/v1/health/checks/db").await.json();
    assert_eq!(checks[0]["Type"], "tcp");

    // Nothing listens any more: critical, then reaped after its own 2 s.
    accepting.abort();
    eventually(DEADLINE, "the instance to be reaped", || async {
        let answer = get(&registry, "/v1/catalog/service/db").await.json();
        (answer == json!([])).then_some(())
    })
    .await;
    registry.stop().await;
}
