//! `registry-bench --scale [--instances N]` (run by `make bench-scale`): the registry at
//! a size far past `make bench`'s 10,000 instances, one million by default (100,000
//! services of 10), on one Postgres database with two replicas; writes
//! `target/bench/scale.json`.
//!
//! Some costs grow with the size of the registry rather than with the request rate:
//! loading it at start-up, the whole-system reads and the dashboard built on them, time
//! travel, a mass lapse applied by the lease sweep, memory. `make bench` cannot show them
//! at its size, and a run at this size takes too long to be part of it, so it is a mode of
//! its own, run by hand (never by `make test` or CI). It reuses the bench's pieces: the
//! release registry as a child process on a fresh database, wrk for request rates, the
//! report table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;

use crate::registry::{Backend, Database, Registry};
use crate::scenarios::{self, Progress, Spread};
use crate::{Report, clean, wrk_json};
use crate::{dashboard, load};

/// Instances per service, here and in the baseline.
const PER_SERVICE: usize = 10;
/// The size the lookups at scale are compared with (`make bench`'s).
const BASELINE_INSTANCES: usize = 10_000;
/// Concurrent registrations while seeding (as `make bench`'s writers).
const WRITERS: usize = 64;
/// The seeded instances' lease: a day, so none lapses while the bench runs and none needs
/// a heartbeat.
const SEED_TTL_SECONDS: u64 = 86_400;
/// Lookups ask for one of the first this many services (10 instances each, in the
/// registry at scale and in the baseline alike).
const LOOKUP_SERVICES: usize = 1_000;
/// Most leases the mass lapse lets run out (a tenth of the instances below a million).
const LAPSE_MAX: usize = 100_000;

/// The path of the `k`-th instance registered over `services` services named
/// `{prefix}-N`: spread round-robin, so each service gets one before any gets two.
fn instance_path(prefix: &str, k: usize, services: usize) -> String {
    format!(
        "/v1/services/{prefix}-{}/instances/i-{}",
        k % services,
        k / services
    )
}

/// What to run: `--scale`, and `--instances N` (a multiple of 10, at least 10,000).
pub struct Options {
    pub instances: usize,
}

impl Options {
    /// `Some` when the arguments hold `--scale`.
    pub fn from_args() -> anyhow::Result<Option<Self>> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if !args.iter().any(|a| a == "--scale") {
            return Ok(None);
        }
        let mut instances = 1_000_000;
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let value = match arg.strip_prefix("--instances") {
                Some("") => rest.next().map(String::as_str),
                Some(tail) => tail.strip_prefix('='),
                None => continue,
            };
            let value = value.context("--instances needs a number")?;
            instances = value
                .replace(['_', ','], "")
                .parse()
                .with_context(|| format!("--instances {value}: not a number"))?;
        }
        ensure!(
            instances >= BASELINE_INSTANCES && instances % PER_SERVICE == 0,
            "--instances {instances}: a multiple of {PER_SERVICE}, at least {BASELINE_INSTANCES}"
        );
        Ok(Some(Self { instances }))
    }
}

/// Runs every measure, prints the table, writes `target/bench/scale.json`.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure!(
        load::wrk_available().await,
        "wrk is missing: install it (apt-get install wrk); make bench-scale does as root"
    );
    let admin_url = crate::postgres_admin_url()?;
    let (fsync, synchronous_commit) = crate::registry::postgres_durability(&admin_url).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()?;
    let n = options.instances;
    eprintln!(
        "registry-bench --scale: {n} instances ({} services x {PER_SERVICE}) on Postgres, two replicas",
        n / PER_SERVICE
    );
    let mut report = Report::default();
    let baseline = Database::fresh(Backend::Postgres, &admin_url).await?;
    let database = Database::fresh(Backend::Postgres, &admin_url).await?;
    let analyzing = stand_in_for_autovacuum(&admin_url, &database).await?;
    let outcome = measure(n, &baseline, &database, &http, &mut report).await;
    if let Some(task) = analyzing {
        task.abort();
    }
    baseline.drop_now().await?;
    database.drop_now().await?;
    outcome?;
    let seconds = started.elapsed().as_secs();
    report.add(
        "whole run",
        format!("{} min {} s", seconds / 60, seconds % 60),
        "",
        None,
        json!({ "seconds": seconds }),
    );
    println!("{}", report.table());
    let path = crate::output_path("scale.json")?;
    let document = json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "seconds": seconds,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "postgres": { "fsync": fsync, "synchronous_commit": synchronous_commit },
        "instances": n,
        "results": report.rows,
    });
    crate::write_json(&path, &document)?;
    eprintln!("wrote {} in {seconds} s", path.display());
    Ok(())
}

/// How often the bench analyzes its database when the server's autovacuum is off.
const ANALYZE_EVERY: Duration = Duration::from_secs(10);

/// With the server's autovacuum off (as on a CI machine's Postgres), tables filled by a
/// million registrations are never analyzed, and the planner chooses without statistics,
/// which no production Postgres of that size would (docs/operations.md asks for
/// autovacuum). Then the bench runs `ANALYZE` on its database every [`ANALYZE_EVERY`], as
/// autovacuum would, and says so.
async fn stand_in_for_autovacuum(
    admin_url: &str,
    database: &Database,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&mut admin)
        .await?;
    if autovacuum == "on" {
        return Ok(None);
    }
    eprintln!(
        "autovacuum is off on this Postgres: the bench analyzes its database every {} s, as autovacuum would",
        ANALYZE_EVERY.as_secs()
    );
    let mut conn = sqlx::PgConnection::connect(&database.url).await?;
    Ok(Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(ANALYZE_EVERY);
        loop {
            every.tick().await;
            if let Err(error) = sqlx::query("ANALYZE").execute(&mut conn).await {
                eprintln!("ANALYZE failed: {error}");
            }
        }
    })))
}

