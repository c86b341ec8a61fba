//! A Postgres primary failover under load: real servers, a primary and a streaming standby
//! (`pg_basebackup`) started by the test on their own ports and folders, and two registry
//! replicas given both hosts in `DATABASE_URL`, libpq's way.
//!
//! With synchronous replication the primary is crashed (immediate shutdown) while writes,
//! heartbeats, lookups, a blocking query and an event stream run through both replicas;
//! the standby is promoted and `synchronous_standby_names` cleared on it, as a failover
//! manager does. The replicas must follow by themselves: writes answer 503 with
//! `Retry-After` during the switch and succeed after it, every acknowledged write is on the
//! new primary, no lookup fails, no lease lapses (3 s leases, a heartbeat a second: the
//! outage grace must cover renewals refused during the switch), and the blocking query and
//! the event stream go on with no gap. With asynchronous replication the same switch may
//! lose acknowledged writes: the test counts them and requires the replicas to follow the
//! new primary's state (lost state, not a mix). A standby listed first is skipped.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use registry_api::{EventKind, InstanceSpec};
use registry_client::StreamItem;
use reqwest::StatusCode;

use crate::support::{PrivatePostgres, RegistryProcess, eventually};

/// The leases kept alive during the switch: a heartbeat every TTL / 3.
const LEASE_TTL_SECONDS: u32 = 3;
const LEASES: usize = 10;
/// How long the failover manager takes to decide, once the replicas answer 503: the whole
/// switch then takes about 3 s, as long as a lease, so renewals refused meanwhile must be
/// covered by the outage grace.
const DECIDING: Duration = Duration::from_secs(2);
/// How long a test waits for a state the system reaches by itself.
const DEADLINE: Duration = Duration::from_secs(30);
/// Load before the crash, and after the switch (longer than a lease, so a lease whose
/// renewals were refused during the switch would have lapsed).
const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(5);

/// A primary and a standby streaming from it.
struct Cluster {
    primary: PrivatePostgres,
    standby: PrivatePostgres,
}

impl Cluster {
    async fn start(synchronous: bool) -> Self {
        let primary = PrivatePostgres::start().await;
        let standby = PrivatePostgres::standby_of(&primary, "standby").await;
        if synchronous {
            primary
                .execute("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
                .await;
            primary.execute("SELECT pg_reload_conf()").await;
        }
        let wanted = if synchronous { "sync" } else { "async" };
        eventually(DEADLINE, "the standby streams from the primary", || async {
            let states = query(
                &primary,
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby' AND state = 'streaming'",
            )
            .await;
            states.iter().any(|s| s == wanted).then_some(())
        })
        .await;
        Self { primary, standby }
    }

    /// `DATABASE_URL` listing `hosts` in that order.
    fn url(hosts: &[&PrivatePostgres]) -> String {
        let list: Vec<String> = hosts.iter().map(|h| h.host()).collect();
        format!(
            "postgres://postgres@{}/postgres?target_session_attrs=read-write",
            list.join(",")
        )
    }

    /// Promotes the standby as a failover manager would.
    async fn promote_standby(&self) {
        self.standby.promote().await;
        self.standby
            .execute("ALTER SYSTEM SET synchronous_standby_names = ''")
            .await;
        self.standby.execute("SELECT pg_reload_conf()").await;
    }
}

/// The text of the first column of every row `sql` answers on `server`.
async fn query(server: &PrivatePostgres, sql: &'static str) -> Vec<String> {
    use sqlx::Connection as _;
    let Ok(mut conn) = sqlx::PgConnection::connect(&server.url()).await else {
        return Vec::new();
    };
    sqlx::query_scalar::<_, String>(sql)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default()
}

fn spec(port: u16, ttl: u32) -> InstanceSpec {
    let mut spec = InstanceSpec::new(format!("http://10.0.0.1:{port}"));
    spec.ttl_seconds = Some(ttl);
    spec
}

async fn start_replica(url: &str) -> RegistryProcess {
    // Self-preservation off: a lapse must not be held, so that only the outage grace can
    // keep the leases through the switch.
    RegistryProcess::start(url, &[("REGISTRY_SELF_PRESERVATION_THRESHOLD", "0")]).await
}

/// What the writers saw.
#[derive(Default)]
struct Writes {
    acknowledged: Vec<String>,
    unavailable: usize,
    /// Anything but an acknowledgement or a 503 with `Retry-After`.
    wrong: Vec<String>,
}

/// Registers new instances of `writes` through `bases` in turn until `stop`.
async fn write_until(
    http: reqwest::Client,
    bases: Vec<String>,
    writer: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Writes>>,
) {
    for n in 0usize.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let id = format!("w{writer}-{n}");
        let base = &bases[n % bases.len()];
        let answer = http
            .put(format!("{base}/v1/services/writes/instances/{id}"))
            .json(&spec(4000, 600))
            .send()
            .await;
        let mut seen = seen.lock().expect("writes lock");
        match answer {
            Ok(answer) if answer.status().is_success() => seen.acknowledged.push(id),
            Ok(answer)
                if answer.status() == StatusCode::SERVICE_UNAVAILABLE
                    && answer.headers().contains_key("retry-after") =>
            {
                seen.unavailable += 1
            }
            Ok(answer) => seen.wrong.push(format!("{id}: {}", answer.status())),
            Err(error) => seen.wrong.push(format!("{id}: {error}")),
        }
    }
}

