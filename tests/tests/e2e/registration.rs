//! The client library's registration handle against a real registry: heartbeats keep a
//! lease alive, a registry restarted on an empty database gets the instance back within one
//! heartbeat interval, an unreachable registry is retried until it answers, shutdown drains
//! through maintenance before deregistering, paused heartbeats let the lease lapse, and a
//! dead first registry URL fails over to the next.
//!
//! Restarting "the same registry" on a new database cannot keep its port (every test
//! registry listens on port 0), so the handle talks to the test's TCP proxy
//! ([`crate::support::TcpProxy`]), which is switched from one registry to another the way a
//! Service address outlives the pods behind it.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{Backend, TcpProxy, TestRegistry, eventually};
use registry_api::{EventKind, Instance, InstanceSpec, Reason, Status};
use registry_client::{Registration, RegistrationOptions, RegistrationState, RegistryApi};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// How long a test waits for a state the handle or the registry reaches by itself.
const DEADLINE: Duration = Duration::from_secs(10);

const SERVICE: &str = "pay";
const ID: &str = "pay-1";

fn spec(ttl_seconds: u32) -> InstanceSpec {
    let mut spec = InstanceSpec::new("http://10.0.0.9:8080");
    spec.ttl_seconds = Some(ttl_seconds);
    spec
}

/// Quick retries, so that tests of outages do not wait for the 5 s default ceiling.
fn quick() -> RegistrationOptions {
    RegistrationOptions {
        drain: Duration::from_millis(500),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
    }
}

/// The instance as `api`'s registry shows it now, if registered there.
async fn current(api: &RegistryApi) -> Option<Instance> {
    api.service(SERVICE, None)
        .await
        .ok()?
        .instances
        .into_iter()
        .find(|i| i.id == ID)
}

async fn wait_for_status(api: &RegistryApi, status: Status) -> Instance {
    eventually(
        DEADLINE,
        &format!("{SERVICE}/{ID} to be {status:?}"),
        || async { current(api).await.filter(|i| i.status == status) },
    )
    .await
}

