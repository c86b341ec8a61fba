//! The instance lifecycle (docs/api.md) with real time passing, on both stores: leases that
//! lapse, revive and end in reaping, the history and time travel they leave behind, and
//! active HTTP checks against a small server run by the test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Backend, TestRegistry, eventually};
use chrono::{DateTime, Utc};
use registry_api::{
    CheckSpec, Event, EventKind, Instance, InstanceSpec, Reason, Status, SystemStatus,
};
use registry_client::RegistryApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long a test waits for a state the registry reaches by itself (lease sweep every
/// 250 ms, checks every second).
const DEADLINE: Duration = Duration::from_secs(10);

fn spec_with_ttl(url: &str, ttl_seconds: u32) -> InstanceSpec {
    let mut spec = InstanceSpec::new(url);
    spec.ttl_seconds = Some(ttl_seconds);
    spec
}

/// The instance as the registry shows it now, if it is registered.
async fn current(api: &RegistryApi, service: &str, id: &str) -> Option<Instance> {
    api.service(service, None)
        .await
        .expect("read the service")
        .instances
        .into_iter()
        .find(|i| i.id == id)
}

/// Polls until the instance has `status`.
async fn wait_for_status(api: &RegistryApi, service: &str, id: &str, status: Status) -> Instance {
    eventually(
        DEADLINE,
        &format!("{service}/{id} to be {status:?}"),
        || async {
            current(api, service, id)
                .await
                .filter(|i| i.status == status)
        },
    )
    .await
}

/// The instance in a `/v1/status` answer, if present.
fn find<'a>(status: &'a SystemStatus, service: &str, id: &str) -> Option<&'a Instance> {
    status
        .services
        .iter()
        .filter(|s| s.name == service)
        .flat_map(|s| &s.instances)
        .find(|i| i.id == id)
}

/// `(kind, from, to, reason)` of an event, for comparing whole histories at once.
fn shape(event: &Event) -> (EventKind, Option<Status>, Option<Status>, Reason) {
    (event.kind, event.from, event.to, event.reason)
}

// A 1 s lease lapses to critical, a heartbeat revives it, a second lapse is reaped after
// `deregister_critical_after`; the history holds exactly these transitions, and time
// travel to each of them answers the state right after it.
both_stores!(
    lease_lapses_revives_and_is_reaped_and_time_travel_replays_it,
    |backend: Backend| async move {
        let registry = TestRegistry::start_with(backend, |s| {
            s.deregister_critical_after = Duration::from_secs(3);
        })
        .await;
        let api = &registry.api;
        let registered = api
            .register("lease", "l-1", &spec_with_ttl("http://10.0.0.1:8080", 1))
            .await
            .expect("register");
        assert_eq!(registered.instance.status, Status::Passing);

        wait_for_status(api, "lease", "l-1", Status::Critical).await;
        let beat = api.heartbeat("lease", "l-1").await.expect("heartbeat");
        assert_eq!(
            beat.status,
            Status::Passing,
            "a heartbeat revives a lapsed lease"
        );
        assert!(beat.lease_expires_at.is_some());
        assert_eq!(
            current(api, "lease", "l-1").await.map(|i| i.status),
            Some(Status::Passing)
        );

        // No more heartbeats: critical again, then gone.
        wait_for_status(api, "lease", "l-1", Status::Critical).await;
        eventually(DEADLINE, "the critical instance to be reaped", || async {
            current(api, "lease", "l-1").await.is_none().then_some(())
        })
        .await;
        let heartbeat = api
            .heartbeat("lease", "l-1")
            .await
            .expect_err("reaped instances are unknown");
        assert!(heartbeat.is_not_found(), "{heartbeat}");

        let history = api
            .history("lease", Some("l-1"), None, None)
            .await
            .expect("history")
            .events;
        let shapes: Vec<_> = history.iter().map(shape).collect();
        assert_eq!(
            shapes,
            [
                (
                    EventKind::Registered,
                    None,
                    Some(Status::Passing),
                    Reason::Registered
                ),
                (
                    EventKind::Status,
                    Some(Status::Passing),
                    Some(Status::Critical),
                    Reason::LeaseExpired
                ),
                (
                    EventKind::Status,
                    Some(Status::Critical),
                    Some(Status::Passing),
                    Reason::Heartbeat
                ),
                (
                    EventKind::Status,
                    Some(Status::Passing),
                    Some(Status::Critical),
                    Reason::LeaseExpired
                ),
                (
                    EventKind::Removed,
                    Some(Status::Critical),
                    None,
                    Reason::Reaped
                ),
            ]
        );
        let indexes: Vec<u64> = history.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [1, 2, 3, 4, 5]);

        // The timing follows the settings: the lease lapses after its TTL, the reaping
        // comes `deregister_critical_after` after the instance turned critical.
        let lapse = history[1].at - history[0].at;
        assert!(
            lapse >= chrono::Duration::seconds(1) && lapse < chrono::Duration::seconds(5),
            "lapsed after {lapse}"
        );
        let critical_for = history[4].at - history[3].at;
        assert!(
            critical_for >= chrono::Duration::seconds(3)
                && critical_for < chrono::Duration::seconds(8),
            "reaped after {critical_for} critical"
        );
        assert_eq!(history[4].snapshot.status, Status::Critical, "last state");

        // Time travel: just before the first event nothing existed...
        let before = history[0].at - chrono::Duration::milliseconds(1);
        let then = api.status(Some(before)).await.expect("time travel");
        assert_eq!(then.at, before);
        assert_eq!(then.index, 0);
        assert!(find(&then, "lease", "l-1").is_none(), "{then:?}");
        // ...and right after each event the instance was as the event left it.
        for event in &history {
            let then = api.status(Some(event.at)).await.expect("time travel");
            assert_eq!(then.at, event.at);
            assert_eq!(then.index, event.index, "the index of that moment");
            match event.to {
                Some(status) => {
                    let instance = find(&then, "lease", "l-1")
                        .unwrap_or_else(|| panic!("present after #{}: {then:?}", event.index));
                    assert_eq!(instance.status, status, "after #{}", event.index);
                    assert_eq!(instance, &event.snapshot);
                }
                None => assert!(
                    then.services.is_empty(),
                    "nothing left after the reaping: {then:?}"
                ),
            }
        }
        registry.stop().await;
    }
);

