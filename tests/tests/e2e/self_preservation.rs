//! Self-preservation with the real binaries: ten `concat` instances whose heartbeats reach
//! the registry through a TCP proxy the test cuts (a network fault between the registry
//! and a zone), while `sum` and the test reach the registry and the instances directly.
//! The registry must suspect itself before the first lapse, turn no instance critical,
//! keep every call through `sum` complete, and leave the mode when the heartbeats return;
//! an instance that really stops afterwards turns critical as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use registry_api::{Status, SystemStatus};

use crate::support::{Backend, DemoService, RegistryProcess, TcpProxy, eventually};

const DEADLINE: Duration = Duration::from_secs(30);
const INSTANCES: usize = 10;
/// The instances' lease.
const TTL: Duration = Duration::from_secs(2);
/// The registry's lease sweep runs every 250 ms and expires a lease 250 ms after its
/// deadline (the heartbeat flush grace); a bound on both, for "its lease plus one sweep".
const SWEEP_AND_GRACE: Duration = Duration::from_millis(500);

both_stores!(
    a_cut_between_the_registry_and_its_instances_turns_none_critical,
    |backend| async move { cut_and_heal(backend).await }
);

async fn cut_and_heal(backend: Backend) {
    let database_url = backend.fresh_url().await;
    // Two replicas on Postgres: the instances heartbeat to the first, callers ask the
    // second, and both must hold (neither may expire what the other holds).
    let replicas = match backend {
        Backend::Sqlite => 1,
        Backend::Postgres => 2,
    };
    let mut registries = Vec::new();
    for _ in 0..replicas {
        registries.push(RegistryProcess::start(&database_url, &[]).await);
    }
    let heartbeats_to = &registries[0];
    let callers_ask = &registries[replicas - 1];
    let proxy = TcpProxy::start().await;
    proxy.set_target(heartbeats_to.addr);

    let ttl = TTL.as_secs().to_string();
    let lease = [("SERVICE_TTL_SECONDS", ttl.as_str())];
    let mut concats = Vec::new();
    for n in 1..=INSTANCES {
        let id = format!("concat-{n}");
        concats.push(DemoService::start(&proxy.url(), "concat", &id, &lease, DEADLINE).await);
    }
    let sum = DemoService::start(&callers_ask.base_url, "sum", "sum-1", &lease, DEADLINE).await;
    eventually(DEADLINE, "every concat instance passing", || async {
        let concat = callers_ask.api.service("concat", None).await.ok()?;
        let passing = concat
            .instances
            .iter()
            .filter(|i| i.status == Status::Passing)
            .count();
        (passing == INSTANCES).then_some(())
    })
    .await;

    let calls = Calls::start(sum.url.clone());
    let cut_at = Instant::now();
    proxy.cut().await;

    let entered = eventually(DEADLINE, "the registry in self-preservation", || async {
        let status = callers_ask.api.status(None).await.ok()?;
        status.self_preservation.active.then_some(status)
    })
    .await;
    assert!(
        cut_at.elapsed() < TTL,
        "decided before the first lease could lapse ({:?} after the cut)",
        cut_at.elapsed()
    );
    assert_eq!(critical_concats(&entered), 0);

    // Every lease runs out meanwhile: each lapse is held, none applied.
    let held = eventually(DEADLINE, "every concat lapse held", || async {
        let status = callers_ask.api.status(None).await.ok()?;
        (status.self_preservation.held as usize >= INSTANCES).then_some(status)
    })
    .await;
    assert_eq!(critical_concats(&held), 0, "no instance turned critical");
    let concat = &held.services.iter().find(|s| s.name == "concat");
    assert!(
        concat.is_some_and(|s| s.instances.iter().all(|i| i.lease_held)),
        "every instance shows its held lease: {concat:?}"
    );
    for registry in &registries {
        let status = registry.api.status(None).await.expect("status");
        assert_eq!(
            status.self_preservation.since, held.self_preservation.since,
            "the replicas report one state"
        );
    }
    let gauge = metrics(callers_ask).await;
    assert!(
        gauge.contains("\nregistry_self_preservation 1\n"),
        "{gauge}"
    );

    // Heal: the heartbeats return, the mode ends, and nothing was ever critical.
    proxy.set_target(heartbeats_to.addr);
    let left = eventually(DEADLINE, "self-preservation over", || async {
        let status = callers_ask.api.status(None).await.ok()?;
        let leases_back = status.self_preservation.held == 0;
        (!status.self_preservation.active && leases_back).then_some(status)
    })
    .await;
    assert_eq!(critical_concats(&left), 0);
    let (complete, partial) = calls.stop().await;
    assert!(complete > 0);
    assert_eq!(
        partial, 0,
        "every call through sum was complete ({complete} were)"
    );
    let history = callers_ask
        .api
        .history("concat", None, None, None)
        .await
        .expect("history");
    let turned_critical: Vec<_> = history
        .events
        .iter()
        .filter(|e| e.to == Some(Status::Critical))
        .collect();
    assert!(turned_critical.is_empty(), "{turned_critical:?}");
    assert!(
        history
            .events
            .iter()
            .any(|e| e.reason == registry_api::Reason::LeaseHeld),
        "the history shows the held lapses"
    );
    let logged = heartbeats_to.log_lines_with("self-preservation");
    assert!(
        logged.len() >= 2,
        "entering and leaving are logged: {logged:?}"
    );

    // An instance that really stops turns critical within its lease and one sweep.
    let stopped = concats.pop().expect("an instance");
    let stopped_at = Instant::now();
    drop(stopped);
    let id = format!("concat-{INSTANCES}");
    eventually(DEADLINE, "the stopped instance critical", || async {
        let concat = callers_ask.api.service("concat", None).await.ok()?;
        let instance = concat.instances.iter().find(|i| i.id == id)?;
        (instance.status == Status::Critical).then_some(())
    })
    .await;
    // Its last heartbeat came up to a third of the TTL before the stop.
    assert!(
        stopped_at.elapsed() <= TTL + SWEEP_AND_GRACE + Duration::from_millis(500),
        "critical {:?} after the stop",
        stopped_at.elapsed()
    );
    let status = callers_ask.api.status(None).await.expect("status");
    assert!(
        !status.self_preservation.active,
        "one instance is no fault of the registry"
    );
}

fn critical_concats(status: &SystemStatus) -> usize {
    status
        .services
        .iter()
        .filter(|s| s.name == "concat")
        .flat_map(|s| &s.instances)
        .filter(|i| i.status == Status::Critical)
        .count()
}

async fn metrics(registry: &RegistryProcess) -> String {
    reqwest::get(format!("{}/metrics", registry.base_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Calls `sum` one after another until stopped, counting complete and partial answers
/// (`"string": null`: no concat instance answered).
struct Calls {
    stop: Arc<AtomicBool>,
    complete: Arc<AtomicUsize>,
    partial: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Calls {
    fn start(sum_url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let complete = Arc::new(AtomicUsize::new(0));
        let partial = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, complete, partial) = (stop.clone(), complete.clone(), partial.clone());
            async move {
                let http = reqwest::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    let answer: serde_json::Value = http
                        .get(format!("{sum_url}/sum?x=1&y=2"))
                        .send()
                        .await
                        .expect("sum answers")
                        .json()
                        .await
                        .expect("sum answers JSON");
                    if answer["string"].is_string() {
                        complete.fetch_add(1, Ordering::SeqCst);
                    } else {
                        partial.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            stop,
            complete,
            partial,
            task,
        }
    }

    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the calls ran");
        (
            self.complete.load(Ordering::SeqCst),
            self.partial.load(Ordering::SeqCst),
        )
    }
}
