//! `ServiceClient` against a real registry: instances are small HTTP servers run by the
//! test (on port 0) and registered without a lease, so only the test changes their state.
//!
//! Each fake instance counts the calls it gets (its `/health` check path aside, which the
//! registry's active check uses) and keeps their `traceparent` headers, so the tests can
//! tell which instance a call reached, or that it reached none.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Backend, TestRegistry, eventually};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use registry_api::{CheckSpec, InstanceSpec, Status};
use registry_client::breaker::{BreakerConfig, BreakerState, SlidingWindow};
use registry_client::caller::{CallError, CallResponse, CallerOptions, ServiceClient};
use registry_client::discovery::{Discovery, DiscoveryOptions};
use registry_client::trace::{self, TraceParent};
use registry_client::{Instance, RegistryApi};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(15);

/// How a fake instance answers calls (its `/health` path is set apart).
#[derive(Debug, Clone, Copy)]
enum Behavior {
    /// This status, with a JSON body naming the instance.
    Answer(u16),
    /// Accepts the request and never answers.
    Hang,
}

/// What a fake instance saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    traceparent: Option<String>,
    content_type: Option<String>,
    body: Bytes,
}

struct FakeState {
    name: String,
    behavior: Mutex<Behavior>,
    health: Mutex<u16>,
    hits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// A fake instance: an HTTP server on 127.0.0.1:0 that answers as told.
struct Fake {
    url: String,
    state: Arc<FakeState>,
    task: JoinHandle<()>,
}

impl Fake {
    async fn start(name: &str, behavior: Behavior) -> Self {
        let state = Arc::new(FakeState {
            name: name.to_owned(),
            behavior: Mutex::new(behavior),
            health: Mutex::new(200),
            hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a fake instance");
        let addr = listener.local_addr().expect("fake address");
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// Calls received, health checks aside.
    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// What `/health` answers from now on (the registry's active check calls it).
    fn health(&self, status: u16) {
        *self.state.health.lock().expect("health") = status;
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() == "/health" {
        let status = *state.health.lock().expect("health");
        return StatusCode::from_u16(status)
            .unwrap_or(StatusCode::OK)
            .into_response();
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    state.seen.lock().expect("seen").push(Seen {
        method: method.to_string(),
        path_and_query: uri
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default(),
        traceparent: header("traceparent"),
        content_type: header("content-type"),
        body,
    });
    state.hits.fetch_add(1, Ordering::SeqCst);
    let behavior = *state.behavior.lock().expect("behavior");
    match behavior {
        Behavior::Answer(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::json!({ "answered_by": state.name }).to_string();
            (status, [("content-type", "application/json")], body).into_response()
        }
        Behavior::Hang => std::future::pending().await,
    }
}

/// Registers `fake` as `service/id` without a lease (`ttl_seconds: 0`), so no lease can
/// lapse during a test.
async fn register(api: &RegistryApi, service: &str, id: &str, fake: &Fake) {
    let mut spec = InstanceSpec::new(&fake.url);
    spec.ttl_seconds = Some(0);
    api.register(service, id, &spec).await.expect("register");
}

/// Registers `fake` with an active check on its `/health` path every second (and no
/// lease, so only the check decides its status).
async fn register_checked(api: &RegistryApi, service: &str, id: &str, fake: &Fake) {
    let mut spec = InstanceSpec::new(&fake.url);
    spec.ttl_seconds = Some(0);
    spec.check = Some(CheckSpec {
        http: Some("/health".into()),
        tcp: None,
        interval_seconds: Some(1),
        timeout_seconds: None,
        expect_json: None,
    });
    api.register(service, id, &spec).await.expect("register");
}

/// A client with short discovery waits, so that it follows registry changes quickly.
fn client(registry: &TestRegistry, options: CallerOptions) -> ServiceClient {
    let discovery = Discovery::with_options(
        registry.api.clone(),
        DiscoveryOptions {
            wait: Duration::from_secs(5),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(250),
            first_fetch_timeout: Duration::from_secs(3),
            cache_file: None,
            ..DiscoveryOptions::default()
        },
    );
    ServiceClient::new(discovery, options)
}

/// A breaker that judges from 4 calls and stays open long enough for any test.
fn small_breaker() -> BreakerConfig {
    BreakerConfig::builder()
        .sliding_window(SlidingWindow::Count(4))
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(60))
        .max_wait_in_open(Duration::from_secs(60))
        .build()
        .expect("a valid breaker configuration")
}

/// Polls until the client's discovery view of `service` gives each id the status listed.
async fn view_has(client: &ServiceClient, service: &str, expected: &[(&str, Status)]) {
    eventually(
        DEADLINE,
        &format!("{service} seen as {expected:?}"),
        || async {
            let resolved = client.discovery().resolve(service).await.ok()?;
            let status_of = |id: &str| {
                resolved
                    .instances
                    .iter()
                    .find(|i| i.id == id)
                    .map(|i| i.status)
            };
            expected
                .iter()
                .all(|(id, status)| status_of(id) == Some(*status))
                .then_some(())
        },
    )
    .await;
}

/// Polls the registry itself until `service/id` has `status`.
async fn registry_has(api: &RegistryApi, service: &str, id: &str, status: Status) {
    eventually(
        DEADLINE,
        &format!("{service}/{id} {status:?} in the registry"),
        || async {
            let answer = api.service(service, None).await.ok()?;
            answer
                .instances
                .iter()
                .any(|i: &Instance| i.id == id && i.status == status)
                .then_some(())
        },
    )
    .await;
}

fn breaker_state(client: &ServiceClient, key: &str) -> BreakerState {
    client.breakers().get(key).state()
}

fn answered_by(response: &CallResponse) -> String {
    let body: serde_json::Value = response.json().expect("a JSON body");
    body["answered_by"].as_str().unwrap_or_default().to_owned()
}

// (a) Calls alternate between two healthy instances, one attempt each, and reach the
// instance at the path and query given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_between_healthy_instances() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let one = Fake::start("one", Behavior::Answer(200)).await;
    let two = Fake::start("two", Behavior::Answer(200)).await;
    register(&registry.api, "rr", "rr-1", &one).await;
    register(&registry.api, "rr", "rr-2", &two).await;
    let client = client(&registry, CallerOptions::default());

    let mut ids = Vec::new();
    for n in 0..10 {
        let response = client
            .get("rr", &format!("/work?n={n}"))
            .await
            .expect("a healthy instance answers");
        assert_eq!((response.status, response.attempts), (200, 1));
        let expected_name = if response.instance.id == "rr-1" {
            "one"
        } else {
            "two"
        };
        assert_eq!(answered_by(&response), expected_name, "{response:?}");
        ids.push(response.instance.id);
    }
    for pair in ids.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {ids:?}");
    }
    assert_eq!((one.hits(), two.hits()), (5, 5), "{ids:?}");

    let paths: Vec<String> = one
        .seen()
        .into_iter()
        .chain(two.seen())
        .map(|s| s.path_and_query)
        .collect();
    for n in 0..10 {
        assert!(paths.contains(&format!("/work?n={n}")), "{paths:?}");
    }

    let decoded: serde_json::Value = client.get_json("rr", "/work").await.expect("get_json");
    assert!(decoded["answered_by"].is_string(), "{decoded}");
}

// (b) A 500 makes an idempotent GET retry on the other instance (two attempts, success);
// a POST is not retried and fails with the 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_on_another_instance_for_get_only() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let bad = Fake::start("bad", Behavior::Answer(500)).await;
    let good = Fake::start("good", Behavior::Answer(200)).await;
    register(&registry.api, "retry", "bad-1", &bad).await;
    register(&registry.api, "retry", "good-1", &good).await;
    // The default breaker judges from 10 calls on: the 500s below do not open it.
    let client = client(&registry, CallerOptions::default());

    let mut retried = 0;
    for _ in 0..4 {
        let before = bad.hits();
        let response = client.get("retry", "/sum?x=1").await.expect("GET succeeds");
        assert_eq!(response.status, 200);
        assert_eq!(response.instance.id, "good-1");
        let bad_was_called = bad.hits() > before;
        assert_eq!(
            response.attempts,
            if bad_was_called { 2 } else { 1 },
            "attempts count the instances called"
        );
        retried += usize::from(bad_was_called);
    }
    // The rotation goes on after the retry's pick (good-1), so every call but perhaps the
    // first starts on bad-1.
    assert!(retried >= 3, "{retried} of 4 calls started on bad-1");
    assert_eq!((bad.hits(), good.hits()), (retried, 4));

    // One call, one trace: the retry is another span of the trace of the failed attempt.
    let last_bad = bad.seen().pop().and_then(|s| s.traceparent);
    let last_good = good.seen().pop().and_then(|s| s.traceparent);
    let (first, second) = (
        TraceParent::parse(&last_bad.expect("a traceparent")).expect("valid"),
        TraceParent::parse(&last_good.expect("a traceparent")).expect("valid"),
    );
    assert_eq!(first.trace_id, second.trace_id);
    assert_ne!(first.span_id, second.span_id);

    // POST: never retried.
    let mut failed = 0;
    for n in 0..4 {
        let (bad_before, good_before) = (bad.hits(), good.hits());
        let body = Bytes::from(format!("{{\"n\":{n}}}"));
        let result = client
            .call(Method::POST, "retry", "/orders", Some(body.clone()))
            .await;
        match result {
            Err(CallError::Status {
                status, url, body, ..
            }) => {
                assert_eq!(status, 500);
                assert!(url.starts_with(&bad.url), "{url}");
                assert!(String::from_utf8_lossy(&body).contains("bad"));
                assert_eq!(
                    (bad.hits(), good.hits()),
                    (bad_before + 1, good_before),
                    "not retried"
                );
                failed += 1;
            }
            Ok(response) => {
                assert_eq!((response.status, response.attempts), (200, 1));
                assert_eq!(response.instance.id, "good-1");
                assert_eq!((bad.hits(), good.hits()), (bad_before, good_before + 1));
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(failed, 2, "POSTs alternate too, and half of them hit bad-1");
    let post = good.seen().pop().expect("a POST reached good-1");
    assert_eq!(post.method, "POST");
    assert_eq!(post.content_type.as_deref(), Some("application/json"));
    assert!(post.body.starts_with(b"{\"n\":"), "{:?}", post.body);
}

// (c) A 4xx is an answer, not a failure: `call`/`get` return it, it is not retried, the
// breaker stays closed however many come; `get_json` turns it into `CallError::Status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_an_answer_and_not_a_breaker_failure() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let one = Fake::start("one", Behavior::Answer(404)).await;
    let two = Fake::start("two", Behavior::Answer(404)).await;
    register(&registry.api, "lost", "lost-1", &one).await;
    register(&registry.api, "lost", "lost-2", &two).await;
    let client = client(
        &registry,
        CallerOptions {
            breaker: small_breaker(),
            ..CallerOptions::default()
        },
    );

    for _ in 0..12 {
        let response = client.get("lost", "/nothing").await.expect("an answer");
        assert_eq!((response.status, response.attempts), (404, 1));
        let response = client
            .call(Method::POST, "lost", "/nothing", None)
            .await
            .expect("an answer");
        assert_eq!((response.status, response.attempts), (404, 1));
    }
    assert_eq!(one.hits() + two.hits(), 24, "no call was retried");
    for key in ["lost/lost-1", "lost/lost-2"] {
        let snapshot = client.breakers().get(key).snapshot();
        assert_eq!(snapshot.state, BreakerState::Closed, "{key}: {snapshot:?}");
        assert_eq!(snapshot.failed_calls, 0, "{key}: {snapshot:?}");
        assert_eq!(snapshot.buffered_calls, 4, "{key}: {snapshot:?}");
    }

    match client
        .get_json::<serde_json::Value>("lost", "/nothing")
        .await
    {
        Err(CallError::Status {
            service,
            status,
            body,
            ..
        }) => {
            assert_eq!((service.as_str(), status), ("lost", 404));
            assert!(String::from_utf8_lossy(&body).contains("answered_by"));
        }
        other => panic!("expected CallError::Status, got {other:?}"),
    }
}

// (d) An instance that never answers: `CallError::Timeout` after the call timeout, counted
// as a failure by its breaker; with another instance, a GET retries there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_answers_times_out_and_counts_as_a_failure() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let silent = Fake::start("silent", Behavior::Hang).await;
    register(&registry.api, "hang", "hang-1", &silent).await;
    let timeout = Duration::from_millis(300);
    let client = client(
        &registry,
        CallerOptions {
            call_timeout: timeout,
            ..CallerOptions::default()
        },
    );
    // Resolve first, so the measured time is the call's alone.
    client.discovery().resolve("hang").await.expect("resolve");

    let started = std::time::Instant::now();
    let result = client.get("hang", "/slow").await;
    let elapsed = started.elapsed();
    match result {
        Err(CallError::Timeout {
            service,
            timeout: reported,
            url,
        }) => {
            assert_eq!(service, "hang");
            assert_eq!(reported, timeout);
            assert_eq!(url, format!("{}/slow", silent.url));
        }
        other => panic!("expected CallError::Timeout, got {other:?}"),
    }
    assert!(elapsed >= timeout, "gave up after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "gave up after {elapsed:?}"
    );
    assert_eq!(silent.hits(), 1, "the request reached the instance");
    let snapshot = client.breakers().get("hang/hang-1").snapshot();
    assert_eq!((snapshot.buffered_calls, snapshot.failed_calls), (1, 1));

    // With a second instance, a GET that times out on the first answers from the second.
    let quick = Fake::start("quick", Behavior::Answer(200)).await;
    register(&registry.api, "hang", "hang-2", &quick).await;
    view_has(
        &client,
        "hang",
        &[("hang-1", Status::Passing), ("hang-2", Status::Passing)],
    )
    .await;
    let mut timed_out_then_retried = false;
    for _ in 0..2 {
        let before = silent.hits();
        let response = client.get("hang", "/slow").await.expect("hang-2 answers");
        assert_eq!(response.instance.id, "hang-2");
        if silent.hits() > before {
            assert_eq!(response.attempts, 2);
            timed_out_then_retried = true;
        }
    }
    assert!(
        timed_out_then_retried,
        "round robin sent one call to hang-1"
    );
    let failed = client.breakers().get("hang/hang-1").snapshot().failed_calls;
    assert_eq!(failed, 2);
}

// (e) Enough failures open an instance's breaker and calls then skip it without trying
// it; with every breaker open the error is `CircuitOpen`; with no instance, `NoInstance`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breakers_are_skipped_and_reported() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let bad = Fake::start("bad", Behavior::Answer(503)).await;
    let good = Fake::start("good", Behavior::Answer(200)).await;
    register(&registry.api, "flaky", "bad-1", &bad).await;
    register(&registry.api, "flaky", "good-1", &good).await;
    let down_a = Fake::start("down-a", Behavior::Answer(500)).await;
    let down_b = Fake::start("down-b", Behavior::Answer(500)).await;
    register(&registry.api, "down", "down-a", &down_a).await;
    register(&registry.api, "down", "down-b", &down_b).await;
    let client = client(
        &registry,
        CallerOptions {
            breaker: small_breaker(),
            ..CallerOptions::default()
        },
    );

    // bad-1 fails every call it gets (each then retried on good-1) until its window of 4
    // is full of failures.
    let mut calls = 0;
    while bad.hits() < 4 {
        let response = client.get("flaky", "/x").await.expect("good-1 answers");
        assert_eq!(response.instance.id, "good-1");
        calls += 1;
        assert!(calls <= 10, "bad-1 got {} calls in {calls}", bad.hits());
    }
    assert_eq!(breaker_state(&client, "flaky/bad-1"), BreakerState::Open);
    assert_eq!(breaker_state(&client, "flaky/good-1"), BreakerState::Closed);
    for _ in 0..10 {
        let response = client.get("flaky", "/x").await.expect("good-1 answers");
        assert_eq!(
            (response.instance.id.as_str(), response.attempts),
            ("good-1", 1)
        );
    }
    assert_eq!(bad.hits(), 4, "an open breaker keeps calls away from bad-1");
    // A POST too goes to good-1 rather than failing on bad-1.
    let response = client
        .call(Method::POST, "flaky", "/x", None)
        .await
        .expect("good-1 answers");
    assert_eq!(response.instance.id, "good-1");

    // Both instances fail: each GET tries both, until both breakers are open.
    for _ in 0..4 {
        match client.get("down", "/x").await {
            Err(CallError::Status { status: 500, .. }) => {}
            other => panic!("expected a 500, got {other:?}"),
        }
    }
    assert_eq!((down_a.hits(), down_b.hits()), (4, 4));
    for key in ["down/down-a", "down/down-b"] {
        assert_eq!(breaker_state(&client, key), BreakerState::Open, "{key}");
    }
    for method in [Method::GET, Method::POST] {
        match client.call(method, "down", "/x", None).await {
            Err(CallError::CircuitOpen { service }) => assert_eq!(service, "down"),
            other => panic!("expected CallError::CircuitOpen, got {other:?}"),
        }
    }
    assert_eq!(
        (down_a.hits(), down_b.hits()),
        (4, 4),
        "no instance was tried"
    );

    // Nothing registered at all.
    match client.get("nobody", "/x").await {
        Err(CallError::NoInstance { service }) => assert_eq!(service, "nobody"),
        other => panic!("expected CallError::NoInstance, got {other:?}"),
    }
}

// (f) Every call carries a valid W3C `traceparent`: a new trace outside any, a child of
// the current context (same trace id, new span id, same flags) inside `trace::in_trace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_carries_a_traceparent_that_continues_the_current_trace() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let fake = Fake::start("traced", Behavior::Answer(200)).await;
    register(&registry.api, "traced", "traced-1", &fake).await;
    let client = client(&registry, CallerOptions::default());

