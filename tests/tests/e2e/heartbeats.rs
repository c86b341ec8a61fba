//! Coalesced heartbeats (docs/architecture.md) seen from outside, on both stores: heartbeats
//! on live leases are answered and shown in reads at once and written in batches, yet
//! unknown instances still get 404, lapsed leases still revive with their event, short
//! leases kept alive never expire, and a graceful stop writes what was still queued.

use std::time::Duration;

use crate::support::{Backend, TestRegistry, eventually};
use futures::future::join_all;
use registry_api::{Instance, InstanceSpec, Reason, Status};
use registry_client::RegistryApi;

/// How long a test waits for a state the registry reaches by itself.
const DEADLINE: Duration = Duration::from_secs(10);

fn spec_with_ttl(ttl_seconds: u32) -> InstanceSpec {
    let mut spec = InstanceSpec::new("http://10.0.0.1:4040");
    spec.ttl_seconds = Some(ttl_seconds);
    spec
}

/// The instances of `service` as reads show them now, by id.
async fn instances(api: &RegistryApi, service: &str) -> Vec<Instance> {
    let mut instances = api
        .service(service, None)
        .await
        .expect("read the service")
        .instances;
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    instances
}

async fn reasons(api: &RegistryApi, service: &str) -> Vec<Reason> {
    api.history(service, None, None, None)
        .await
        .expect("history")
        .events
        .iter()
        .map(|e| e.reason)
        .collect()
}

// Many instances heartbeating together for longer than their lease: every answer and
// every read right after it shows the renewed lease, nothing ever lapses, and no event
// is appended.
both_stores!(
    many_heartbeats_keep_every_lease_passing_and_show_in_reads_at_once,
    |backend: Backend| async move {
        const INSTANCES: usize = 40;
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        let ids: Vec<String> = (0..INSTANCES).map(|i| format!("f-{i:02}")).collect();
        for id in &ids {
            api.register("fleet", id, &spec_with_ttl(2))
                .await
                .expect("register");
        }
        let index = api.service("fleet", None).await.expect("read").index;

        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        let mut before = instances(api, "fleet").await;
        // 3 s of heartbeats: one and a half leases.
        for _ in 0..12 {
            ticker.tick().await;
            let answers = join_all(ids.iter().map(|id| api.heartbeat("fleet", id))).await;
            let after = instances(api, "fleet").await;
            assert_eq!(after.len(), INSTANCES);
            for ((answer, now), was) in answers.into_iter().zip(&after).zip(&before) {
                let answer = answer.expect("heartbeat");
                assert_eq!(answer.status, Status::Passing, "{}", now.id);
                assert_eq!(now.status, Status::Passing, "{}", now.id);
                assert!(
                    now.last_heartbeat_at > was.last_heartbeat_at,
                    "{}: the heartbeat shows in reads at once",
                    now.id
                );
                assert_eq!(now.lease_expires_at, answer.lease_expires_at, "{}", now.id);
            }
            before = after;
        }

        assert_eq!(
            api.service("fleet", None).await.expect("read").index,
            index,
            "heartbeats on live leases append no event"
        );
        assert!(
            reasons(api, "fleet")
                .await
                .iter()
                .all(|r| *r == Reason::Registered),
            "no lease lapsed"
        );
        registry.stop().await;
    }
);

// An unknown instance (never registered, or deregistered) is still 404, so the client
// registers again.
both_stores!(
    a_heartbeat_for_an_unknown_instance_is_still_404,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("sum", "sum-1", &spec_with_ttl(30))
            .await
            .expect("register");
        api.heartbeat("sum", "sum-1").await.expect("heartbeat");

        for (service, id) in [("sum", "nobody"), ("unknown", "sum-1")] {
            let error = api
                .heartbeat(service, id)
                .await
                .expect_err("unknown instance");
            assert!(error.is_not_found(), "{service}/{id}: {error}");
        }
        api.deregister("sum", "sum-1").await.expect("deregister");
        let error = api
            .heartbeat("sum", "sum-1")
            .await
            .expect_err("deregistered");
        assert!(error.is_not_found(), "{error}");
        registry.stop().await;
    }
);

// A heartbeat on a lapsed lease revives it at once, with its `heartbeat` event.
both_stores!(
    a_heartbeat_on_a_lapsed_lease_revives_it_with_its_event,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("lease", "l-1", &spec_with_ttl(1))
            .await
            .expect("register");
        eventually(DEADLINE, "the lease to lapse", || async {
            let now = instances(api, "lease").await;
            (now.first()?.status == Status::Critical).then_some(())
        })
        .await;

        let beat = api.heartbeat("lease", "l-1").await.expect("heartbeat");

        assert_eq!(beat.status, Status::Passing);
        let shown = instances(api, "lease").await;
        assert_eq!(shown[0].status, Status::Passing);
        assert_eq!(shown[0].lease_expires_at, beat.lease_expires_at);
        assert_eq!(
            reasons(api, "lease").await,
            [Reason::Registered, Reason::LeaseExpired, Reason::Heartbeat]
        );
        registry.stop().await;
    }
);

// 1 s leases renewed every 300 ms for 5 s never expire, though their heartbeats are
// written only in batches.
both_stores!(
    short_leases_kept_alive_by_heartbeats_never_expire,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        let ids: Vec<String> = (0..5).map(|i| format!("s-{i}")).collect();
        for id in &ids {
            api.register("short", id, &spec_with_ttl(1))
                .await
                .expect("register");
        }

        let mut ticker = tokio::time::interval(Duration::from_millis(300));
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            ticker.tick().await;
            for answer in join_all(ids.iter().map(|id| api.heartbeat("short", id))).await {
                assert_eq!(answer.expect("heartbeat").status, Status::Passing);
            }
            let shown = instances(api, "short").await;
            assert!(
                shown.iter().all(|i| i.status == Status::Passing),
                "{shown:?}"
            );
        }

        let history = reasons(api, "short").await;
        assert!(
            !history.contains(&Reason::LeaseExpired),
            "no lease expired: {history:?}"
        );
        registry.stop().await;
    }
);

// Heartbeats still queued when the registry stops gracefully are written before it
// exits: after a restart on the same database the last heartbeat is there.
both_stores!(
    a_graceful_stop_writes_the_queued_heartbeats,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("sum", "sum-1", &spec_with_ttl(60))
            .await
            .expect("register");
        let mut last = None;
        for _ in 0..5 {
            last = Some(api.heartbeat("sum", "sum-1").await.expect("heartbeat"));
        }
        let last = last.expect("a heartbeat");
        let shown = instances(api, "sum").await.remove(0);
        assert_eq!(shown.lease_expires_at, last.lease_expires_at);
        let database_url = registry.database_url.clone();
        registry.stop().await;

        let restarted = TestRegistry::start_on(database_url, |_| {}).await;
        let stored = instances(&restarted.api, "sum").await.remove(0);
        assert_eq!(
            stored.last_heartbeat_at, shown.last_heartbeat_at,
            "the last heartbeat was written at shutdown"
        );
        assert_eq!(stored.lease_expires_at, last.lease_expires_at);
        restarted.stop().await;
    }
);