/// The measures, in order, on the baseline registry (10,000 instances) and on replicas A
/// and B of the registry at `n`.
async fn measure(
    n: usize,
    baseline_db: &Database,
    database: &Database,
    http: &reqwest::Client,
    report: &mut Report,
) -> anyhow::Result<()> {
    let envs = Preservation::Off.envs();
    let services = n / PER_SERVICE;

    eprintln!("[baseline: {BASELINE_INSTANCES} instances, for the lookups' ratio]");
    let baseline = Registry::start(&baseline_db.url, &envs).await?;
    scenarios::seed(
        http,
        &baseline,
        BASELINE_INSTANCES / PER_SERVICE,
        BASELINE_INSTANCES,
        WRITERS,
        "seeding",
    )
    .await?;
    scenarios::check_seeded(http, &baseline, PER_SERVICE).await?;

    eprintln!("[{n} instances, replica A]");
    let a = Registry::start(&database.url, &envs).await?;
    // One request of each kind first, so buffers every request needs count as baseline.
    scenarios::register(http, &a, "warm-up", "i-0", seed_body(0, SEED_TTL_SECONDS)).await?;
    scenarios::lookup(http, a.url("/v1/services/warm-up")).await?;
    let rss_before = a.rss_kib()?;
    let seeding = Instant::now();
    let seed_rate = scenarios::register_many(http, n, WRITERS, "seeding", |k| {
        (
            a.url(&instance_path("svc", k, services)),
            seed_body(k, SEED_TTL_SECONDS),
        )
    })
    .await?;
    let seeding = seeding.elapsed();
    let seeded_at = chrono::Utc::now();
    let rss_after = a.rss_kib()?;
    scenarios::check_seeded(http, &a, PER_SERVICE).await?;
    report.add(
        format!("seeding {n} instances through the API, {WRITERS} writers"),
        format!(
            "{seed_rate:.0}/s, {:.0} s in all",
            seeding.as_secs_f64()
        ),
        "",
        None,
        json!({ "per_second": seed_rate, "seconds": seeding.as_secs_f64(), "ttl_seconds": SEED_TTL_SECONDS }),
    );

    let b = cold_start(http, database, &envs, &a, n, report).await?;

    crate::memory_per_instance(
        report,
        format!("resident memory per instance at {n} (replica A)"),
        (rss_before, rss_after),
        n,
    );

    lookups(n, &a, &baseline, report).await?;
    baseline.stop().await?;

    watch(http, &a, &b, report).await?;
    // One connection for the bench's own questions to Postgres (left out of the CPU counted).
    let mut postgres = {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&database.url).await?
    };
    heartbeat_cost(&a, &mut postgres, services, report).await?;
    database_size(&mut postgres, n, report).await?;
    whole_system(http, &a, report).await?;
    dashboard::measure(&a, n, services, report).await?;
    mass_lapse(
        http,
        [&a, &b],
        n,
        seed_rate,
        Preservation::Off,
        &mut postgres,
        report,
    )
    .await?;
    // The same mass lapse with self-preservation on: both replicas must run with the same
    // settings, so both restart with them.
    let on = Preservation::on(n, seed_rate);
    let (a, b) = restart(http, database, on, a, b).await?;
    mass_lapse(http, [&a, &b], n, seed_rate, on, &mut postgres, report).await?;
    time_travel(http, &a, seeded_at, report).await?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// How long heartbeats are sent for the CPU they cost, and over how many connections (a
/// load the renewals keep up with at a million instances: more are answered 503 there).
const HEARTBEAT_LOAD: Duration = Duration::from_secs(6);
const HEARTBEAT_CONNECTIONS: usize = 8;

/// The registry's default lease (`REGISTRY_DEFAULT_TTL`): clients renew every third of it.
const DEFAULT_TTL_SECONDS: f64 = 10.0;

/// Heartbeats of random seeded instances on A (wrk): the CPU replica A
/// and the Postgres backends serving the bench's database spend per 10,000 heartbeats a
/// second, and from it how many instances one core of each keeps alive at the default
/// lease (a heartbeat every third of it). Postgres's shared background processes (WAL
/// writer, checkpointer) are not counted.
async fn heartbeat_cost(
    a: &Registry,
    postgres: &mut sqlx::PgConnection,
    services: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let backends = postgres_backends(postgres).await?;
    let postgres_cpu = || -> Duration {
        backends
            .iter()
            .filter_map(|pid| crate::registry::cpu_time_of(*pid).ok())
            .sum()
    };
    let script = load::heartbeat_script(services, PER_SERVICE);
    let before = (a.cpu_time()?, postgres_cpu(), wal_position(postgres).await?);
    let run = load::wrk(&a.base, &script, HEARTBEAT_CONNECTIONS, HEARTBEAT_LOAD).await?;
    let after = (a.cpu_time()?, postgres_cpu(), wal_position(postgres).await?);
    ensure!(run.errors == 0, "heartbeats failed: {run:?}");
    // Renewed heartbeats a second (a refused one, 503 when the renewals fall behind, costs
    // little and renews nothing), and the cores busy per 10,000 of them.
    let renewed = (run.requests - run.bad_status.min(run.requests)) as f64 / run.seconds;
    let per_10k = |used: Duration| used.as_secs_f64() / run.seconds / (renewed / 10_000.0);
    let registry = per_10k(after.0.saturating_sub(before.0));
    let postgres = per_10k(after.1.saturating_sub(before.1));
    let instances_per_core =
        |cores_per_10k: f64| 10_000.0 / cores_per_10k * DEFAULT_TTL_SECONDS / 3.0;
    // The whole server's WAL, other databases' too: an upper bound on the renewals' own.
    let wal_per_heartbeat = (after.2 - before.2) as f64 / (renewed * run.seconds);
    report.add(
        "heartbeats: cores per 10,000/s, registry / Postgres (instances one core keeps alive at the default 10 s lease)",
        format!(
            "{registry:.2} / {postgres:.2} ({:.0} / {:.0}); {renewed:.0}/s renewed, {} refused; WAL {wal_per_heartbeat:.0} B a heartbeat",
            instances_per_core(registry),
            instances_per_core(postgres),
            run.bad_status
        ),
        "",
        None,
        json!({
            "renewed_per_second": renewed,
            "refused": run.bad_status,
            "connections": HEARTBEAT_CONNECTIONS,
            "registry_cores_per_10k": registry,
            "postgres_cores_per_10k": postgres,
            "instances_per_registry_core": instances_per_core(registry),
            "instances_per_postgres_core": instances_per_core(postgres),
            "wal_bytes_per_heartbeat": wal_per_heartbeat,
        }),
    );
    Ok(())
}