/// A port on which nothing listens: bound, then released.
async fn closed_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// A client of the registry behind `proxy`.
fn via(proxy: &TcpProxy) -> RegistryApi {
    RegistryApi::new(&proxy.url()).expect("proxy url")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_short_lease_passing() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let registration = Registration::start(
        registry.api.clone(),
        SERVICE,
        ID,
        spec(2),
        RegistrationOptions::default(),
    );
    assert!(registration.wait_registered(DEADLINE).await);
    let first = wait_for_status(&registry.api, Status::Passing).await;

    // Watch for 2.5 leases: a missed heartbeat would show as critical within 2 s + sweep.
    let until = Instant::now() + Duration::from_secs(5);
    let mut latest = first.last_heartbeat_at;
    while Instant::now() < until {
        let seen = current(&registry.api).await.expect("still registered");
        assert_eq!(seen.status, Status::Passing, "{seen:?}");
        assert!(seen.last_heartbeat_at >= latest);
        latest = seen.last_heartbeat_at;
        assert!(matches!(
            registration.state(),
            RegistrationState::Registered {
                lease_expires_at: Some(_)
            }
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        latest - first.last_heartbeat_at >= chrono::Duration::seconds(3),
        "heartbeats every ~667 ms should have moved last_heartbeat_at by 4 s or so: {} -> {latest}",
        first.last_heartbeat_at
    );
    let history = registry
        .api
        .history(SERVICE, Some(ID), None, None)
        .await
        .expect("history");
    let reasons: Vec<Reason> = history.events.iter().map(|e| e.reason).collect();
    assert_eq!(reasons, [Reason::Registered], "the lease never lapsed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_restarted_on_an_empty_database_gets_the_instance_back_within_one_interval() {
    let ttl = 2;
    let a = TestRegistry::start(Backend::Sqlite).await;
    let proxy = TcpProxy::start().await;
    proxy.set_target(a.addr);
    let registration = Registration::start(
        via(&proxy),
        SERVICE,
        ID,
        spec(ttl),
        RegistrationOptions::default(),
    );
    assert!(registration.wait_registered(DEADLINE).await);
    wait_for_status(&a.api, Status::Passing).await;

    // The replacement starts on an empty database before the switch, so that the outage
    // is the switch itself and not the start-up time of a registry.
    let b = TestRegistry::start(Backend::Sqlite).await;
    assert!(current(&b.api).await.is_none());
    a.stop().await;
    proxy.set_target(b.addr);
    let switched = Instant::now();

    let interval = Duration::from_secs(ttl.into()) / 3;
    let back = eventually(
        interval + Duration::from_secs(2),
        "the instance registered again on the new registry",
        || async { current(&b.api).await },
    )
    .await;
    assert_eq!(back.status, Status::Passing);
    assert_eq!(back.ttl_seconds, ttl);
    assert_eq!(back.url, "http://10.0.0.9:8080");
    println!("registered again {:?} after the switch", switched.elapsed());
    assert!(registration.wait_registered(DEADLINE).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_retried_until_it_answers() {
    // No target yet: every connection is closed at once, as by a registry not there.
    let proxy = TcpProxy::start().await;
    let registration = Registration::start(via(&proxy), SERVICE, ID, spec(10), quick());
    let mut states = registration.subscribe();

    let mut attempts = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while attempts.len() < 3 {
            states.changed().await.expect("handle alive");
            match &*states.borrow_and_update() {
                RegistrationState::Retrying { attempt, error } => {
                    assert!(!error.is_empty());
                    attempts.push(*attempt);
                }
                other => panic!("nothing listens, yet the state is {other:?}"),
            }
        }
    })
    .await
    .expect("three failed attempts within the deadline");
    assert!(
        attempts.windows(2).all(|w| w[1] == w[0] + 1),
        "{attempts:?}"
    );

    let registry = TestRegistry::start(Backend::Sqlite).await;
    proxy.set_target(registry.addr);
    assert!(
        registration.wait_registered(DEADLINE).await,
        "{:?}",
        registration.state()
    );
    wait_for_status(&registry.api, Status::Passing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_maintenance_then_deregisters() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let drain = Duration::from_secs(1);
    let options = RegistrationOptions {
        drain,
        ..RegistrationOptions::default()
    };
    let registration = Registration::start(registry.api.clone(), SERVICE, ID, spec(10), options);
    assert!(registration.wait_registered(DEADLINE).await);
    let mut states = registration.subscribe();

    let started = Instant::now();
    let leaving = tokio::spawn(registration.shutdown());
    wait_for_status(&registry.api, Status::Maintenance).await;
    tokio::time::timeout(DEADLINE, leaving)
        .await
        .expect("shutdown is bounded")
        .expect("shutdown task");
    assert!(started.elapsed() >= drain, "the drain was waited");
    assert_eq!(*states.borrow_and_update(), RegistrationState::Stopped);
    assert!(current(&registry.api).await.is_none(), "gone");

    let history = registry
        .api
        .history(SERVICE, Some(ID), None, None)
        .await
        .expect("history");
    let shape: Vec<(EventKind, Reason)> =
        history.events.iter().map(|e| (e.kind, e.reason)).collect();
    assert_eq!(
        shape,
        [
            (EventKind::Registered, Reason::Registered),
            (EventKind::Status, Reason::MaintenanceSet),
            (EventKind::Removed, Reason::Deregistered),
        ]
    );
    let gap = history.events[2].at - history.events[1].at;
    assert!(
        gap >= chrono::Duration::milliseconds(900),
        "maintenance lasted the drain: {gap}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_heartbeats_let_the_lease_lapse_and_resuming_revives_it() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let registration = Registration::start(
        registry.api.clone(),
        SERVICE,
        ID,
        spec(2),
        RegistrationOptions::default(),
    );
    assert!(registration.wait_registered(DEADLINE).await);
    wait_for_status(&registry.api, Status::Passing).await;

    registration.pause_heartbeats(true);
    let dead = wait_for_status(&registry.api, Status::Critical).await;
    assert!(dead.lease_expires_at.is_some());

    registration.pause_heartbeats(false);
    wait_for_status(&registry.api, Status::Passing).await;
    let history = registry
        .api
        .history(SERVICE, Some(ID), None, None)
        .await
        .expect("history");
    let reasons: Vec<Reason> = history.events.iter().map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        [Reason::Registered, Reason::LeaseExpired, Reason::Heartbeat]
    );
    registration.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_registry_url_fails_over_to_the_next() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let closed = closed_addr().await;
    let api = RegistryApi::new(&format!("http://{closed}, {}", registry.base_url)).expect("api");
    let registration = Registration::start(
        api.clone(),
        SERVICE,
        ID,
        spec(10),
        RegistrationOptions::default(),
    );
    assert!(registration.wait_registered(DEADLINE).await);
    wait_for_status(&registry.api, Status::Passing).await;
    assert_eq!(
        api.base_url().as_str(),
        format!("{}/", registry.base_url),
        "the registry that answered is preferred by every clone"
    );
    registration.shutdown().await;
    assert!(current(&registry.api).await.is_none());
}