/// Four writers, each registering new instances of `writes` until `stop`.
fn start_writers(
    http: &reqwest::Client,
    bases: &[String],
    stop: &Arc<AtomicBool>,
    writes: &Arc<Mutex<Writes>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|writer| {
            tokio::spawn(write_until(
                http.clone(),
                bases.to_vec(),
                writer,
                stop.clone(),
                writes.clone(),
            ))
        })
        .collect()
}

/// Heartbeats every lease once a second through `bases` in turn until `stop`.
async fn heartbeat_until(http: reqwest::Client, bases: Vec<String>, stop: Arc<AtomicBool>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    for round in 0usize.. {
        ticks.tick().await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let base = &bases[round % bases.len()];
        for lease in 0..LEASES {
            // A refused heartbeat is retried at the next tick, as a client would.
            let _ = http
                .put(format!(
                    "{base}/v1/services/leases/instances/l{lease}/heartbeat"
                ))
                .send()
                .await;
        }
    }
}

/// Looks up `leases` through `bases` in turn until `stop`; answers the failures.
async fn look_up_until(
    http: reqwest::Client,
    bases: Vec<String>,
    stop: Arc<AtomicBool>,
) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    for n in 0usize.. {
        if stop.load(Ordering::Relaxed) {
            return (n, failures);
        }
        let base = &bases[n % bases.len()];
        match http.get(format!("{base}/v1/services/leases")).send().await {
            Ok(answer) if answer.status() == StatusCode::OK => {
                let body: serde_json::Value = answer.json().await.unwrap_or_default();
                let passing = body["instances"]
                    .as_array()
                    .map(|all| all.iter().filter(|i| i["status"] == "passing").count());
                if passing != Some(LEASES) {
                    failures.push(format!("{base}: {passing:?} passing"));
                }
            }
            Ok(answer) => failures.push(format!("{base}: {}", answer.status())),
            Err(error) => failures.push(format!("{base}: {error}")),
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_synchronous_failover_loses_no_acknowledged_write_and_fails_no_lookup() {
    let cluster = Cluster::start(true).await;
    let url = Cluster::url(&[&cluster.primary, &cluster.standby]);
    let a = start_replica(&url).await;
    let b = start_replica(&url).await;
    let bases = vec![a.base_url.clone(), b.base_url.clone()];
    for lease in 0..LEASES {
        a.api
            .register(
                "leases",
                &format!("l{lease}"),
                &spec(5000, LEASE_TTL_SECONDS),
            )
            .await
            .expect("register a lease");
    }
    let start_index = b.api.service("writes", None).await.expect("lookup").index;
    let mut stream = b.api.events(Some(start_index), None).await.expect("events");
    stream.set_idle_timeout(None);

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let http = reqwest::Client::new();
    let writers = start_writers(&http, &bases, &stop, &writes);
    let heartbeats = tokio::spawn(heartbeat_until(http.clone(), bases.clone(), stop.clone()));
    let lookups = tokio::spawn(look_up_until(http.clone(), bases.clone(), stop.clone()));
    // A blocking query on A, following `writes` by index.
    let watcher = {
        let api = a.api.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut index, mut errors) = (start_index, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match api
                    .watch_service("writes", None, index, Duration::from_secs(2))
                    .await
                {
                    Ok(answer) if answer.index >= index => index = answer.index,
                    Ok(answer) => errors.push(format!("index went back to {}", answer.index)),
                    Err(error) => errors.push(error.to_string()),
                }
            }
            errors
        })
    };
    // The event stream on B, every event from the start index.
    let (events, mut seen_events) = tokio::sync::mpsc::unbounded_channel();
    let stream_task = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let _ = events.send(item);
        }
    });
    tokio::time::sleep(BEFORE).await;
    assert!(
        !writes.lock().expect("writes lock").acknowledged.is_empty(),
        "writes go through before the crash"
    );
    // As a failover manager does, the standby is promoted a while after the primary is
    // lost: here once the replicas answer writes with 503, and DECIDING later.
    let crashed = Instant::now();
    cluster.primary.crash().await;
    eventually(DEADLINE, "writes answer 503 without a primary", || {
        let writes = writes.clone();
        async move { (writes.lock().expect("writes lock").unavailable > 0).then_some(()) }
    })
    .await;
    let refused = crashed.elapsed();
    tokio::time::sleep(DECIDING).await;
    cluster.promote_standby().await;
    let promoted = Instant::now();
    let acknowledged_at_switch = writes.lock().expect("writes lock").acknowledged.len();
    eventually(
        DEADLINE,
        "writes succeed again through both replicas",
        || {
            let writes = writes.clone();
            async move {
                (writes.lock().expect("writes lock").acknowledged.len()
                    > acknowledged_at_switch + 8)
                    .then_some(())
            }
        },
    )
    .await;
    let switched = promoted.elapsed();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    heartbeats.await.expect("heartbeats");
    let (lookup_count, lookup_failures) = lookups.await.expect("lookups");
    let watch_errors = watcher.await.expect("watcher");

    let writes = std::mem::take(&mut *writes.lock().expect("writes lock"));
    println!(
        "switch: first 503 {refused:?} after the crash, writes acknowledged again {switched:?} after the promotion; {} writes acknowledged, {} answered 503; {lookup_count} lookups",
        writes.acknowledged.len(),
        writes.unavailable
    );
    assert!(
        writes.wrong.is_empty(),
        "writes answered neither 2xx nor 503 with Retry-After: {:?}",
        writes.wrong
    );
    assert!(writes.unavailable > 0, "the switch was seen as 503s");
    assert!(
        lookup_failures.is_empty(),
        "{} of {lookup_count} lookups failed: {:?}",
        lookup_failures.len(),
        &lookup_failures[..lookup_failures.len().min(5)]
    );
    assert!(
        watch_errors.is_empty(),
        "the blocking query failed: {watch_errors:?}"
    );

    // Every acknowledged write is on the new primary.
    let stored: BTreeSet<String> = query(
        &cluster.standby,
        "SELECT id FROM instances WHERE service = 'writes'",
    )
    .await
    .into_iter()
    .collect();
    let missing: Vec<_> = writes
        .acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on the new primary: {missing:?}"
    );

    // The event stream on B carried exactly the events the new primary holds, and no
    // lease lapsed.
    let mut stored: Vec<u64> = query(&cluster.standby, "SELECT idx::text FROM events")
        .await
        .iter()
        .map(|idx| idx.parse().expect("an index"))
        .filter(|idx| *idx > start_index)
        .collect();
    stored.sort_unstable();
    let last = *stored.last().expect("events after the start");
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while seen
            .last()
            .is_none_or(|e: &registry_api::Event| e.index < last)
        {
            match seen_events.recv().await {
                Some(Ok(StreamItem::Event(event))) => seen.push(event),
                other => panic!("the event stream broke off: {other:?}"),
            }
        }
    })
    .await
    .expect("the event stream reached the last index");
    stream_task.abort();
    let indexes: Vec<u64> = seen.iter().map(|e| e.index).collect();
    let differ = indexes
        .iter()
        .zip(&stored)
        .position(|(seen, stored)| seen != stored);
    assert!(
        indexes == stored,
        "the event stream differs from the new primary's events: {} seen, {} stored, first difference at {differ:?}: seen {:?}, stored {:?}",
        indexes.len(),
        stored.len(),
        differ.map(|at| &indexes[at.saturating_sub(2)..(at + 3).min(indexes.len())]),
        differ.map(|at| &stored[at.saturating_sub(2)..(at + 3).min(stored.len())]),
    );
    let lapsed: Vec<_> = seen
        .iter()
        .filter(|e| e.service == "leases" && e.kind == EventKind::Status)
        .map(|e| (e.instance.clone(), e.to))
        .collect();
    assert!(
        lapsed.is_empty(),
        "leases changed status during the switch: {lapsed:?}"
    );
    assert!(
        !a.log_lines_with("moved to one that does").is_empty(),
        "the replica says it moved to the new primary"
    );
}