/// What the instances and their history take in Postgres (tables with their indexes and
/// TOAST), per instance.
async fn database_size(
    postgres: &mut sqlx::PgConnection,
    n: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (instances, events): (i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('instances'), pg_total_relation_size('events')",
    )
    .fetch_one(&mut *postgres)
    .await?;
    let per_instance = |bytes: i64| bytes as f64 / n as f64;
    report.add(
        format!("Postgres: instances table / history per instance at {n}"),
        format!(
            "{:.0} B / {:.0} B ({} MiB / {} MiB)",
            per_instance(instances),
            per_instance(events),
            instances >> 20,
            events >> 20
        ),
        "",
        None,
        json!({ "instances_bytes": instances, "events_bytes": events }),
    );
    Ok(())
}

/// Where the server's write-ahead log is, in bytes.
async fn wal_position(postgres: &mut sqlx::PgConnection) -> anyhow::Result<i64> {
    let at: i64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .fetch_one(&mut *postgres)
        .await?;
    Ok(at)
}

/// The process ids of the Postgres backends connected to the database of `url`.
async fn postgres_backends(postgres: &mut sqlx::PgConnection) -> anyhow::Result<Vec<u32>> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut *postgres)
    .await?;
    Ok(pids
        .into_iter()
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect())
}

/// A seeded instance's body: the shape of `make bench`'s, with a lease of `ttl` seconds.
fn seed_body(k: usize, ttl: u64) -> String {
    format!(
        r#"{{"url":"http://10.0.{}.{}:8080/","tags":["bench"],"metadata":{{"version":"1.0.0"}},"ttl_seconds":{ttl}}}"#,
        (k / 250) % 250,
        k % 250
    )
}

/// Replica B started on the seeded database: the time from its start until `/readyz`
/// answers 200 (it loads the registry before it listens), and A's lookups meanwhile.
async fn cold_start(
    http: &reqwest::Client,
    database: &Database,
    envs: &[(&str, String)],
    a: &Registry,
    n: usize,
    report: &mut Report,
) -> anyhow::Result<Registry> {
    scenarios::phase("replica B: cold start on the seeded database");
    let poller = Poller::start(http, vec![a.url("/v1/services/svc-3?status=passing"); 2]);
    let started = Instant::now();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            eprintln!("  replica B starting: {} s", started.elapsed().as_secs());
        }
    });
    let b = start_ready(http, database, envs).await;
    ticker.abort();
    let elapsed = started.elapsed();
    let samples = poller.finish().await;
    let b = b?;
    let rss = b.rss_kib()?;
    let (on_b, _) = scenarios::lookup(http, b.url("/v1/services/svc-0")).await?;
    let lookups = Spread::of(samples.iter().map(|s| s.latency).collect());
    let failed = samples.iter().filter(|s| !s.ok).count();
    report.add(
        format!("replica cold start on {n} instances to /readyz 200"),
        format!(
            "{:.1} s (RSS then {} MiB); A's lookups meanwhile: p99 {:.1} ms, max {:.1} ms, {failed} failed",
            elapsed.as_secs_f64(),
            rss / 1024,
            lookups.p99_ms,
            lookups.max_ms
        ),
        "<= 30 s, A's lookups served",
        Some(elapsed <= Duration::from_secs(30) && failed == 0),
        json!({ "seconds": elapsed.as_secs_f64(), "rss_kib": rss, "b_index": on_b, "a_lookups": lookups, "a_lookups_failed": failed }),
    );
    Ok(b)
}

/// How long a replica may take to load the registry before it listens (about 20 s at a
/// million instances on a busy 2-core machine): a slow start is measured, not cut.
const START_WITHIN: Duration = Duration::from_secs(600);

/// A replica started on `database` with `envs`, once `/readyz` answers 200.
async fn start_ready(
    http: &reqwest::Client,
    database: &Database,
    envs: &[(&str, String)],
) -> anyhow::Result<Registry> {
    let registry = Registry::start_within(&database.url, envs, START_WITHIN).await?;
    wait_ready(http, &registry).await?;
    Ok(registry)
}

/// Polls `/readyz` until it answers 200.
async fn wait_ready(http: &reqwest::Client, registry: &Registry) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let response = http.get(registry.url("/readyz")).send().await;
        if response.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "/readyz not 200 within 600 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lookups of a 10-instance service on A (at `n`) and on the baseline (10,000), taken in
