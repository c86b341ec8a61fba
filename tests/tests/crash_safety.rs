//! Crash safety of the real `registry` binary: a registration the registry acknowledged
//! survives a SIGKILL (no graceful shutdown, no flush), on each store.
//!
//! Needs the binary: `cargo build --workspace --bins` first (`make test` does).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use registry_api::{InstanceSpec, Status};
use support::{Backend, RegistryProcess, eventually};

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

/// Registrations keep coming while the registry is SIGKILLed after 200 of them were
/// acknowledged: after a restart every acknowledged one is there, and whatever else
/// survived is whole (its URL and tags as sent).
async fn sigkill_mid_stream_loses_no_acknowledged_registration(backend: Backend) {
    let database_url = backend.fresh_url().await;
    let registry = RegistryProcess::start(&database_url, &[]).await;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let api = registry.api.clone();
    let writer = {
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..REGISTRATIONS * 4)
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
        "200 acknowledged registrations",
        || async { (acknowledged.lock().expect("lock").len() >= 200).then_some(()) },
    )
    .await;
    registry.kill().await;
    // The writes still in flight fail now (connection refused or reset).
    writer.await.expect("writer task");
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() < REGISTRATIONS * 4,
        "the kill came before the stream ended"
    );

    let restarted = RegistryProcess::start(&database_url, &[]).await;
    let mut found: BTreeMap<String, registry_api::Instance> = BTreeMap::new();
    for s in 0..SERVICES {
        let service = format!("svc-{s}");
        let listed = restarted
            .api
            .service(&service, None)
            .await
            .expect("service");
        for instance in listed.instances {
            found.insert(instance.id.clone(), instance);
        }
    }
    for n in &acknowledged {
        let (service, id, _) = registration(*n);
        assert!(
            found.contains_key(&id),
            "{service}/{id} was acknowledged before the kill but is gone ({} of {} acknowledged survived)",
            acknowledged
                .iter()
                .filter(|n| found.contains_key(&registration(**n).1))
                .count(),
            acknowledged.len()
        );
    }
    for (id, instance) in &found {
        let n: usize = id.trim_start_matches("inst-").parse().expect("n");
        let (service, _, url) = registration(n);
        assert_eq!(instance.service, service, "{id}");
        assert_eq!(instance.url, url, "{id}");
        assert_eq!(instance.tags, [format!("n{n}")], "{id}");
    }
    restarted.kill().await;
}
on_both_stores!(
    /// A SIGKILL in the middle of a stream of registrations loses none it acknowledged.
    sigkill_mid_stream_loses_no_acknowledged_registration
);