    client.get("traced", "/a").await.expect("call");
    client.get("traced", "/b").await.expect("call");
    let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .expect("a valid parent");
    trace::in_trace(parent, async {
        client.get("traced", "/c").await.expect("call");
        client
            .call(Method::POST, "traced", "/d", None)
            .await
            .expect("call");
    })
    .await;
    let unsampled = TraceParent {
        sampled: false,
        ..TraceParent::new_root()
    };
    trace::in_trace(unsampled, async {
        client.get("traced", "/e").await.expect("call");
    })
    .await;

    let seen = fake.seen();
    assert_eq!(seen.len(), 5);
    let headers: Vec<(String, TraceParent)> = seen
        .iter()
        .map(|s| {
            let header = s.traceparent.clone().expect("every call has a traceparent");
            let parsed = TraceParent::parse(&header)
                .unwrap_or_else(|| panic!("{header} is not a valid traceparent"));
            // Lowercase hex, version 00, exactly as the spec writes it.
            assert_eq!(parsed.to_string(), header);
            (s.path_and_query.clone(), parsed)
        })
        .collect();
    let by_path = |path: &str| {
        headers
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("no call to {path}"))
    };

    let (a, b) = (by_path("/a"), by_path("/b"));
    assert_ne!(a.trace_id, parent.trace_id);
    assert_ne!(
        a.trace_id, b.trace_id,
        "outside a trace, each call starts one"
    );
    assert!(a.sampled && b.sampled);