/// turns with wrk.
async fn lookups(
    n: usize,
    a: &Registry,
    baseline: &Registry,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (connections, rounds, each) = (32, 3, Duration::from_secs(4));
    scenarios::phase(&format!(
        "lookups at {n} and at {BASELINE_INSTANCES}, in turns (wrk, 1 thread, {connections} conns, {rounds} rounds of {} s)",
        each.as_secs()
    ));
    let script = load::lookup_script("", LOOKUP_SERVICES);
    let results = load::in_turns(
        &[
            (a.base.as_str(), script.as_str()),
            (baseline.base.as_str(), script.as_str()),
        ],
        connections,
        rounds,
        each,
    )
    .await?;
    let (large, small) = (results[0], results[1]);
    let ratio = large.per_second / small.per_second.max(1.0);
    report.add(
        format!("lookups/s at {n} / at {BASELINE_INSTANCES} (10-instance services, in turns)"),
        format!("{ratio:.2} ({} / {})", large.summary(), small.summary()),
        ">= 0.9",
        Some(ratio >= 0.9 && clean(&large) && clean(&small)),
        json!({ "ratio": ratio, "at_scale": wrk_json(&large), "baseline": wrk_json(&small) }),
    );
    Ok(())
}

/// Blocking queries on one service on A and on B, then a change written on A: how long
/// until each answers with it, from the moment the change is sent.
async fn watch(
    http: &reqwest::Client,
    a: &Registry,
    b: &Registry,
    report: &mut Report,
) -> anyhow::Result<()> {
    let changes = 20;
    let service = "svc-5";
    let mut progress = Progress::new(format!("blocking watches of {service} notified"), changes);
    let (mut on_a, mut on_b, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for change in 0..changes {
        let id = format!("w-{change}");
        let (index, _) = scenarios::lookup(http, a.url(&format!("/v1/services/{service}"))).await?;
        let write = async {
            // Gives both blocking queries time to park; a late one only makes it worse.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let sent = Instant::now();
            scenarios::register(http, a, service, &id, seed_body(change, SEED_TTL_SECONDS)).await?;
            anyhow::Ok((sent, sent.elapsed()))
        };
        let (seen_a, seen_b, sent) = tokio::join!(
            seen(http, a, service, index, &id),
            seen(http, b, service, index, &id),
            write
        );
        let (sent, answered) = sent?;
        writes.push(answered);
        on_a.push(seen_a?.saturating_duration_since(sent));
        on_b.push(seen_b?.saturating_duration_since(sent));
        progress.tick(change + 1);
    }
    progress.finish("");
    let (on_a, on_b, writes) = (Spread::of(on_a), Spread::of(on_b), Spread::of(writes));
    report.add(
        format!("blocking watch of one service, {changes} changes written on A"),
        format!(
            "A: p50 {:.1} ms, p99 {:.1} ms; B: p50 {:.1} ms, p99 {:.1} ms (the writes' own answers: p50 {:.1} ms, p99 {:.1} ms)",
            on_a.p50_ms, on_a.p99_ms, on_b.p50_ms, on_b.p99_ms, writes.p50_ms, writes.p99_ms
        ),
        "p99 <= 200 ms",
        Some(on_a.p99_ms <= 200.0 && on_b.p99_ms <= 200.0),
        json!({ "a": on_a, "b": on_b, "writes": writes }),
    );
    Ok(())
}

/// Blocking queries on `service` from `index` on, until an answer holds instance `id`:
/// when that answer was read.
async fn seen(
    http: &reqwest::Client,
    registry: &Registry,
    service: &str,
    mut index: u64,
    id: &str,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (now_index, instances) = scenarios::lookup(
            http,
            registry.url(&format!("/v1/services/{service}?index={index}&wait=30s")),
        )
        .await?;
        if instances.iter().any(|i| i["id"].as_str() == Some(id)) {
            return Ok(Instant::now());
        }
        ensure!(Instant::now() < deadline, "{id} not seen within 30 s");
        index = now_index;
    }
}