/// The ids of `writes` on `server`.
async fn stored_writes(server: &PrivatePostgres) -> BTreeSet<String> {
    query(server, "SELECT id FROM instances WHERE service = 'writes'")
        .await
        .into_iter()
        .collect()
}

/// Writes through both replicas, stops the standby's streaming (an asynchronous standby
/// that fell behind), writes on, crashes the primary, promotes the standby, and answers
/// what the writers saw once writes went through again for a while.
async fn write_through_a_failover_to_a_lagging_standby(
    cluster: &Cluster,
    bases: &[String],
) -> Writes {
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let http = reqwest::Client::new();
    let writers = start_writers(&http, bases, &stop, &writes);
    let acknowledged = |at_least: usize| {
        let writes = writes.clone();
        move || {
            let writes = writes.clone();
            async move {
                (writes.lock().expect("writes lock").acknowledged.len() >= at_least).then_some(())
            }
        }
    };
    eventually(DEADLINE, "writes go through", acknowledged(200)).await;
    cluster
        .standby
        .execute("ALTER SYSTEM SET primary_conninfo = ''")
        .await;
    cluster.standby.execute("SELECT pg_reload_conf()").await;
    eventually(DEADLINE, "the standby stops streaming", || async {
        query(&cluster.primary, "SELECT state FROM pg_stat_replication")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    let at_lag = writes.lock().expect("writes lock").acknowledged.len();
    eventually(
        DEADLINE,
        "writes go on without the standby",
        acknowledged(at_lag + 100),
    )
    .await;
    cluster.primary.crash().await;
    cluster.promote_standby().await;
    let at_switch = writes.lock().expect("writes lock").acknowledged.len();
    eventually(
        DEADLINE,
        "writes go through after the switch",
        acknowledged(at_switch + 200),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    std::mem::take(&mut *writes.lock().expect("writes lock"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_asynchronous_failover_loses_writes_and_the_replicas_follow_what_is_left() {
    let cluster = Cluster::start(false).await;
    let url = Cluster::url(&[&cluster.primary, &cluster.standby]);
    let a = start_replica(&url).await;
    let b = start_replica(&url).await;
    let writes = write_through_a_failover_to_a_lagging_standby(
        &cluster,
        &[a.base_url.clone(), b.base_url.clone()],
    )
    .await;
    assert!(writes.wrong.is_empty(), "{:?}", writes.wrong);
    let stored = stored_writes(&cluster.standby).await;
    let lost = writes
        .acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .count();
    println!(
        "asynchronous replication, standby behind: {lost} of {} acknowledged writes lost in the failover",
        writes.acknowledged.len()
    );
    assert!(
        lost >= 100,
        "the writes made while the standby was behind are lost"
    );
    // Whatever was lost, each replica shows the new primary's state: no lost write stays
    // visible, none that survived is missing.
    for replica in [&a, &b] {
        eventually(
            DEADLINE,
            "the replica shows the new primary's state",
            || async {
                let shown: BTreeSet<String> = replica
                    .api
                    .service("writes", None)
                    .await
                    .ok()?
                    .instances
                    .into_iter()
                    .map(|i| i.id)
                    .collect();
                (shown == stored).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_listed_first_is_skipped_for_writes() {
    let cluster = Cluster::start(true).await;
    let registry = start_replica(&Cluster::url(&[&cluster.standby, &cluster.primary])).await;
    registry
        .api
        .register("writes", "w-1", &spec(4000, 60))
        .await
        .expect("a write through a registry whose first host is a standby");
    assert_eq!(
        stored_writes(&cluster.primary).await,
        BTreeSet::from(["w-1".to_owned()])
    );
}
