//! No mass expiry after our own outage: leases that ran out while the registry was down
//! get one full TTL from the moment it is back (docs/operations.md, The outage grace).

use std::time::Duration;

use crate::support::{Backend, TestRegistry, eventually};
use registry_api::{InstanceSpec, Status};
use registry_server::clock::Clock;

both_stores!(
    leases_get_a_full_ttl_after_a_registry_outage,
    |backend: Backend| async move {
        // Both registries run on one clock, which the test moves past the lease while
        // neither runs.
        let clock = Clock::default();
        let registry = TestRegistry::start_with(backend, |s| s.clock = clock.clone()).await;
        let mut spec = InstanceSpec::new("http://10.0.0.1:4040");
        spec.ttl_seconds = Some(3);
        let registered = registry
            .api
            .register("sum", "sum-1", &spec)
            .await
            .expect("register");
        let database_url = registry.database_url.clone();
        registry.stop().await;

        // The registry is down for longer than the lease.
        clock.advance(Duration::from_secs(4));
        let lease_ran_out = registered.instance.lease_expires_at.expect("a lease");
        assert!(lease_ran_out < clock.now(), "the lease ran out meanwhile");

        let restarted = TestRegistry::start_on(database_url, |s| s.clock = clock.clone()).await;
        let came_back = tokio::time::Instant::now();
        // Give the expiry sweep (every 250 ms) several rounds: the lease is over, yet the
        // instance must stay passing because the registry itself was away. A fixed wait on
        // purpose: no polling can show that nothing happens.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let during_grace = restarted.api.service("sum", None).await.expect("lookup");
        assert_eq!(during_grace.instances[0].status, Status::Passing);
        assert!(
            came_back.elapsed() < Duration::from_secs(3),
            "the check ran within the grace"
        );

        // A heartbeat within the grace keeps it alive for good.
        restarted
            .api
            .heartbeat("sum", "sum-1")
            .await
            .expect("heartbeat");
        // Without further heartbeats it expires one TTL later, as usual.
        eventually(
            Duration::from_secs(10),
            "the lease to lapse after the grace",
            || async {
                let now = restarted.api.service("sum", None).await.ok()?;
                (now.instances.first()?.status == Status::Critical).then_some(())
            },
        )
        .await;
        let history = restarted
            .api
            .history("sum", None, None, None)
            .await
            .expect("history");
        let reasons: Vec<_> = history.events.iter().map(|e| e.reason).collect();
        assert_eq!(
            reasons,
            vec![
                registry_api::Reason::Registered,
                registry_api::Reason::LeaseExpired
            ],
            "exactly one expiry, after the grace, not during the outage"
        );
        restarted.stop().await;
    }
);