/// One timed GET: its latency and body size; an error unless it answers 2xx.
async fn timed_get(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(Duration, usize, serde_json::Value)> {
    let started = Instant::now();
    let body = http
        .get(url)
        .timeout(timeout)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let latency = started.elapsed();
    let value = serde_json::from_slice(&body).context("an answer that is not JSON")?;
    Ok((latency, body.len(), value))
}

/// The summary, a walk of pages, a search and the unpaged list of services, on A.
async fn whole_system(
    http: &reqwest::Client,
    a: &Registry,
    report: &mut Report,
) -> anyhow::Result<()> {
    let requests = 50;
    scenarios::phase(&format!(
        "GET /v1/status?summary=true and a walk of {requests} pages of 50 (sequential)"
    ));
    let timeout = Duration::from_secs(120);
    let mut samples = Vec::new();
    let mut total = 0;
    for _ in 0..requests {
        let (latency, _, body) =
            timed_get(http, &a.url("/v1/status?summary=true"), timeout).await?;
        total = body["instances"]["total"].as_u64().unwrap_or(0);
        samples.push(latency);
    }
    let summary = Spread::of(samples);
    report.add(
        "GET /v1/status?summary=true",
        format!(
            "p50 {:.2} ms, p99 {:.2} ms ({total} instances counted)",
            summary.p50_ms, summary.p99_ms
        ),
        "p99 <= 100 ms",
        Some(summary.p99_ms <= 100.0),
        json!({ "latency": summary, "instances": total }),
    );

    let mut samples = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..requests {
        let url = match &cursor {
            Some(cursor) => a.url(&format!("/v1/status?limit=50&cursor={cursor}")),
            None => a.url("/v1/status?limit=50"),
        };
        let (latency, _, body) = timed_get(http, &url, timeout).await?;
        samples.push(latency);
        cursor = body["next_cursor"].as_str().map(str::to_owned);
    }
    let page = Spread::of(samples);
    report.add(
        format!("GET /v1/status?limit=50, {requests} pages walked by cursor"),
        format!("p50 {:.2} ms, p99 {:.2} ms", page.p50_ms, page.p99_ms),
        "p99 <= 100 ms",
        Some(page.p99_ms <= 100.0),
        json!({ "latency": page }),
    );

    // A search that matches few names: the walk passes over nearly all of them.
    let mut samples = Vec::new();
    for _ in 0..10 {
        let (latency, _, _) =
            timed_get(http, &a.url("/v1/status?name=svc-4242&limit=50"), timeout).await?;
        samples.push(latency);
    }
    let search = Spread::of(samples);
    report.add(
        "GET /v1/status?name=svc-4242&limit=50 (a rare match), 10 requests",
        format!("p50 {:.1} ms, p99 {:.1} ms", search.p50_ms, search.p99_ms),
        "p99 <= 100 ms",
        Some(search.p99_ms <= 100.0),
        json!({ "latency": search }),
    );

    let mut samples = Vec::new();
    let mut size = 0;
    for _ in 0..3 {
        let (latency, bytes, _) = timed_get(http, &a.url("/v1/services"), timeout).await?;
        size = bytes;
        samples.push(latency);
    }
    let unpaged = Spread::of(samples);
    report.add(
        "GET /v1/services unpaged (reference), 3 requests",
        format!(
            "{:.1} MB in p50 {:.0} ms, max {:.0} ms",
            size as f64 / 1e6,
            unpaged.p50_ms,
            unpaged.max_ms
        ),
        "",
        None,
        json!({ "bytes": size, "latency": unpaged }),
    );
    Ok(())
}

/// The state of one service, and a page of the whole system, at `at` (the end of the
/// seeding, as far back as the run allows), asked at the end of the run.
async fn time_travel(
    http: &reqwest::Client,
    a: &Registry,
    at: chrono::DateTime<chrono::Utc>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let moment = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let back = (chrono::Utc::now() - at).num_seconds();
    scenarios::phase(&format!("time travel to {moment} ({back} s back)"));
    let timeout = Duration::from_secs(300);
    for (label, path_shown, check) in [
        ("one service", "/v1/status?at=T&service=svc-7", "svc-7"),
        ("a page of 50", "/v1/status?at=T&limit=50", "svc-0"),
    ] {
        let path = path_shown.replace("at=T", &format!("at={moment}"));
        // Five requests, or fewer when each takes long.
        let budget = Instant::now() + Duration::from_secs(30);
        let mut samples = Vec::new();
        let mut failure = None;
        while samples.len() < 5 && (samples.is_empty() || Instant::now() < budget) {
            match timed_get(http, &a.url(&path), timeout).await {
                Ok((latency, _, body)) => {
                    let services = body["services"].as_array().cloned().unwrap_or_default();
                    let found = services.iter().any(|s| s["name"].as_str() == Some(check));
                    ensure!(
                        found,
                        "time travel to {moment}: {check} missing from {path}"
                    );
                    samples.push(latency);
                }
                Err(error) => {
                    failure = Some(format!("{error:#}"));
                    break;
                }
            }
        }
        let metric = format!("time travel {back} s back: {label} (GET {path_shown})");
        match failure {
            Some(error) => report.add(
                metric,
                format!("failed: {error}"),
                "p99 <= 1 s",
                Some(false),
                json!({ "error": error, "at": moment }),
            ),
            None => {
                let spread = Spread::of(samples);
                report.add(
                    metric,
                    format!(
                        "p50 {:.0} ms, max {:.0} ms ({} requests)",
                        spread.p50_ms, spread.max_ms, spread.count
                    ),
                    "p99 <= 1 s",
                    Some(spread.p99_ms <= 1_000.0),
                    json!({ "latency": spread, "at": moment, "seconds_back": back, "path": path }),
                );
            }
        }
    }
    Ok(())
}

/// Whether self-preservation runs during a mass lapse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preservation {
    /// Off (`REGISTRY_SELF_PRESERVATION_THRESHOLD=0`): the lapses apply as they fall due.
    Off,
    /// On, with [`HELD_THRESHOLD`] and at most `max`: the lapses are held until then.
    On { max: Duration },
}

/// The self-preservation threshold of the run with it on. The mass lapse's leases are a
/// tenth of the seeded instances, about 9% of the live leases, so the default of one half
/// would never see their silence; at 5% it does (the seeded day-long leases never fall
/// silent).
const HELD_THRESHOLD: f64 = 0.05;
/// How long at least the mode lasts past the common deadline of the run with it on: long
/// enough for the sweeps to hold every lapse (they apply about 5,500 a second at a million
/// instances, docs/performance.md) and to see that none applies, short enough for the run.
const HELD_PAST_DEADLINE: Duration = Duration::from_secs(30);
/// How long past the last deadline and the maximum the run waits for both replicas to
/// have shown the mode begin and end, before it reports that they did not.
const HELD_GIVE_UP: Duration = Duration::from_secs(60);

impl Preservation {
    /// Self-preservation on for the mass lapse at `n` instances seeded at `seed_rate`, with
    /// a maximum (`REGISTRY_SELF_PRESERVATION_MAX`, 15 minutes by default) to suit. A lease
    /// falls silent at half its TTL, so the mode begins past half of the lapse's span: half
    /// of it more and [`HELD_PAST_DEADLINE`] keep it on that long past the deadline at any
    /// size (a fixed maximum would end before the deadline at a million).
    fn on(n: usize, seed_rate: f64) -> Self {
        let max = lapse_span(n, seed_rate) / 2 + HELD_PAST_DEADLINE;
        Self::On {
            max: Duration::from_secs(max.as_secs_f64().ceil() as u64),
        }
    }