// Maintenance does not hide a dead instance: a lapsed lease makes it critical, and the
// heartbeat that revives it brings maintenance back, not passing.
both_stores!(
    a_lapsed_lease_is_critical_even_in_maintenance,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        api.register("drain", "d-1", &spec_with_ttl("http://10.0.0.1:8080", 1))
            .await
            .expect("register");
        let drained = api
            .set_status("drain", "d-1", Status::Maintenance)
            .await
            .expect("maintenance");
        assert_eq!(drained.status, Status::Maintenance);
        wait_for_status(api, "drain", "d-1", Status::Critical).await;
        let beat = api.heartbeat("drain", "d-1").await.expect("heartbeat");
        assert_eq!(beat.status, Status::Maintenance);
        let history = api
            .history("drain", None, None, None)
            .await
            .expect("history")
            .events;
        let reasons: Vec<Reason> = history.iter().map(|e| e.reason).collect();
        assert_eq!(
            reasons,
            [
                Reason::Registered,
                Reason::MaintenanceSet,
                Reason::LeaseExpired,
                Reason::Heartbeat
            ]
        );
        assert_eq!(
            (history[2].from, history[2].to),
            (Some(Status::Maintenance), Some(Status::Critical))
        );
        assert_eq!(
            (history[3].from, history[3].to),
            (Some(Status::Critical), Some(Status::Maintenance))
        );
        registry.stop().await;
    }
);

/// One request the check target answered.
#[derive(Debug, Clone)]
struct Probe {
    at: DateTime<Utc>,
    path: String,
    answered: u16,
}

