//! Every registry replica down for 60 s: the registry must not be a single point of
//! failure for calls that already know where to go.
//!
//! Two replicas on one Postgres, the demo services `sum` and two `concat` (real binaries,
//! registered with both replica URLs) and a caller built on the client library as the demo
//! client is. Both replicas are SIGKILLed; for 60 s the caller calls `sum` (which calls
//! `concat`) and every call must answer in full, from the discovery caches (fail static).
//! The replicas then come back on their ports, and every instance's heartbeat must reach
//! them within one heartbeat interval (the handles retry no slower than that), with no
//! instance lapsed.
//!
//! Postgres only (replicas need a shared database). The outage lasts its full length on
//! purpose, and calls are paced; readiness is always polled with a deadline.

use std::time::Duration;

use crate::support::{Backend, DemoService, RegistryProcess, eventually};
use registry_api::{Instance, Status};
use registry_client::RegistryApi;
use registry_client::caller::{CallerOptions, ServiceClient};
use registry_client::discovery::Discovery;
use tokio::time::Instant;

/// How long every replica stays down.
const OUTAGE: Duration = Duration::from_secs(60);
/// The demo services' lease: a heartbeat every TTL / 3 = 2 s.
const TTL_SECONDS: u64 = 6;
/// Room for the request itself and a loaded machine on top of one heartbeat interval.
const SLACK: Duration = Duration::from_secs(1);
/// How long a test waits for a state the system reaches by itself.
const DEADLINE: Duration = Duration::from_secs(30);
/// One call every 250 ms during the outage.
const CALL_EVERY: Duration = Duration::from_millis(250);

/// `sum(10, 15)` answered in full: the result, and concat's sentence (not the partial
/// answer `sum` gives when it cannot reach concat).
async fn complete_sum(client: &ServiceClient) -> Result<(), String> {
    let answer: serde_json::Value = client
        .get_json("sum", "/sum?x=10&y=15")
        .await
        .map_err(|error| error.to_string())?;
    if answer["result"] == 25 && answer["string"].as_str().is_some_and(|s| s.ends_with("25")) {
        Ok(())
    } else {
        Err(format!("partial answer: {answer}"))
    }
}

/// Every instance of sum and concat as each replica lists it.
async fn instances(replicas: &[&RegistryProcess]) -> Option<Vec<Instance>> {
    let mut all = Vec::new();
    for replica in replicas {
        for service in ["sum", "concat"] {
            all.extend(replica.api.service(service, None).await.ok()?.instances);
        }
    }
    Some(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_while_every_replica_is_down_and_instances_return_within_a_heartbeat() {
    let database = Backend::Postgres.fresh_url().await;
    let a = RegistryProcess::start(&database, &[]).await;
    let b = RegistryProcess::start(&database, &[]).await;
    let (addr_a, addr_b) = (a.addr.to_string(), b.addr.to_string());
    let registry_url = format!("{},{}", a.base_url, b.base_url);
    let ttl = TTL_SECONDS.to_string();
    let env = [("SERVICE_TTL_SECONDS", ttl.as_str())];
    let _concat_1 = DemoService::start(&registry_url, "concat", "concat-1", &env, DEADLINE).await;
    let _concat_2 = DemoService::start(&registry_url, "concat", "concat-2", &env, DEADLINE).await;
    let _sum = DemoService::start(&registry_url, "sum", "sum-1", &env, DEADLINE).await;
    eventually(DEADLINE, "sum and both concat passing", || async {
        let all = instances(&[&a]).await?;
        (all.len() == 3 && all.iter().all(|i| i.status == Status::Passing)).then_some(())
    })
    .await;
    let api = RegistryApi::new(&registry_url).expect("api");
    let client = ServiceClient::new(Discovery::new(api), CallerOptions::default());
    eventually(DEADLINE, "a complete answer of sum", || async {
        complete_sum(&client).await.ok()
    })
    .await;

    a.kill().await;
    b.kill().await;
    let down = Instant::now();
    let (mut calls, mut failures) = (0_u32, Vec::new());
    while down.elapsed() < OUTAGE {
        calls += 1;
        if let Err(error) = complete_sum(&client).await {
            failures.push(format!("{:.1?} into the outage: {error}", down.elapsed()));
        }
        tokio::time::sleep(CALL_EVERY).await;
    }
    println!(
        "{calls} calls while every replica was down, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "calls failed while the registry was down ({} of {calls}):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    assert!(calls >= 100, "only {calls} calls in {OUTAGE:?}");

    let back_at = chrono::Utc::now();
    let a = RegistryProcess::start(&database, &[("REGISTRY_ADDR", addr_a.as_str())]).await;
    let b = RegistryProcess::start(&database, &[("REGISTRY_ADDR", addr_b.as_str())]).await;
    let back = Instant::now();
    // A heartbeat lands on one replica; the newest one either of them knows counts.
    let renewed = |all: &[Instance], id: &str| {
        all.iter()
            .filter(|i| i.id == id)
            .any(|i| i.last_heartbeat_at >= back_at)
    };
    eventually(DEADLINE, "every instance heartbeating again", || async {
        let all = instances(&[&a, &b]).await?;
        ["sum-1", "concat-1", "concat-2"]
            .iter()
            .all(|id| renewed(&all, id))
            .then_some(())
    })
    .await;
    let returned_in = back.elapsed();
    let interval = Duration::from_secs(TTL_SECONDS) / 3;
    println!("every instance heartbeating again {returned_in:?} after the replicas returned");
    assert!(
        returned_in <= interval + SLACK,
        "the instances took {returned_in:?} to reach the registry again (one heartbeat: {interval:?})"
    );
    let all = instances(&[&a, &b]).await.expect("lookups");
    assert!(
        all.iter().all(|i| i.status == Status::Passing),
        "every instance passing after the outage: {all:?}"
    );
    complete_sum(&client)
        .await
        .expect("calls go on after the outage");
    a.kill().await;
    b.kill().await;
}