    let (c, d) = (by_path("/c"), by_path("/d"));
    for child in [c, d] {
        assert_eq!(
            child.trace_id, parent.trace_id,
            "the parent's trace goes on"
        );
        assert_ne!(child.span_id, parent.span_id, "with a new span");
        assert!(child.sampled);
    }
    assert_ne!(c.span_id, d.span_id, "one span per call");

    let e = by_path("/e");
    assert_eq!(e.trace_id, unsampled.trace_id);
    assert!(!e.sampled, "the sampling decision is kept");
}

// (g) Warning instances take calls only when no passing one is left; maintenance and
// critical ones never do, with panic routing off (with it on, a service whose instances
// are mostly critical is routed over all of them: `panic_routing.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_instances_only_as_a_last_resort_maintenance_and_critical_never() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let api = &registry.api;
    let passing = Fake::start("passing", Behavior::Answer(200)).await;
    let throttled = Fake::start("throttled", Behavior::Answer(200)).await;
    let broken = Fake::start("broken", Behavior::Answer(200)).await;
    // The check decides: 429 -> warning, two failures in a row -> critical.
    throttled.health(429);
    broken.health(500);
    register(api, "mixed", "p-1", &passing).await;
    register_checked(api, "mixed", "w-1", &throttled).await;
    register_checked(api, "mixed", "c-1", &broken).await;
    registry_has(api, "mixed", "w-1", Status::Warning).await;
    registry_has(api, "mixed", "c-1", Status::Critical).await;
    let client = client(
        &registry,
        CallerOptions {
            panic_threshold: 0.0,
            ..CallerOptions::default()
        },
    );
    view_has(
        &client,
        "mixed",
        &[
            ("p-1", Status::Passing),
            ("w-1", Status::Warning),
            ("c-1", Status::Critical),
        ],
    )
    .await;

    for _ in 0..6 {
        let response = client.get("mixed", "/x").await.expect("p-1 answers");
        assert_eq!(response.instance.id, "p-1");
    }
    assert_eq!((passing.hits(), throttled.hits(), broken.hits()), (6, 0, 0));

    // p-1 drains: the warning instance is the only one left to call.
    api.set_status("mixed", "p-1", Status::Maintenance)
        .await
        .expect("maintenance");
    view_has(&client, "mixed", &[("p-1", Status::Maintenance)]).await;
    for _ in 0..6 {
        let response = client.get("mixed", "/x").await.expect("w-1 answers");
        assert_eq!(
            (response.instance.id.as_str(), response.attempts),
            ("w-1", 1)
        );
    }
    assert_eq!((passing.hits(), throttled.hits(), broken.hits()), (6, 6, 0));

    // p-1 is back: it takes every call again.
    api.set_status("mixed", "p-1", Status::Passing)
        .await
        .expect("back");
    view_has(&client, "mixed", &[("p-1", Status::Passing)]).await;
    for _ in 0..3 {
        let response = client.get("mixed", "/x").await.expect("p-1 answers");
        assert_eq!(response.instance.id, "p-1");
    }

    // Only maintenance and critical instances: nothing to call.
    api.set_status("mixed", "p-1", Status::Maintenance)
        .await
        .expect("maintenance");
    api.set_status("mixed", "w-1", Status::Maintenance)
        .await
        .expect("maintenance");
    view_has(
        &client,
        "mixed",
        &[("p-1", Status::Maintenance), ("w-1", Status::Maintenance)],
    )
    .await;
    for method in [Method::GET, Method::POST] {
        match client.call(method, "mixed", "/x", None).await {
            Err(CallError::NoInstance { service }) => assert_eq!(service, "mixed"),
            other => panic!("expected CallError::NoInstance, got {other:?}"),
        }
    }
    assert_eq!((passing.hits(), throttled.hits(), broken.hits()), (9, 6, 0));
}