/// A tiny HTTP server standing in for an instance: answers every request with the status
/// code currently set, and records what it was asked and what it answered.
struct CheckTarget {
    addr: SocketAddr,
    answer: Arc<AtomicU16>,
    probes: Arc<Mutex<Vec<Probe>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CheckTarget {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let answer = Arc::new(AtomicU16::new(200));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let (code, seen) = (answer.clone(), probes.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (code, seen) = (code.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let path = String::from_utf8_lossy(&request)
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let answered = code.load(Ordering::SeqCst);
                    seen.lock().expect("probes").push(Probe {
                        at: Utc::now(),
                        path,
                        answered,
                    });
                    let response = format!(
                        "HTTP/1.1 {answered} Test\r\ncontent-type: text/plain\r\n\
                         content-length: 2\r\nconnection: close\r\n\r\nok"
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            addr,
            answer,
            probes,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn answer_with(&self, code: u16) {
        self.answer.store(code, Ordering::SeqCst);
    }

    /// The codes answered up to `until`, oldest first. The registry keeps times to the
    /// millisecond, so an answer within the millisecond of `until` counts as before it.
    fn answered_until(&self, until: DateTime<Utc>) -> Vec<u16> {
        let until = until + chrono::Duration::milliseconds(1);
        self.probes
            .lock()
            .expect("probes")
            .iter()
            .filter(|p| p.at <= until)
            .map(|p| p.answered)
            .collect()
    }

    fn paths(&self) -> Vec<String> {
        self.probes
            .lock()
            .expect("probes")
            .iter()
            .map(|p| p.path.clone())
            .collect()
    }
}

impl Drop for CheckTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The latest event of an instance.
async fn last_event(api: &RegistryApi, service: &str, id: &str) -> Event {
    api.history(service, Some(id), None, None)
        .await
        .expect("history")
        .events
        .pop()
        .expect("an event")
}

// An active check (`ttl_seconds: 0`, so only the check decides) turns critical after two
// consecutive failures (check_failed), passing again after one success (check_passed),
// and warning on HTTP 429 (check_throttled); it calls the check path on the instance's
// own host.
both_stores!(
    active_check_fails_twice_then_passes_and_warns_on_429,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        let target = CheckTarget::start().await;
        let mut spec = spec_with_ttl(&format!("{}/app", target.url()), 0);
        spec.check = Some(CheckSpec {
            http: Some("/health".into()),
            tcp: None,
            interval_seconds: Some(1),
            timeout_seconds: None,
            expect_json: None,
        });
        let registered = api
            .register("checked", "c-1", &spec)
            .await
            .expect("register");
        let check = registered.instance.check.expect("the check");
        assert_eq!((check.interval_seconds, check.timeout_seconds), (1, 1));

        eventually(DEADLINE, "a first check", || async {
            (!target.paths().is_empty()).then_some(())
        })
        .await;
        assert_eq!(
            current(api, "checked", "c-1").await.map(|i| i.status),
            Some(Status::Passing)
        );

        // Failing: critical, but only after two failures in a row.
        target.answer_with(500);
        let critical = wait_for_status(api, "checked", "c-1", Status::Critical).await;
        assert_eq!(
            critical.last_check.map(|c| (c.status, c.detail)),
            Some((Status::Critical, "HTTP 500".to_owned()))
        );
        let failed = last_event(api, "checked", "c-1").await;
        assert_eq!(
            shape(&failed),
            (
                EventKind::Status,
                Some(Status::Passing),
                Some(Status::Critical),
                Reason::CheckFailed
            )
        );
        let answered = target.answered_until(failed.at);
        let failures_in_a_row = answered.iter().rev().take_while(|c| **c == 500).count();
        assert!(
            failures_in_a_row >= 2,
            "critical after two failures in a row, answered {answered:?}"
        );
        assert!(
            answered.iter().rev().nth(2).is_some(),
            "it passed before failing: {answered:?}"
        );

        // One success is enough to pass again.
        target.answer_with(200);
        wait_for_status(api, "checked", "c-1", Status::Passing).await;
        let passed = last_event(api, "checked", "c-1").await;
        assert_eq!(
            shape(&passed),
            (
                EventKind::Status,
                Some(Status::Critical),
                Some(Status::Passing),
                Reason::CheckPassed
            )
        );
        let answered = target.answered_until(passed.at);
        assert_eq!(
            answered.iter().rev().take(2).collect::<Vec<_>>(),
            [&200, &500],
            "one success after the failures: {answered:?}"
        );

        // Throttled: warning at once.
        target.answer_with(429);
        wait_for_status(api, "checked", "c-1", Status::Warning).await;
        let throttled = last_event(api, "checked", "c-1").await;
        assert_eq!(
            shape(&throttled),
            (
                EventKind::Status,
                Some(Status::Passing),
                Some(Status::Warning),
                Reason::CheckThrottled
            )
        );
        let answered = target.answered_until(throttled.at);
        assert_eq!(answered.last(), Some(&429), "{answered:?}");

        let paths = target.paths();
        assert!(
            paths.iter().all(|p| p == "/health"),
            "the check path replaces the instance's path: {paths:?}"
        );
        let reasons: Vec<Reason> = api
            .history("checked", None, None, None)
            .await
            .expect("history")
            .events
            .iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(
            reasons,
            [
                Reason::Registered,
                Reason::CheckFailed,
                Reason::CheckPassed,
                Reason::CheckThrottled
            ],
            "a single failure or a repeated verdict appends nothing"
        );
        registry.stop().await;
    }
);

// The instance object carries `last_check`, the outcome of the latest check: a read shows
// it as soon as a check ran, also when the check changed no status (the first success
// of a passing instance, a single failure).
both_stores!(
    the_latest_check_result_shows_on_the_instance,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        let target = CheckTarget::start().await;
        let mut spec = spec_with_ttl(&target.url(), 0);
        spec.check = Some(CheckSpec {
            http: Some("/health".into()),
            tcp: None,
            interval_seconds: Some(1),
            timeout_seconds: None,
            expect_json: None,
        });
        api.register("checked", "c-1", &spec)
            .await
            .expect("register");
        eventually(DEADLINE, "a first check", || async {
            (!target.paths().is_empty()).then_some(())
        })
        .await;
        let shown = eventually(
            Duration::from_secs(3),
            "the check result on the instance",
            || async {
                current(api, "checked", "c-1")
                    .await
                    .and_then(|i| i.last_check)
            },
        )
        .await;
        assert_eq!(
            (shown.status, shown.detail.as_str()),
            (Status::Passing, "HTTP 200")
        );

        // One failure: the result shows, the instance is still passing.
        target.answer_with(500);
        let seen = eventually(DEADLINE, "the first failure on the instance", || async {
            current(api, "checked", "c-1").await.filter(|i| {
                i.last_check
                    .as_ref()
                    .is_some_and(|c| c.status == Status::Critical)
            })
        })
        .await;
        // Counted after the read: if only one failure was answered by now, the read saw
        // the instance after exactly one (a slow poll may have seen the second too).
        let failures = target
            .answered_until(Utc::now())
            .iter()
            .filter(|c| **c == 500)
            .count();
        if failures == 1 {
            assert_eq!(seen.status, Status::Passing, "one failure is not enough");
        }
        registry.stop().await;
    }
);

// A TCP check passes while a connection opens and turns critical once the port is closed;
// an instance may start critical (`initial_status`) and be reaped after its own
// `deregister_critical_after`.
both_stores!(
    a_tcp_check_an_initial_status_and_an_own_reaping_time,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let accepting = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                drop(connection);
            }
        });
        let mut spec = spec_with_ttl(&format!("http://127.0.0.1:{port}/"), 0);
        spec.initial_status = Some(Status::Critical);
        spec.deregister_critical_after = Some("2s".into());
        spec.check = Some(CheckSpec {
            http: None,
            tcp: Some(format!("127.0.0.1:{port}")),
            interval_seconds: Some(1),
            timeout_seconds: None,
            expect_json: None,
        });
        let registered = api.register("tcp", "t-1", &spec).await.expect("register");
        assert_eq!(
            registered.instance.status,
            Status::Critical,
            "starts critical"
        );
        assert_eq!(
            registered.instance.deregister_critical_after.as_deref(),
            Some("2s")
        );
        let passing = wait_for_status(api, "tcp", "t-1", Status::Passing).await;
        assert_eq!(
            passing.last_check.map(|c| c.detail),
            Some("TCP connect succeeded".to_owned())
        );

        accepting.abort();
        let _ = accepting.await;
        wait_for_status(api, "tcp", "t-1", Status::Critical).await;
        // Critical for its own 2 s (the registry's default is 10 minutes): removed.
        eventually(
            DEADLINE,
            "the instance reaped after its own time",
            || async { current(api, "tcp", "t-1").await.is_none().then_some(()) },
        )
        .await;
    }
);