    /// The registry's settings for it. Requests may take up to 5 minutes instead of 30 s,
    /// so that a slow time travel is measured, not cut at 503.
    fn envs(self) -> Vec<(&'static str, String)> {
        let mut envs = vec![("REGISTRY_REQUEST_TIMEOUT", "5m".to_owned())];
        match self {
            Self::Off => envs.push(("REGISTRY_SELF_PRESERVATION_THRESHOLD", "0".to_owned())),
            Self::On { max } => envs.extend([
                (
                    "REGISTRY_SELF_PRESERVATION_THRESHOLD",
                    HELD_THRESHOLD.to_string(),
                ),
                (
                    "REGISTRY_SELF_PRESERVATION_MAX",
                    format!("{}s", max.as_secs()),
                ),
            ]),
        }
        envs
    }

    /// The name prefix of the services of its short leases: each run lapses its own.
    fn prefix(self) -> &'static str {
        match self {
            Self::Off => "lapse",
            Self::On { .. } => "held",
        }
    }

    /// What the report calls its mass lapse.
    fn label(self) -> &'static str {
        match self {
            Self::Off => "the mass lapse",
            Self::On { .. } => "the held mass lapse",
        }
    }
}

/// Stops replicas A and B, then starts both again on `database` with the settings of
/// `preservation` (replicas must all run with the same ones), at once: answers them once
/// both are ready.
async fn restart(
    http: &reqwest::Client,
    database: &Database,
    preservation: Preservation,
    a: Registry,
    b: Registry,
) -> anyhow::Result<(Registry, Registry)> {
    scenarios::phase(&format!(
        "replicas A and B restarted for {}",
        preservation.label()
    ));
    let started = Instant::now();
    let (stopped_a, stopped_b) = tokio::join!(a.stop(), b.stop());
    stopped_a?;
    stopped_b?;
    let envs = preservation.envs();
    let (a, b) = tokio::join!(
        start_ready(http, database, &envs),
        start_ready(http, database, &envs)
    );
    let (a, b) = (a?, b?);
    eprintln!("  both ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok((a, b))
}

/// The short leases of a mass lapse, once registered.
struct Lapse {
    count: usize,
    /// Instances critical before they were registered (the earlier mass lapse's).
    critical_before: u64,
    /// The first and the last of their deadlines.
    first: Instant,
    last: Instant,
    /// The longest lease given (the first registered).
    longest_ttl: Duration,
}

/// How many short leases the mass lapse registers at `n` instances.
fn lapse_count(n: usize) -> usize {
    (n / PER_SERVICE).min(LAPSE_MAX)
}

/// The time from the start of the mass lapse's registrations at `n` instances, seeded at
/// `seed_rate`, until their common deadline.
fn lapse_span(n: usize, seed_rate: f64) -> Duration {
    let estimate = Duration::from_secs_f64(lapse_count(n) as f64 / seed_rate.max(100.0));
    // The registrations run slower than the seeding did (at a million, about half as
    // fast): a wide margin, so that no lease runs out while others are still registered.
    estimate.mul_f64(2.5) + Duration::from_secs(15)
}

/// Leases registered so that they all run out within about a second of each other, then
/// left to lapse, with lookups on A and B meanwhile. Self-preservation off: the time from
/// the last deadline until both replicas' summaries count them all critical
/// ([`all_critical`]); on: that none turns critical before its maximum ([`held`]).
async fn mass_lapse(
    http: &reqwest::Client,
    [a, b]: [&Registry; 2],
    n: usize,
    seed_rate: f64,
    preservation: Preservation,
    postgres: &mut sqlx::PgConnection,
    report: &mut Report,
) -> anyhow::Result<()> {
    let count = lapse_count(n);
    let services = count / PER_SERVICE;
    let critical_before = summary(http, a).await?.critical;
    // Every lease is given the seconds left until one moment, past the end of the
    // registrations: their deadlines fall within a second of it, as when a zone is lost.
    let span = lapse_span(n, seed_rate);
    let target = Instant::now() + span;
    let deadlines: Mutex<Option<(Instant, Instant)>> = Mutex::new(None);
    scenarios::register_many(http, count, WRITERS, "short leases", |k| {
        let now = Instant::now();
        let ttl = target
            .saturating_duration_since(now)
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        let deadline = now + Duration::from_secs(ttl);
        let mut span = deadlines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *span = Some(match *span {
            Some((first, last)) => (first.min(deadline), last.max(deadline)),
            None => (deadline, deadline),
        });
        (
            a.url(&instance_path(preservation.prefix(), k, services)),
            seed_body(k, ttl),
        )
    })
    .await?;
    let (first, last) = deadlines
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .context("no lease registered")?;
    let lapse = Lapse {
        count,
        critical_before,
        first,
        last,
        longest_ttl: Duration::from_secs(span.as_secs_f64().ceil() as u64),
    };
    // Two pollers on each replica, each a lookup at a time every 10 ms.
    let lookup = "/v1/services/svc-1?status=passing";
    let poller = Poller::start(
        http,
        vec![a.url(lookup), a.url(lookup), b.url(lookup), b.url(lookup)],
    );
    match preservation {
        Preservation::Off => all_critical(http, a, b, &lapse, postgres, report).await?,
        Preservation::On { max } => held(http, a, b, &lapse, max, report).await?,
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = poller.finish().await;
    let during: Vec<&Sample> = samples.iter().filter(|s| s.at >= first).collect();
    let failed = during.iter().filter(|s| !s.ok).count();
    let spread = Spread::of(during.iter().map(|s| s.latency).collect());
    let before = Spread::of(
        samples
            .iter()
            .filter(|s| s.at < first)
            .map(|s| s.latency)
            .collect(),
    );
    report.add(
        format!(
            "lookups on A and B during {} (4 clients, one every 10 ms each)",
            preservation.label()
        ),
        format!(
            "p50 {:.2} ms, p99 {:.1} ms, max {:.1} ms, {} lookups, {failed} failed (before: p99 {:.1} ms)",
            spread.p50_ms, spread.p99_ms, spread.max_ms, spread.count, before.p99_ms
        ),
        "none failed, p99 <= 100 ms",
        Some(failed == 0 && spread.count > 0 && spread.p99_ms <= 100.0),
        json!({ "during": spread, "failed": failed, "before": before }),
    );
    Ok(())
}

/// The CPU replicas A and B and the Postgres backends of the bench's database had used, at
/// one moment.
struct CpuUse {
    at: Instant,
    a: Duration,
    b: Duration,
    backends: HashMap<u32, Duration>,
}

impl CpuUse {
    async fn now(
        a: &Registry,
        b: &Registry,
        postgres: &mut sqlx::PgConnection,
    ) -> anyhow::Result<Self> {
        let backends = postgres_backends(postgres).await?;
        Ok(Self {
            at: Instant::now(),
            a: a.cpu_time()?,
            b: b.cpu_time()?,
            backends: backends
                .into_iter()
                .filter_map(|pid| Some((pid, crate::registry::cpu_time_of(pid).ok()?)))
                .collect(),
        })
    }

    /// Seconds used since `earlier` by A, B and the backends (one opened since counts
    /// whole; one closed since is missed), and the seconds between the two.
    fn since(&self, earlier: &Self) -> [f64; 4] {
        let postgres: Duration = self
            .backends
            .iter()
            .map(|(pid, used)| {
                used.saturating_sub(*earlier.backends.get(pid).unwrap_or(&Duration::ZERO))
            })
            .sum();
        [
            self.a.saturating_sub(earlier.a).as_secs_f64(),
            self.b.saturating_sub(earlier.b).as_secs_f64(),
            postgres.as_secs_f64(),
            self.at.saturating_duration_since(earlier.at).as_secs_f64(),
        ]
    }
}

/// Self-preservation off: the time from the last deadline until both replicas' summaries
/// count every lease of `lapse` critical, and the CPU A, B and Postgres spent from the
/// first deadline until then (what bounds it, on this 2-core machine).
async fn all_critical(
    http: &reqwest::Client,
    a: &Registry,
    b: &Registry,
    lapse: &Lapse,
    postgres: &mut sqlx::PgConnection,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Lapse {
        count,
        critical_before,
        first,
        last,
        ..
    } = *lapse;
    let wanted = critical_before + count as u64;
    let mut progress = Progress::new(
        format!("{count} leases lapsed (critical on A and B)"),
        count,
    );
    let give_up = last + Duration::from_secs(120);
    let (mut done_a, mut done_b) = (None, None);
    let mut cpu_from = None;
    while done_a.is_none() || done_b.is_none() {
        if cpu_from.is_none() && Instant::now() >= first {
            cpu_from = Some(CpuUse::now(a, b, postgres).await?);
        }
        let on_a = summary(http, a).await?.critical;
        let on_b = summary(http, b).await?.critical;
        let now = Instant::now();
        if on_a >= wanted && done_a.is_none() {
            done_a = Some(now);
        }
        if on_b >= wanted && done_b.is_none() {
            done_b = Some(now);
        }
        progress.tick(on_a.min(on_b).saturating_sub(critical_before) as usize);
        ensure!(
            now < give_up,
            "not all {count} leases critical 120 s after the last deadline (A {on_a}, B {on_b})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish("");
    let cpu_to = CpuUse::now(a, b, postgres).await?;
    let [cpu_a, cpu_b, cpu_postgres, window] = match &cpu_from {
        Some(from) => cpu_to.since(from),
        None => [0.0; 4],
    };
    let (done_a, done_b) = (done_a.unwrap_or(last), done_b.unwrap_or(last));
    let all = done_a.max(done_b).saturating_duration_since(last);
    report.add(
        format!("mass lapse of {count} leases (self-preservation off): all critical on A and B"),
        format!(
            "{:.1} s after the last deadline (A {:.1} s, B {:.1} s; deadlines spread over {:.1} s); CPU from the first deadline, {window:.1} s: A {cpu_a:.1} s, B {cpu_b:.1} s, Postgres {cpu_postgres:.1} s",
            all.as_secs_f64(),
            done_a.saturating_duration_since(last).as_secs_f64(),
            done_b.saturating_duration_since(last).as_secs_f64(),
            last.saturating_duration_since(first).as_secs_f64()
        ),
        "<= 5 s after the last deadline",
        Some(all <= Duration::from_secs(5)),
        json!({
            "leases": count,
            "seconds_after_last_deadline": all.as_secs_f64(),
            "a_seconds": done_a.saturating_duration_since(last).as_secs_f64(),
            "b_seconds": done_b.saturating_duration_since(last).as_secs_f64(),
            "deadline_spread_seconds": last.saturating_duration_since(first).as_secs_f64(),
            "cpu_seconds": { "window": window, "a": cpu_a, "b": cpu_b, "postgres": cpu_postgres },
        }),
    );
    Ok(())
}

/// Self-preservation on: reads both replicas' summaries until each has shown the mode
/// begin and end, and requires that none of `lapse`'s leases turned critical meanwhile and
/// that it lasted its maximum. Their lapses apply one full TTL after its end (up to
/// `longest_ttl`, over a minute and a half at a million instances): not waited for.
async fn held(
    http: &reqwest::Client,
    a: &Registry,
    b: &Registry,
    lapse: &Lapse,
    max: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Lapse {
        count,
        critical_before,
        first,
        last,
        longest_ttl,
    } = *lapse;
    scenarios::phase(&format!(
        "{count} leases left to lapse with self-preservation on (threshold {HELD_THRESHOLD}, max {} s)",
        max.as_secs()
    ));
    // When the mode began, from the database's record of it; per replica (A, B), whether
    // its summary showed it and when it showed it ended.
    let mut since = None;
    let mut shown = [false; 2];
    let mut ended: [Option<Instant>; 2] = [None; 2];
    // The most of the leases critical, and held, that a summary counted.
    let (mut critical, mut most_held) = (0, 0);
    let give_up = last + max + HELD_GIVE_UP;
    while ended.iter().any(Option::is_none) && Instant::now() < give_up {
        for (k, registry) in [a, b].into_iter().enumerate() {
            let now = summary(http, registry).await?;
            critical = critical.max(now.critical.saturating_sub(critical_before));
            match now.preserving {
                Some((began, holding)) => {
                    if since.is_none() {
                        eprintln!("  self-preservation began at {began}");
                    }
                    since.get_or_insert_with(|| instant_of(began));
                    shown[k] = true;
                    most_held = most_held.max(holding);
                }
                None if shown[k] && ended[k].is_none() => {
                    eprintln!("  self-preservation ended (replica {})", ["A", "B"][k]);
                    ended[k] = Some(Instant::now());
                }
                None => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let began = since.map(|since| seconds_until(since, last));
    let lasted = since
        .zip(ended[0].zip(ended[1]))
        .map(|(since, (on_a, on_b))| on_a.min(on_b).saturating_duration_since(since));
    let mode = match (began, lasted) {
        (Some(began), Some(lasted)) => format!(
            "it began {began:.1} s before the last deadline, held {most_held} at most and ended {:.1} s after it began",
            lasted.as_secs_f64()
        ),
        (Some(began), None) => format!(
            "it began {began:.1} s before the last deadline, held {most_held} at most and had not ended on A and B {} s after its maximum",
            HELD_GIVE_UP.as_secs()
        ),
        (None, _) => "it never began".to_owned(),
    };
    report.add(
        format!(
            "mass lapse of {count} leases (self-preservation on, threshold {HELD_THRESHOLD}, max {} s): none critical on A and B until its maximum",
            max.as_secs()
        ),
        format!(
            "{critical} critical; {mode} (deadlines spread over {:.1} s; the lapses, due one TTL after its end, up to {} s, not waited for)",
            last.saturating_duration_since(first).as_secs_f64(),
            longest_ttl.as_secs()
        ),
        "none critical until the maximum",
        Some(critical == 0 && lasted.is_some_and(|lasted| lasted >= max)),
        json!({
            "leases": count,
            "threshold": HELD_THRESHOLD,
            "max_seconds": max.as_secs(),
            "critical": critical,
            "held_most": most_held,
            "began_seconds_before_last_deadline": began,
            "lasted_seconds": lasted.map(|lasted| lasted.as_secs_f64()),
            "deadline_spread_seconds": last.saturating_duration_since(first).as_secs_f64(),
            "longest_ttl_seconds": longest_ttl.as_secs(),
        }),
    );
    Ok(())
}

/// Seconds from `at` until `to`, negative when `at` is later.
fn seconds_until(at: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(at) {
        Some(ahead) => ahead.as_secs_f64(),
        None => -at.saturating_duration_since(to).as_secs_f64(),
    }
}

/// `at`, a time the registry read from the clock of this same machine, as an [`Instant`].
fn instant_of(at: chrono::DateTime<chrono::Utc>) -> Instant {
    let now = Instant::now();
    let ago = (chrono::Utc::now() - at).to_std().unwrap_or_default();
    now.checked_sub(ago).unwrap_or(now)
}

/// What the bench reads in a replica's summary.
struct Summary {
    /// Instances critical.
    critical: u64,
    /// While self-preservation is active: since when, and how many lapses it holds.
    preserving: Option<(chrono::DateTime<chrono::Utc>, u64)>,
}

/// The replica's `GET /v1/status?summary=true`.
async fn summary(http: &reqwest::Client, registry: &Registry) -> anyhow::Result<Summary> {
    let (_, _, body) = timed_get(
        http,
        &registry.url("/v1/status?summary=true"),
        Duration::from_secs(30),
    )
    .await?;
    let critical = body["instances"]["critical"]
        .as_u64()
        .context("summary without critical")?;
    let mode = &body["self_preservation"];
    let active = mode["active"]
        .as_bool()
        .context("summary without self_preservation")?;
    let preserving = if active {
        let since = mode["since"]
            .as_str()
            .context("self-preservation without since")?;
        let since = chrono::DateTime::parse_from_rfc3339(since)
            .with_context(|| format!("self-preservation since {since}"))?
            .with_timezone(&chrono::Utc);
        Some((since, mode["held"].as_u64().unwrap_or(0)))
    } else {
        None
    };
    Ok(Summary {
        critical,
        preserving,
    })
}

/// One lookup of a [`Poller`].
struct Sample {
    at: Instant,
    latency: Duration,
    ok: bool,
}

/// Clients that each GET their URL, one request at a time, every 10 ms, until finished:
/// the latency a light client sees while the registry does something heavy.
struct Poller {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Poller {
    fn start(http: &reqwest::Client, urls: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = urls
            .into_iter()
            .map(|url| {
                let (http, stop) = (http.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let ok = match http.get(&url).timeout(Duration::from_secs(10)).send().await
                        {
                            Ok(response) => {
                                response.status().is_success() && response.bytes().await.is_ok()
                            }
                            Err(_) => false,
                        };
                        samples.push(Sample {
                            at,
                            latency: at.elapsed(),
                            ok,
                        });
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    samples
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for task in self.tasks {
            if let Ok(done) = task.await {
                samples.extend(done);
            }
        }
        samples
    }
}
