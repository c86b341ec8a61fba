//! Panic routing through the real `sum` binary: `sum` calls `concat`, whose instances are
//! small servers run by the test (they answer `/concat` as the demo's concat does, count
//! the calls they get, and answer the registry's active check on `/health` as told).
//!
//! With 2 of 3 instances marked critical in the registry while they still serve (their
//! check fails, their `/concat` works), fewer than half are available: sum spreads its
//! calls over all 3 (panic), and a fourth instance in maintenance gets nothing. With all
//! 3 really down, sum's breakers open and its answer is the partial one, as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{Backend, DemoService, TestRegistry, eventually};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use registry_api::{CheckSpec, InstanceSpec, Status};
use registry_client::RegistryApi;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(30);

struct ConcatState {
    health: AtomicU16,
    hits: AtomicUsize,
    /// Answers 503 to everything (connections already open outlive the listener).
    dead: AtomicBool,
}

/// A concat instance: `/concat?x=&y=` answers `{"result": x + y}`, `/health` the status set.
struct Concat {
    url: String,
    state: Arc<ConcatState>,
    task: JoinHandle<()>,
}

impl Concat {
    async fn start() -> Self {
        let state = Arc::new(ConcatState {
            health: AtomicU16::new(200),
            hits: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }

    /// Really down: new connections are refused, open ones answer 503.
    fn kill(&self) {
        self.state.dead.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

impl Drop for Concat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(state): State<Arc<ConcatState>>,
    uri: Uri,
    Query(words): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if state.dead.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if uri.path() == "/health" {
        let status = state.health.load(Ordering::SeqCst);
        return StatusCode::from_u16(status)
            .unwrap_or(StatusCode::OK)
            .into_response();
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    let word = |name: &str| words.get(name).cloned().unwrap_or_default();
    let result = format!("{}{}", word("x"), word("y"));
    axum::Json(serde_json::json!({ "result": result })).into_response()
}

/// Registered without a lease and with an active check on `/health` every second, so that
/// only the check decides the status.
async fn register(api: &RegistryApi, id: &str, concat: &Concat) {
    let mut spec = InstanceSpec::new(&concat.url);
    spec.ttl_seconds = Some(0);
    spec.check = Some(CheckSpec {
        http: Some("/health".into()),
        tcp: None,
        interval_seconds: Some(1),
        timeout_seconds: None,
        expect_json: None,
    });
    api.register("concat", id, &spec).await.expect("register");
}

async fn statuses_are(api: &RegistryApi, expected: &[(&str, Status)]) {
    eventually(DEADLINE, &format!("concat as {expected:?}"), || async {
        let answer = api.service("concat", None).await.ok()?;
        expected
            .iter()
            .all(|(id, status)| {
                answer
                    .instances
                    .iter()
                    .any(|i| i.id == *id && i.status == *status)
            })
            .then_some(())
    })
    .await;
}

/// sum's answer to `sum(10, 15)`: the `string` field (`None` when partial).
async fn sum(http: &reqwest::Client, sum_url: &str) -> Option<String> {
    let answer: serde_json::Value = http
        .get(format!("{sum_url}/sum?x=10&y=15"))
        .send()
        .await
        .expect("sum answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["result"], 25, "{answer}");
    answer["string"].as_str().map(str::to_owned)
}

async fn panic_calls(http: &reqwest::Client, sum_url: &str) -> u64 {
    let text = http
        .get(format!("{sum_url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find(|l| l.starts_with("registry_client_panic_routing_total{service=\"concat\"}"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_available_instances_spread_calls_over_all_but_maintenance() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let api = &registry.api;
    let concats = [
        Concat::start().await,
        Concat::start().await,
        Concat::start().await,
        Concat::start().await,
    ];
    for (n, concat) in concats.iter().enumerate() {
        register(api, &format!("concat-{}", n + 1), concat).await;
    }
    api.set_status("concat", "concat-4", Status::Maintenance)
        .await
        .expect("maintenance");
    let sum_service = DemoService::start(&registry.base_url, "sum", "sum-1", &[], DEADLINE).await;
    let sum_url = sum_service.url.clone();
    let http = reqwest::Client::new();
    let hits = || concats.iter().map(Concat::hits).collect::<Vec<_>>();

    // One of three critical: 2 of 3 available, no panic; the critical one gets nothing.
    concats[2].health(500);
    statuses_are(api, &[("concat-3", Status::Critical)]).await;
    eventually(DEADLINE, "calls to concat-1 and concat-2 only", || async {
        let before = hits();
        for _ in 0..12 {
            sum(&http, &sum_url).await?;
        }
        let after = hits();
        let got = |n: usize| after[n] - before[n];
        (got(0) == 6 && got(1) == 6 && got(2) == 0).then_some(())
    })
    .await;
    assert_eq!(panic_calls(&http, &sum_url).await, 0, "no panic yet");

    // Two of three critical while they still serve: panic, all three share the calls.
    concats[1].health(500);
    statuses_are(
        api,
        &[
            ("concat-1", Status::Passing),
            ("concat-2", Status::Critical),
            ("concat-3", Status::Critical),
            ("concat-4", Status::Maintenance),
        ],
    )
    .await;
    eventually(DEADLINE, "calls spread over the three", || async {
        let before = hits();
        for _ in 0..12 {
            sum(&http, &sum_url).await?;
        }
        let after = hits();
        let got = |n: usize| after[n] - before[n];
        (got(0) == 4 && got(1) == 4 && got(2) == 4).then_some(())
    })
    .await;
    assert_eq!(
        concats[3].hits(),
        0,
        "maintenance gets nothing, panic or not"
    );
    assert!(panic_calls(&http, &sum_url).await >= 12, "counted");

    // All three really down: sum's breakers open and its answer is partial, fast.
    for concat in &concats[..3] {
        concat.kill();
    }
    eventually(DEADLINE, "sum's breakers to open", || async {
        let breakers: serde_json::Value = http
            .get(format!("{sum_url}/admin/breakers"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let open = breakers
            .as_array()?
            .iter()
            .filter(|b| b["state"] == "open")
            .count();
        assert!(sum(&http, &sum_url).await.is_none(), "partial while down");
        (open == 3).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(
            sum(&http, &sum_url).await,
            None,
            "the partial answer, as before"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "breakers fail fast: {:?}",
        started.elapsed()
    );
    assert_eq!(concats[3].hits(), 0, "maintenance still gets nothing");
    registry.stop().await;
}
