//! Crash safety of the real `registry` binary: a registration the registry acknowledged
//! survives a SIGKILL (no graceful shutdown, no flush), on each store, also when the kill
//! comes in the middle of a stream of registrations, ten times over.
//!
//! Needs the binary: `cargo build --workspace --bins` first (`make test` does).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{Backend, RegistryProcess, eventually};
use futures::StreamExt;
use registry_api::{InstanceSpec, Status};

/// Registrations acknowledged before the kill.
const REGISTRATIONS: usize = 500;
/// Registrations in flight at once.
const CONCURRENCY: usize = 16;
/// Services the registrations are spread over.
const SERVICES: usize = 5;

/// Runs `async fn $name(Backend)` as two tests, `$name::sqlite` and `$name::postgres`.
macro_rules! on_both_stores {
    ($(#[$attr:meta])* $name:ident) => {
        mod $name {
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    };
}

/// The `n`th registration: its service, id and URL.
fn registration(n: usize) -> (String, String, String) {
    let service = format!("svc-{}", n % SERVICES);
    let id = format!("inst-{n:04}");
    let url = format!(
        "http://10.{}.{}.{}:8080/api",
        n / 65_536 % 256,
        n / 256 % 256,
        n % 256
    );
    (service, id, url)
}

/// 500 registrations, each acknowledged with 201, then SIGKILL and a restart on the same
/// database: every one of them is there, with the URL and tags it was registered with.
async fn acknowledged_registrations_survive_sigkill(backend: Backend) {
    let database_url = backend.fresh_url().await;
    let registry = RegistryProcess::start(&database_url, &[]).await;

    let api = registry.api.clone();
    let acknowledged: Vec<usize> = futures::stream::iter(0..REGISTRATIONS)
        .map(|n| {
            let api = api.clone();
            async move {
                let (service, id, url) = registration(n);
                let mut spec = InstanceSpec::new(url);
                spec.tags = vec![format!("n{n}")];
                // No lease: nothing may expire while the registry is down or restarting.
                spec.ttl_seconds = Some(0);
                let registered = api
                    .register(&service, &id, &spec)
                    .await
                    .unwrap_or_else(|e| panic!("registration {n} ({service}/{id}): {e}"));
                assert!(registered.created, "{service}/{id} was new: 201");
                n
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    assert_eq!(acknowledged.len(), REGISTRATIONS);
    let index_before = api.services().await.expect("services").index;
    assert!(
        index_before >= REGISTRATIONS as u64,
        "one event per registration, index {index_before}"
    );

    // No chance to flush anything: whatever was acknowledged must already be durable.
    registry.kill().await;
    let restarted = RegistryProcess::start(&database_url, &[]).await;
    let api = &restarted.api;

    let list = eventually(
        Duration::from_secs(30),
        "the restarted registry to answer",
        || async { api.services().await.ok() },
    )
    .await;
    assert!(
        list.index >= index_before,
        "the index went back from {index_before} to {}",
        list.index
    );
    let total: u64 = list.services.iter().map(|s| s.instances).sum();
    assert_eq!(total, REGISTRATIONS as u64, "{:?}", list.services);
    assert_eq!(list.services.len(), SERVICES);

    let mut expected: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for n in 0..REGISTRATIONS {
        let (service, id, url) = registration(n);
        expected.entry(service).or_default().insert(id, url);
    }
    for (service, ids) in &expected {
        let found = api.service(service, None).await.expect("service");
        assert_eq!(
            found.instances.len(),
            ids.len(),
            "{service}: count after the restart"
        );
        let by_id: BTreeMap<&str, &registry_api::Instance> =
            found.instances.iter().map(|i| (i.id.as_str(), i)).collect();
        for (id, url) in ids {
            let instance = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("{service}/{id} was acknowledged but is gone"));
            assert_eq!(&instance.url, url, "{service}/{id}");
            let n: usize = id.trim_start_matches("inst-").parse().expect("n");
            assert_eq!(instance.tags, [format!("n{n}")], "{service}/{id}");
            assert_eq!(instance.status, Status::Passing, "{service}/{id}");
        }
    }

    // And it takes writes again.
    let registered = api
        .register(
            "svc-0",
            "after-restart",
            &InstanceSpec::new("http://10.9.9.9:80"),
        )
        .await
        .expect("register after the restart");
    assert!(registered.created);
    restarted.kill().await;
}
on_both_stores!(
    /// 500 acknowledged registrations survive a SIGKILL and a restart on the same database.
    acknowledged_registrations_survive_sigkill
);

/// Rounds of "load, SIGKILL, restart" in the mid-stream test.
const KILLS: usize = 10;
/// Registrations acknowledged in each round before the kill.
const PER_ROUND: usize = 60;

/// A stream of registrations, each with a tag naming it, is SIGKILLed ten times in its
/// middle, and the registry restarted on the same database each time: after every restart
/// every registration acknowledged so far is there, exactly once, and whatever is there
/// is whole (the URL and tag it was sent with).
async fn ten_sigkills_mid_stream_lose_no_acknowledged_registration(backend: Backend) {
    let database_url = backend.fresh_url().await;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut next = 0;
    for round in 1..=KILLS {
        let registry = RegistryProcess::start(&database_url, &[]).await;
        // More than a round can acknowledge: the kill always comes mid-stream.
        let batch = next..next + PER_ROUND * 4;
        next = batch.end;
        let before = acknowledged.lock().expect("lock").len();
        let writer = {
            let (api, acknowledged) = (registry.api.clone(), acknowledged.clone());
            tokio::spawn(async move {
                futures::stream::iter(batch)
                    .for_each_concurrent(CONCURRENCY, |n| {
                        let (api, acknowledged) = (api.clone(), acknowledged.clone());
                        async move {
                            let (service, id, url) = registration(n);
                            let mut spec = InstanceSpec::new(url);
                            spec.tags = vec![format!("n{n}")];
                            spec.ttl_seconds = Some(0);
                            if api.register(&service, &id, &spec).await.is_ok() {
                                acknowledged.lock().expect("lock").push(n);
                            }
                        }
                    })
                    .await;
            })
        };
        eventually(
            Duration::from_secs(60),
            "a round of acknowledged registrations",
            || async {
                (acknowledged.lock().expect("lock").len() >= before + PER_ROUND).then_some(())
            },
        )
        .await;
        registry.kill().await;
        // The writes still in flight fail now (connection refused or reset).
        writer.await.expect("writer task");
        let in_round = acknowledged.lock().expect("lock").len() - before;
        assert!(
            in_round < PER_ROUND * 4,
            "kill {round} came after the round's stream had ended"
        );

        let restarted = RegistryProcess::start(&database_url, &[]).await;
        let acknowledged = acknowledged.lock().expect("lock").clone();
        check_survivors(&restarted, &acknowledged, round).await;
        restarted.kill().await;
    }
}
on_both_stores!(
    /// Ten SIGKILLs in the middle of a stream of registrations lose none it acknowledged.
    ten_sigkills_mid_stream_lose_no_acknowledged_registration
);

/// Every acknowledged registration is listed once, and every listed one is as it was sent.
async fn check_survivors(registry: &RegistryProcess, acknowledged: &[usize], round: usize) {
    let mut found: BTreeMap<String, registry_api::Instance> = BTreeMap::new();
    for s in 0..SERVICES {
        let service = format!("svc-{s}");
        let listed = registry.api.service(&service, None).await.expect("service");
        for instance in listed.instances {
            let id = instance.id.clone();
            assert!(
                found.insert(id.clone(), instance).is_none(),
                "after kill {round}: {id} is listed twice"
            );
        }
    }
    let lost: Vec<String> = acknowledged
        .iter()
        .map(|n| registration(*n))
        .filter(|(_, id, _)| !found.contains_key(id))
        .map(|(service, id, _)| format!("{service}/{id}"))
        .collect();
    assert!(
        lost.is_empty(),
        "after kill {round}: {} of {} acknowledged registrations are gone: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    for (id, instance) in &found {
        let n: usize = id.trim_start_matches("inst-").parse().expect("n");
        let (service, _, url) = registration(n);
        assert_eq!(instance.service, service, "after kill {round}: {id}");
        assert_eq!(instance.url, url, "after kill {round}: {id}");
        assert_eq!(instance.tags, [format!("n{n}")], "after kill {round}: {id}");
    }
}
