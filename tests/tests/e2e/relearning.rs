//! The registry SIGKILLed under load and restarted on an EMPTY database (a new SQLite
//! file, a new Postgres database), at the same address: no call through `sum` may fail or
//! come back partial, from the kill until well after the return.
//!
//! `sum` (the real binary) calls two `concat` instances through the client library; the
//! test calls `sum` through the client library too. The empty registry answers with a new
//! epoch and without the instances, which register again at their next heartbeat. Both
//! discovery caches (the test's and sum's) relearn meanwhile: they keep what they knew
//! until each instance registered again or its lease plus a margin passed, instead of
//! following the empty registry at once (which made calls come back with
//! `"string": null`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::support::{Backend, DemoService, RegistryProcess, eventually};
use registry_api::Status;
use registry_client::RegistryApi;
use registry_client::caller::{CallerOptions, ServiceClient};
use registry_client::discovery::Discovery;
use tokio::time::Instant;

/// The demo services' lease: a heartbeat every second.
const TTL_SECONDS: u64 = 3;
/// How long the registry stays down.
const OUTAGE: Duration = Duration::from_secs(4);
/// How long the calls go on after every instance registered again: past the relearning
/// window (TTL + 5 s) of any instance the registry could have forgotten.
const AFTER: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two calls of one caller task.
const CALL_EVERY: Duration = Duration::from_millis(20);

/// `sum(10, 15)` answered in full: the result and concat's sentence.
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

/// Whether the registry lists these instances as passing.
async fn all_registered(api: &RegistryApi) -> Option<()> {
    let mut passing = Vec::new();
    for service in ["sum", "concat"] {
        let answer = api.service(service, None).await.ok()?;
        passing.extend(
            answer
                .instances
                .into_iter()
                .filter(|i| i.status == Status::Passing)
                .map(|i| i.id),
        );
    }
    passing.sort();
    (passing == ["concat-1", "concat-2", "sum-1"]).then_some(())
}

both_stores!(
    every_call_completes_when_the_registry_returns_on_an_empty_database,
    |backend: Backend| async move {
        let database = backend.fresh_url().await;
        let registry = RegistryProcess::start(&database, &[]).await;
        let addr = registry.addr.to_string();
        let registry_url = registry.base_url.clone();
        let epoch_before = registry.api.status(None).await.expect("status").epoch;
        let ttl = TTL_SECONDS.to_string();
        let env = [("SERVICE_TTL_SECONDS", ttl.as_str())];
        let _concat_1 =
            DemoService::start(&registry_url, "concat", "concat-1", &env, DEADLINE).await;
        let _concat_2 =
            DemoService::start(&registry_url, "concat", "concat-2", &env, DEADLINE).await;
        let _sum = DemoService::start(&registry_url, "sum", "sum-1", &env, DEADLINE).await;
        eventually(DEADLINE, "sum and both concat passing", || {
            all_registered(&registry.api)
        })
        .await;
        let api = RegistryApi::new(&registry_url).expect("api");
        let client = ServiceClient::new(Discovery::new(api.clone()), CallerOptions::default());
        eventually(DEADLINE, "a complete answer of sum", || async {
            complete_sum(&client).await.ok()
        })
        .await;

        // Load: two callers without pause between calls but a short one.
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let mut callers = Vec::new();
        for _ in 0..2 {
            let (client, stop, calls) = (client.clone(), stop.clone(), calls.clone());
            callers.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if let Err(error) = complete_sum(&client).await {
                        failures.push(format!("{:.1?}: {error}", started.elapsed()));
                    }
                    tokio::time::sleep(CALL_EVERY).await;
                }
                failures
            }));
        }
        eventually(DEADLINE, "calls under way", || async {
            (calls.load(Ordering::SeqCst) >= 20).then_some(())
        })
        .await;

        registry.kill().await;
        let killed_at = started.elapsed();
        tokio::time::sleep(OUTAGE).await;
        // The same address, an empty database: a new SQLite file or Postgres database.
        let empty = backend.fresh_url().await;
        let registry = RegistryProcess::start(&empty, &[("REGISTRY_ADDR", addr.as_str())]).await;
        let back_at = started.elapsed();
        let epoch_after = registry.api.status(None).await.expect("status").epoch;
        assert_ne!(epoch_before, epoch_after, "a new database has a new epoch");
        eventually(DEADLINE, "every instance registered again", || {
            all_registered(&registry.api)
        })
        .await;
        let registered_at = started.elapsed();
        tokio::time::sleep(AFTER).await;
        stop.store(true, Ordering::SeqCst);
        let mut failures = Vec::new();
        for caller in callers {
            failures.extend(caller.await.expect("caller task"));
        }
        let total = calls.load(Ordering::SeqCst);
        println!(
            "{backend:?}: {total} calls; killed at {killed_at:.1?}, back at {back_at:.1?}, \
             every instance registered again at {registered_at:.1?}, calls until {:.1?}; \
             {} failed",
            started.elapsed(),
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "{} of {total} calls failed or came back partial:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
        assert!(total >= 200, "only {total} calls");
        registry.kill().await;
    }
);
