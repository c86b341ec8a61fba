//! SIGTERM stops the registry within `REGISTRY_SHUTDOWN_TIMEOUT` whatever state it and
//! its database are in: idle, under load, with its database gone, and with a database
//! that holds every commit (a synchronous standby that went away), and under write load in
//! each state of a Postgres failover. Kubernetes would otherwise kill the pod at the end of
//! its grace period.

use std::time::{Duration, Instant};

use crate::support::{
    self, Backend, PrivatePostgres, RegistryProcess, TcpProxy, postgres_addr, through,
};
use registry_api::InstanceSpec;
use reqwest::StatusCode;

/// The bound the tests give the stop.
const SHUTDOWN_TIMEOUT: &str = "3s";
/// How long after SIGTERM the process must be gone: the bound plus process exit.
const STOPPED_WITHIN: Duration = Duration::from_secs(6);

fn spec(port: u16) -> InstanceSpec {
    let mut spec = InstanceSpec::new(format!("http://10.0.0.1:{port}"));
    spec.ttl_seconds = Some(30);
    spec
}

async fn start(database_url: &str) -> RegistryProcess {
    RegistryProcess::start(
        database_url,
        &[
            ("REGISTRY_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT),
            ("REGISTRY_REQUEST_TIMEOUT", "2s"),
        ],
    )
    .await
}

/// Sends SIGTERM and answers the exit code and how long the stop took.
async fn stop(mut registry: RegistryProcess) -> (Option<i32>, Duration) {
    let started = Instant::now();
    support::sigterm(&registry.child).await;
    let status = tokio::time::timeout(Duration::from_secs(60), registry.child.wait())
        .await
        .expect("the registry stops within 60 s of SIGTERM")
        .expect("wait for the registry");
    (status.code(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_registry_stops_cleanly() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let registry = start(&backend.fresh_url().await).await;
        registry
            .api
            .register("sum", "sum-1", &spec(4040))
            .await
            .expect("register");
        let (code, took) = stop(registry).await;
        assert_eq!(code, Some(0), "{backend:?}");
        assert!(took < STOPPED_WITHIN, "{backend:?}: stopped in {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_under_load_stops_cleanly() {
    let registry = start(&Backend::Postgres.fresh_url().await).await;
    let api = registry.api.clone();
    for i in 0..20 {
        api.register("sum", &format!("sum-{i}"), &spec(4040 + i))
            .await
            .expect("register");
    }
    let index = api.service("sum", None).await.expect("read").index;
    // Writers and heartbeats as fast as they go, and blocking queries held open.
    let load: Vec<_> = (0..8u16)
        .map(|worker| {
            let api = api.clone();
            tokio::spawn(async move {
                for round in 0u16.. {
                    let id = format!("sum-{}", (worker * 7 + round) % 20);
                    let done = if round % 2 == 0 {
                        api.heartbeat("sum", &id).await.map(|_| ())
                    } else {
                        api.register("sum", &id, &spec(5000 + round % 100))
                            .await
                            .map(|_| ())
                    };
                    if done.is_err() {
                        return;
                    }
                }
            })
        })
        .chain((0..4).map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                let _ = api
                    .watch_service("mult", None, index, Duration::from_secs(120))
                    .await;
            })
        }))
        .collect();
    let (code, took) = stop(registry).await;
    assert_eq!(code, Some(0));
    assert!(took < STOPPED_WITHIN, "stopped in {took:?}");
    for task in load {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("every client call ended")
            .expect("joined");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_whose_database_is_gone_stops_within_its_bound() {
    let url = Backend::Postgres.fresh_url().await;
    let proxy = TcpProxy::start().await;
    proxy.set_target(postgres_addr(&url).await);
    let registry = start(&through(&url, &proxy)).await;
    registry
        .api
        .register("sum", "sum-1", &spec(4040))
        .await
        .expect("register");
    // Queued for the next batch when the database goes.
    registry
        .api
        .heartbeat("sum", "sum-1")
        .await
        .expect("heartbeat");
    proxy.cut().await;
    let (code, took) = stop(registry).await;
    assert!(
        matches!(code, Some(0 | 1)),
        "an exit, not a signal: {code:?}"
    );
    assert!(took < STOPPED_WITHIN, "stopped in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_whose_database_holds_every_commit_stops_within_its_bound() {
    let postgres = PrivatePostgres::start().await;
    let registry = start(&postgres.url()).await;
    let api = registry.api.clone();
    api.register("sum", "sum-1", &spec(4040))
        .await
        .expect("register");
    // Every commit now waits for a synchronous standby that does not exist.
    postgres
        .execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
        .await;
    postgres.execute("SELECT pg_reload_conf()").await;

    let write = reqwest::Client::new()
        .put(format!(
            "{}/v1/services/sum/instances/sum-2",
            registry.base_url
        ))
        .json(&spec(4041))
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        write.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a write held by the database answers 503 at the request timeout"
    );
    let lookup = api
        .service("sum", None)
        .await
        .expect("lookups still answer");
    assert_eq!(lookup.instances.len(), 1);
    // A queued heartbeat that cannot be written before the bound.
    api.heartbeat("sum", "sum-1").await.expect("heartbeat");
    // Once its flush has failed, heartbeats are refused: 503, nothing worse.
    let heartbeat_url = format!(
        "{}/v1/services/sum/instances/sum-1/heartbeat",
        registry.base_url
    );
    support::eventually(
        Duration::from_secs(30),
        "a heartbeat answered 503",
        || async {
            let answer = reqwest::Client::new()
                .put(&heartbeat_url)
                .send()
                .await
                .expect("an answer");
            let status = answer.status();
            assert!(
                status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                "a heartbeat answered {status}"
            );
            (status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;

    let started = Instant::now();
    support::sigterm(&registry.child).await;
    let mut registry = registry;
    let status = tokio::time::timeout(Duration::from_secs(60), registry.child.wait())
        .await
        .expect("the registry stops within 60 s of SIGTERM")
        .expect("wait for the registry");
    let took = started.elapsed();
    assert!(took < STOPPED_WITHIN, "stopped in {took:?}");
    assert_eq!(
        status.code(),
        Some(1),
        "unfinished work at the bound is a failure"
    );
    let reported = registry.log_lines_with("stopped at the shutdown timeout");
    assert!(
        reported
            .iter()
            .any(|line| line.contains("unwritten_heartbeats")),
        "the log says what was not written: {reported:?}"
    );
}

/// Writes as fast as they go through `base` until the registry is gone.
fn write_load(base: &str) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4u16)
        .map(|writer| {
            let (http, base) = (reqwest::Client::new(), base.to_owned());
            tokio::spawn(async move {
                for n in 0u32.. {
                    let sent = http
                        .put(format!("{base}/v1/services/load/instances/w{writer}-{n}"))
                        .json(&spec(4040 + writer))
                        .send()
                        .await;
                    if sent.is_err() {
                        return;
                    }
                }
            })
        })
        .collect()
}

/// SIGTERM while `load` pours in: the process must be gone within its bound.
async fn stops_under(
    load: Vec<tokio::task::JoinHandle<()>>,
    registry: RegistryProcess,
    state: &str,
) {
    let (code, took) = stop(registry).await;
    assert!(
        matches!(code, Some(0 | 1)),
        "{state}: an exit, not a signal: {code:?}"
    );
    assert!(took < STOPPED_WITHIN, "{state}: stopped in {took:?}");
    for writer in load {
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    }
}

/// Every state a database passes through in a failover, each a few times: it has just
/// died, it is read-only (a demoted primary), and it is failing over (the primary crashed,
/// the standby not yet promoted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_under_write_load_stops_within_its_bound_whatever_its_database_does() {
    let url = Backend::Postgres.fresh_url().await;
    for round in 0..5 {
        let proxy = TcpProxy::start().await;
        proxy.set_target(postgres_addr(&url).await);
        let registry = start(&through(&url, &proxy)).await;
        let load = write_load(&registry.base_url);
        proxy.cut().await;
        stops_under(
            load,
            registry,
            &format!("database just died, round {round}"),
        )
        .await;
    }

    let postgres = PrivatePostgres::start().await;
    for round in 0..2 {
        let registry = start(&postgres.url()).await;
        let load = write_load(&registry.base_url);
        postgres
            .execute("ALTER SYSTEM SET default_transaction_read_only = on")
            .await;
        postgres.execute("SELECT pg_reload_conf()").await;
        stops_under(
            load,
            registry,
            &format!("read-only database, round {round}"),
        )
        .await;
        postgres
            .execute("ALTER SYSTEM SET default_transaction_read_only = off")
            .await;
        postgres.execute("SELECT pg_reload_conf()").await;
    }

    for round in 0..2 {
        let primary = PrivatePostgres::start().await;
        let standby = PrivatePostgres::standby_of(&primary, "standby").await;
        let registry = start(&format!(
            "postgres://postgres@{},{}/postgres",
            primary.host(),
            standby.host()
        ))
        .await;
        let load = write_load(&registry.base_url);
        primary.crash().await;
        stops_under(load, registry, &format!("failing over, round {round}")).await;
    }
}
