//! `registry-bench` (run by `make bench`): measures the registry against its targets
//! (docs/performance.md), prints a table and writes `target/bench/latest.json`.
//!
//! Speed is a promise of the project, so it is measured on the real release binary, on
//! SQLite and on Postgres, in one run: lookups against a no-op ceiling served in the same
//! run on the same two cores (so the ratio holds on a noisy machine), registrations,
//! heartbeats, watch fan-out, failure detection, propagation between replicas, resident
//! memory per instance, and DNS queries in turns with NSD answering the same records.
//! Peers and limits are measured in the same run, next to the registry's own figures:
//! etcd doing the same operations over gRPC, and pgbench writing a registration's rows.
//! `--quick` (or `BENCH_QUICK=1`) runs the same phases with small counts, as a smoke
//! test of the program itself; its figures mean nothing. `--scale` (`make bench-scale`)
//! measures the registry at a million instances instead (`scale.rs`).

mod dashboard;
mod dns;
#[cfg(feature = "etcd")]
mod etcd;
mod instructions;
mod load;
mod pgbench;
mod registry;
mod scale;
mod scenarios;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use load::{SideServer, WrkResult};
use registry::{Backend, Database, Registry};

/// Counts and durations of one run.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    quick: bool,
    services: usize,
    per_service: usize,
    load_seconds: u64,
    lookup_connections: usize,
    /// Lookups and the ceilings take turns this many times, `lookup_seconds` each.
    lookup_rounds: u32,
    lookup_seconds: u64,
    heartbeat_connections: usize,
    writers: usize,
    /// Registrations (on Postgres in turns with etcd's) run this many times,
    /// `registration_seconds` each.
    registration_rounds: u32,
    registration_seconds: u64,
    watchers: usize,
    detection_instances: usize,
    detection_ttl_seconds: u64,
    propagation_writes: usize,
    memory_instances: usize,
    /// The DNS row: the registry and NSD take turns this many times, `dns_seconds` each.
    dns_rounds: u32,
    dns_seconds: u64,
    /// Instances of the service the DNS queries ask for.
    dns_instances: usize,
    dnsperf: dns::DnsperfOptions,
    /// pgbench's batched form: registrations per transaction.
    pgbench_batch: usize,
    /// The phases to run (`BENCH_PHASES=lookups,fanout,...`); all when unset.
    phases: Vec<String>,
    backends: Vec<String>,
}

impl Plan {
    fn full() -> Self {
        Self {
            quick: false,
            services: 1_000,
            per_service: 10,
            load_seconds: 8,
            lookup_connections: 32,
            lookup_rounds: 3,
            lookup_seconds: 4,
            heartbeat_connections: 32,
            writers: 64,
            registration_rounds: 3,
            registration_seconds: 4,
            watchers: 10_000,
            detection_instances: 3,
            detection_ttl_seconds: 2,
            propagation_writes: 200,
            memory_instances: 100_000,
            dns_rounds: 2,
            dns_seconds: 8,
            dns_instances: 10,
            dnsperf: DNSPERF,
            pgbench_batch: 32,
            phases: list_from_env("BENCH_PHASES"),
            backends: list_from_env("BENCH_BACKENDS"),
        }
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.is_empty() || self.phases.iter().any(|p| p == phase)
    }

    /// Whether a phase measured on each backend's seeded registry is to run (when none
    /// is, the backends are not seeded at all).
    fn runs_on_backends(&self) -> bool {
        [
            "lookups",
            "consul",
            "tracing",
            "heartbeats",
            "registrations",
            "etcd",
            "pgbench",
            "fanout",
            "detection",
        ]
        .iter()
        .any(|phase| self.runs(phase))
    }

    fn on(&self, backend: Backend) -> bool {
        self.backends.is_empty() || self.backends.iter().any(|b| b == backend.name())
    }

    fn quick() -> Self {
        Self {
            quick: true,
            services: 20,
            per_service: 3,
            load_seconds: 1,
            lookup_rounds: 1,
            lookup_seconds: 1,
            registration_rounds: 1,
            registration_seconds: 1,
            watchers: 100,
            detection_instances: 1,
            propagation_writes: 10,
            memory_instances: 1_000,
            dns_rounds: 1,
            dns_seconds: 1,
            ..Self::full()
        }
    }
}

/// A comma-separated list from the environment (empty when unset).
fn list_from_env(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One line of the table.
#[derive(Debug, Serialize)]
struct Row {
    metric: String,
    value: String,
    target: String,
    pass: Option<bool>,
    /// The figures behind `value`, for the JSON file.
    data: serde_json::Value,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        metric: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        pass: Option<bool>,
        data: serde_json::Value,
    ) {
        let row = Row {
            metric: metric.into(),
            value: value.into(),
            target: target.into(),
            pass,
            data,
        };
        eprintln!(
            "  = {}: {}{}",
            row.metric,
            row.value,
            match row.pass {
                Some(true) => " (pass)",
                Some(false) => " (MISS)",
                None => "",
            }
        );
        self.rows.push(row);
    }

    /// A row saying why `metric` was not measured.
    fn not_measured(&mut self, metric: impl Into<String>, target: &str, reason: &str) {
        let metric = metric.into();
        eprintln!("  {metric}: skipped, {reason}");
        self.add(
            metric,
            format!("not measured: {reason}"),
            target,
            None,
            json!({ "skipped": reason }),
        );
    }

    /// A row of the registry's figure over a peer's or a limit's, when the registry's was
    /// measured in this run; `at_least` is the target, if any.
    fn ratio(
        &mut self,
        metric: impl Into<String>,
        registry: Option<f64>,
        peer: f64,
        at_least: Option<f64>,
    ) {
        let Some(registry) = registry else {
            return;
        };
        let ratio = registry / peer.max(1.0);
        self.add(
            metric,
            format!("{ratio:.2} ({registry:.0}/s / {peer:.0}/s)"),
            at_least.map_or(String::new(), |target| format!(">= {target}")),
            at_least.map(|target| ratio >= target),
            json!({ "ratio": ratio, "registry_per_second": registry, "peer_per_second": peer }),
        );
    }

    fn table(&self) -> String {
        let verdict = |pass: Option<bool>| match pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "-",
        };
        let mut out = String::from("| metric | value | target | result |\n|---|---|---|---|\n");
        for row in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                row.metric,
                row.value,
                row.target,
                verdict(row.pass)
            ));
        }
        out
    }
}

fn main() -> anyhow::Result<()> {
    if let Some(mode) = instructions::Mode::from_args() {
        return mode.run();
    }
    let quick = std::env::args().skip(1).any(|a| a == "--quick")
        || std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!(
            "registry-bench [--quick | --scale [--instances N]]: measure the registry (see README, Benchmarks)"
        );
        return Ok(());
    }
    let scale_options = scale::Options::from_args()?;
    let plan = if quick { Plan::quick() } else { Plan::full() };
    // The bench's own tasks (seeding, watchers, blocking queries) are light: two workers,
    // like the registry's runtime on this machine.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match scale_options {
        Some(options) => runtime.block_on(scale::run(options)),
        None => runtime.block_on(run(plan)),
    }
}

async fn run(mut plan: Plan) -> anyhow::Result<()> {
    let started = Instant::now();
    // wrk drives the backends' request rates only (the DNS row has dnsperf).
    anyhow::ensure!(
        !plan.runs_on_backends() || load::wrk_available().await,
        "wrk is missing: install it (apt-get install wrk); make bench does as root"
    );
    let open_files = raise_open_files_limit().await;
    // Each watcher is one socket here and one in the registry; keep room for the rest.
    let fit = open_files.saturating_sub(1_000) as usize;
    if plan.watchers > fit {
        eprintln!(
            "open files limited to {open_files}: {fit} watchers instead of {}",
            plan.watchers
        );
        plan.watchers = fit;
    }
    let admin_url = postgres_admin_url()?;
    let (fsync, synchronous_commit) = registry::postgres_durability(&admin_url).await?;
    let side = SideServer::start()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut report = Report::default();
    eprintln!(
        "registry-bench{}: {} services x {} instances, {} s per load run",
        if plan.quick { " (quick)" } else { "" },
        plan.services,
        plan.per_service,
        plan.load_seconds
    );
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if !plan.on(backend) || !plan.runs_on_backends() {
            continue;
        }
        eprintln!("[{}]", backend.name());
        let database = Database::fresh(backend, &admin_url).await?;
        let outcome = one_backend(
            &plan,
            backend,
            &database,
            &admin_url,
            &side,
            &http,
            &mut report,
        )
        .await;
        database.drop_now().await?;
        outcome?;
    }
    if plan.runs("propagation") {
        eprintln!("[postgres, three replicas]");
        propagation(&plan, &admin_url, &http, &mut report).await?;
    }
    if plan.runs("memory") {
        eprintln!("[sqlite, memory]");
        memory(&plan, &admin_url, &http, &mut report).await?;
    }
    if plan.runs("dns") {
        eprintln!("[sqlite, DNS]");
        dns_queries(&plan, &admin_url, &http, &mut report).await?;
    }
    drop(side);

    let table = report.table();
    println!("{table}");
    let path = output_path(if plan.quick {
        "quick.json"
    } else {
        "latest.json"
    })?;
    let document = json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "seconds": started.elapsed().as_secs(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "postgres": { "fsync": fsync, "synchronous_commit": synchronous_commit },
        "plan": plan,
        "results": report.rows,
    });
    write_json(&path, &document)?;
    eprintln!(
        "wrote {} in {} s (Postgres fsync={fsync}, synchronous_commit={synchronous_commit})",
        path.display(),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Writes a run's figures to `path` (`target/bench/`), making the folder if need be.
fn write_json(path: &std::path::Path, document: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(document)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A row of the registry's rate as a share of the no-op ceiling taken in turns with it,
/// with its target share.
fn share_of_ceiling(
    report: &mut Report,
    metric: String,
    served: &WrkResult,
    ceiling: &WrkResult,
    target: f64,
) {
    let share = served.per_second / ceiling.per_second.max(1.0);
    report.add(
        metric,
        format!("{}; / ceiling: {share:.2}", served.summary()),
        format!(">= {target:.2} of the ceiling"),
        Some(share >= target && clean(served)),
        wrk_json(served),
    );
}

/// The registry's rates on one backend in this run, for the peers' ratio rows.
#[derive(Debug, Default)]
struct RegistryFigures {
    lookups_per_second: Option<f64>,
    heartbeats_per_second: Option<f64>,
    registrations_per_second: Option<f64>,
}

/// Lookups, the ceiling, tracing on and off (on SQLite), heartbeats, registrations,
/// fan-out and detection on one backend; on Postgres, etcd's registrations in turns with
/// the registry's, the rest of etcd and pgbench right after, so that their figures are
/// taken minutes apart at most.
async fn one_backend(
    plan: &Plan,
    backend: Backend,
    database: &Database,
    admin_url: &str,
    side: &SideServer,
    http: &reqwest::Client,
    report: &mut Report,
) -> anyhow::Result<()> {
    let name = backend.name();
    let load_for = Duration::from_secs(plan.load_seconds);
    let registry = Registry::start(&database.url, &[]).await?;
    let seeded = plan.services * plan.per_service;
    let seed_rate = scenarios::seed(
        http,
        &registry,
        plan.services,
        seeded,
        plan.writers,
        "seeding",
    )
    .await?;
    scenarios::check_seeded(http, &registry, plan.per_service).await?;

    let mut figures = RegistryFigures::default();
    if plan.runs("lookups") {
        figures.lookups_per_second =
            Some(lookups(plan, backend, database, &registry, side, http, report).await?);
    }

    if plan.runs("heartbeats") {
        scenarios::phase("heartbeats (wrk, 1 thread)");
        let script = load::heartbeat_script(plan.services, plan.per_service);
        let beats = load::wrk(
            &registry.base,
            &script,
            plan.heartbeat_connections,
            load_for,
        )
        .await?;
        figures.heartbeats_per_second = Some(beats.per_second);
        report.add(
            format!("{name}: heartbeats/s"),
            beats.summary(),
            ">= 30000/s",
            Some(beats.per_second >= 30_000.0 && clean(&beats)),
            wrk_json(&beats),
        );
    }

    // etcd's registrations take turns with the registry's: the machine's load moves
    // from minute to minute, and the ratio of the two compares runs seconds apart.
    #[cfg(feature = "etcd")]
    let mut etcd = if backend == Backend::Postgres && plan.runs("etcd") {
        etcd::Peer::start(report).await?
    } else {
        None
    };
    if plan.runs("registrations") {
        scenarios::phase(&format!(
            "registrations, {} writers (wrk, 1 thread, {} rounds of {} s)",
            plan.writers, plan.registration_rounds, plan.registration_seconds
        ));
        let each = Duration::from_secs(plan.registration_seconds);
        let mut runs = Vec::new();
        for round in 0..plan.registration_rounds {
            // Each round registers new instances: its ids start where no other round's do.
            let first = u64::from(round) * 1_000_000_000;
            let script = load::registration_script(first);
            let run = load::wrk(&registry.base, &script, plan.writers, each).await?;
            eprintln!("    {}", run.summary());
            runs.push(run);
            #[cfg(feature = "etcd")]
            if let Some(etcd) = etcd.as_mut() {
                etcd.registrations(plan, first).await?;
            }
        }
        let writes = load::combine(&runs);
        let (target, pass) = match backend {
            Backend::Postgres => (
                ">= 5000/s",
                Some(writes.per_second >= 5_000.0 && clean(&writes)),
            ),
            Backend::Sqlite => ("", (!clean(&writes)).then_some(false)),
        };
        figures.registrations_per_second = Some(writes.per_second);
        report.add(
            format!("{name}: registrations/s, {} writers", plan.writers),
            format!(
                "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms; seeding {seed_rate:.0}/s)",
                writes.per_second, writes.p50_ms, writes.p99_ms
            ),
            target,
            pass,
            json!({ "wrk": wrk_json(&writes), "seeding_per_second": seed_rate }),
        );
    }

    if backend == Backend::Postgres && plan.runs("etcd") {
        #[cfg(feature = "etcd")]
        if let Some(etcd) = etcd {
            etcd.report_rows(plan, &registry, http, &figures, report)
                .await?;
        }
        #[cfg(not(feature = "etcd"))]
        report.not_measured(
            "postgres: registrations / etcd lease grant + put",
            ">= 3",
            "registry-bench built without its etcd feature (make bench enables it when protoc is installed)",
        );
    }

    if backend == Backend::Postgres && plan.runs("pgbench") {
        pgbench::report_rows(plan, admin_url, http, &figures, report).await?;
    }

    if plan.runs("fanout") {
        let fan = scenarios::fan_out(http, &registry, plan.watchers).await?;
        report.add(
            format!("{name}: watch fan-out, {} watchers", fan.watchers),
            format!(
                "{} notified; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                fan.notified, fan.spread.p50_ms, fan.spread.p99_ms, fan.spread.max_ms
            ),
            "all within 1 s",
            Some(fan.notified == fan.watchers && fan.spread.max_ms <= 1_000.0),
            serde_json::to_value(&fan)?,
        );
    }

    if plan.runs("detection") {
        let ttl = Duration::from_secs(plan.detection_ttl_seconds);
        let mut progress = scenarios::Progress::new("failure detection", plan.detection_instances);
        let detected = scenarios::detection(http, &registry, plan.detection_instances, ttl).await?;
        progress.tick(plan.detection_instances);
        progress.finish("");
        let limit_ms = (ttl + Duration::from_secs(1)).as_secs_f64() * 1e3;
        report.add(
            format!("{name}: failure detection, TTL {} s", ttl.as_secs()),
            format!(
                "max {:.2} s (p50 {:.2} s) after the last heartbeat",
                detected.max_ms / 1e3,
                detected.p50_ms / 1e3
            ),
            format!("<= TTL + 1 s = {:.0} s", limit_ms / 1e3),
            Some(detected.max_ms <= limit_ms),
            serde_json::to_value(detected)?,
        );
    }
    registry.stop().await?;
    Ok(())
}

/// Lookups, `/healthz` and heartbeats at 32 connections, in turns with the no-op ceiling,
/// the ceiling answering a lookup's bytes and (on SQLite) a second registry on the same database exporting traces
/// over OTLP to a sink that accepts them: every figure of one round is taken within
/// seconds of the others, so the load the rest of the machine adds weighs on all alike.
/// Answers the registry's lookups per second.
async fn lookups(
    plan: &Plan,
    backend: Backend,
    database: &Database,
    registry: &Registry,
    side: &SideServer,
    http: &reqwest::Client,
    report: &mut Report,
) -> anyhow::Result<f64> {
    let name = backend.name();
    let answer = http
        .get(registry.url("/v1/services/svc-0?status=passing"))
        .send()
        .await?
        .bytes()
        .await?;
    let answer_size = answer.len();
    *side
        .sized_body
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = answer;
    let consul = plan.runs("consul");
    let consul_answer = http
        .get(registry.url("/v1/health/service/svc-0?passing=1"))
        .send()
        .await?
        .bytes()
        .await?;
    let consul_answer_size = consul_answer.len();
    *side
        .consul_sized_body
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = consul_answer;
    let traced = if backend == Backend::Sqlite && plan.runs("tracing") {
        Some(
            Registry::start(
                &database.url,
                &[(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://{}", side.addr),
                )],
            )
            .await?,
        )
    } else {
        None
    };
    let script = load::lookup_script("", plan.services);
    let sized_script = load::lookup_script("/sized", plan.services);
    let healthz_script = load::healthz_script();
    let consul_script = load::consul_lookup_script("", plan.services);
    let consul_sized_script = load::consul_lookup_script("/sized", plan.services);
    let heartbeat_script = load::heartbeat_script(plan.services, plan.per_service);
    let side_base = side.base();
    let mut targets = vec![
        (registry.base.as_str(), script.as_str()),
        (side_base.as_str(), script.as_str()),
        (side_base.as_str(), sized_script.as_str()),
        (registry.base.as_str(), healthz_script.as_str()),
        (registry.base.as_str(), heartbeat_script.as_str()),
    ];
    if consul {
        targets.push((registry.base.as_str(), consul_script.as_str()));
        targets.push((side_base.as_str(), consul_sized_script.as_str()));
    }
    let traced_at = targets.len();
    if let Some(traced) = &traced {
        targets.push((traced.base.as_str(), script.as_str()));
    }
    scenarios::phase(&format!(
        "lookups, /healthz and heartbeats, in turns with {} (wrk, 1 thread, {} rounds of {} s)",
        if traced.is_some() {
            "the ceilings and a traced registry"
        } else {
            "the ceilings"
        },
        plan.lookup_rounds,
        plan.lookup_seconds
    ));
    let results = load::in_turns(
        &targets,
        plan.lookup_connections,
        plan.lookup_rounds,
        Duration::from_secs(plan.lookup_seconds),
    )
    .await;
    if let Some(traced) = traced {
        traced.stop().await?;
    }
    let results = results?;
    let (served, ceiling, sized, healthz, beats) =
        (results[0], results[1], results[2], results[3], results[4]);
    let ratio = served.per_second / ceiling.per_second.max(1.0);
    report.add(
        format!("{name}: lookups/s, {} conns", plan.lookup_connections),
        served.summary(),
        "",
        (!clean(&served)).then_some(false),
        wrk_json(&served),
    );
    report.add(
        format!("{name}: no-op axum ceiling/s"),
        ceiling.summary(),
        "",
        None,
        wrk_json(&ceiling),
    );
    report.add(
        format!("{name}: lookups / ceiling"),
        format!("{ratio:.2}"),
        ">= 0.75",
        Some(ratio >= 0.75),
        json!({ "ratio": ratio }),
    );
    report.add(
        format!("{name}: no-op ceiling answering a lookup's {answer_size} B"),
        format!(
            "{}; lookups / this: {:.2}",
            sized.summary(),
            served.per_second / sized.per_second.max(1.0)
        ),
        "",
        None,
        wrk_json(&sized),
    );
    share_of_ceiling(
        report,
        format!("{name}: registry GET /healthz/s"),
        &healthz,
        &ceiling,
        0.85,
    );
    share_of_ceiling(
        report,
        format!("{name}: heartbeats/s in turns with the ceiling"),
        &beats,
        &ceiling,
        0.65,
    );
    if consul {
        let (served, sized) = (results[5], results[6]);
        let ratio = served.per_second / sized.per_second.max(1.0);
        report.add(
            format!(
                "{name}: Consul health lookups/s ({} instances), {} conns",
                plan.per_service, plan.lookup_connections
            ),
            served.summary(),
            "",
            (!clean(&served)).then_some(false),
            wrk_json(&served),
        );
        report.add(
            format!("{name}: Consul lookups / no-op answering the same {consul_answer_size} B"),
            format!("{ratio:.2} (the no-op: {})", sized.summary()),
            ">= 0.60",
            Some(ratio >= 0.6),
            json!({ "ratio": ratio, "ceiling": wrk_json(&sized) }),
        );
    }
    if let Some(on) = results.get(traced_at) {
        report.add(
            format!("{name}: lookups/s, tracing off / on"),
            format!(
                "{:.0}/s / {:.0}/s ({:+.0}% with OTLP export)",
                served.per_second,
                on.per_second,
                (on.per_second / served.per_second.max(1.0) - 1.0) * 100.0
            ),
            "off costs nothing",
            None,
            json!({ "off": wrk_json(&served), "on": wrk_json(on) }),
        );
    }
    Ok(served.per_second)
}

/// Three replicas on one Postgres database: write on one, read on the other two.
async fn propagation(
    plan: &Plan,
    admin_url: &str,
    http: &reqwest::Client,
    report: &mut Report,
) -> anyhow::Result<()> {
    let database = Database::fresh(Backend::Postgres, admin_url).await?;
    let outcome = async {
        let a = Registry::start(&database.url, &[]).await?;
        let b = Registry::start(&database.url, &[]).await?;
        let c = Registry::start(&database.url, &[]).await?;
        let spread = scenarios::propagation(http, &a, [&b, &c], plan.propagation_writes).await;
        for replica in [a, b, c] {
            replica.stop().await?;
        }
        spread
    }
    .await;
    database.drop_now().await?;
    let spread = outcome?;
    report.add(
        format!(
            "postgres: propagation A -> B and C, {} writes",
            spread.count
        ),
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            spread.p50_ms, spread.p99_ms, spread.max_ms
        ),
        "p99 <= 200 ms",
        Some(spread.p99_ms <= 200.0),
        serde_json::to_value(spread)?,
    );
    Ok(())
}

/// The row of resident memory per instance: `rss_kib` before and after `count` instances
/// were added, against the 2 KiB target.
fn memory_per_instance(report: &mut Report, name: String, rss_kib: (u64, u64), count: usize) {
    let (before, after) = rss_kib;
    let per_instance = after.saturating_sub(before) as f64 * 1024.0 / count as f64;
    report.add(
        name,
        format!(
            "{per_instance:.0} B (RSS {} MiB -> {} MiB)",
            before / 1024,
            after / 1024
        ),
        "<= 2048 B",
        Some(per_instance <= 2048.0),
        json!({ "rss_before_kib": before, "rss_after_kib": after, "instances": count, "bytes_per_instance": per_instance }),
    );
}

/// Resident memory of a registry holding `memory_instances` instances, less what it held
/// before the first one.
async fn memory(
    plan: &Plan,
    admin_url: &str,
    http: &reqwest::Client,
    report: &mut Report,
) -> anyhow::Result<()> {
    // SQLite: the default store, and the faster one to fill here (the view, which holds
    // the instances, is the same on both; SQLite's page cache counts against it).
    let database = Database::fresh(Backend::Sqlite, admin_url).await?;
    let outcome = async {
        let registry = Registry::start(&database.url, &[]).await?;
        // One request of each kind first, so buffers every request needs count as baseline.
        scenarios::seed(http, &registry, 1, 1, 1, "warm-up").await?;
        let _ = http.get(registry.url("/v1/services/svc-0")).send().await?;
        let before = registry.rss_kib()?;
        let count = plan.memory_instances;
        // 100 instances per service, as large deployments have.
        let services = (count / 100).max(1);
        scenarios::seed(http, &registry, services, count, plan.writers, "seeding").await?;
        let after = registry.rss_kib()?;
        registry.stop().await?;
        anyhow::Ok((before, after, count))
    }
    .await;
    database.drop_now().await?;
    let (before, after, count) = outcome?;
    memory_per_instance(
        report,
        format!("sqlite: resident memory per instance at {count}"),
        (before, after),
        count,
    );
    Ok(())
}

/// How dnsperf drives both DNS servers: what gave NSD its highest rate on this two-core
/// machine (docs/performance.md), and the same for the registry.
const DNSPERF: dns::DnsperfOptions = dns::DnsperfOptions {
    clients: 16,
    threads: 2,
    outstanding: 500,
};

/// A queries for a service of `dns_instances` instances against the registry's DNS
/// interface and against NSD answering the same records from a static zone (the
/// ceiling), in turns: registry, NSD, registry, NSD.
async fn dns_queries(
    plan: &Plan,
    admin_url: &str,
    http: &reqwest::Client,
    report: &mut Report,
) -> anyhow::Result<()> {
    if let Some(reason) = dns::missing_tools() {
        report.not_measured("dns: registry / NSD", ">= 0.50", &reason);
        return Ok(());
    }
    let expected: Vec<Ipv4Addr> = (0..plan.dns_instances).map(dns::instance_address).collect();
    // SQLite: DNS answers come from the registry's view in memory, whichever store is
    // behind it.
    let database = Database::fresh(Backend::Sqlite, admin_url).await?;
    let outcome = async {
        // Port 0: the registry binds UDP and TCP on one free port and logs it.
        let registry = Registry::start(
            &database.url,
            &[("REGISTRY_DNS_ADDR", "127.0.0.1:0".to_owned())],
        )
        .await?;
        let measured = match registry.dns {
            Some(dns_addr) => dns_in_turns(plan, http, &registry, dns_addr, &expected).await,
            None => Err(anyhow::anyhow!(
                "the registry logged no DNS address: is it built without the DNS interface?"
            )),
        };
        registry.stop().await?;
        measured
    }
    .await;
    database.drop_now().await?;
    let turns = outcome?;
    let (served, ceiling) = (dns::combine(&turns.registry), dns::combine(&turns.nsd));
    let ratio = served.per_second / ceiling.per_second.max(1.0);
    report.add(
        format!(
            "dns: registry A queries/s, {} instances",
            plan.dns_instances
        ),
        served.summary(),
        "",
        (!served.clean()).then_some(false),
        json!({
            "total": served,
            "runs": turns.registry,
            "answer_bytes": turns.registry_answer_bytes,
            "log_lines_during_runs": turns.registry_log_lines,
        }),
    );
    report.add(
        "dns: NSD, same records from a static zone",
        ceiling.summary(),
        "",
        (!ceiling.clean()).then_some(false),
        json!({
            "total": ceiling,
            "runs": turns.nsd,
            "answer_bytes": turns.nsd_answer_bytes,
        }),
    );
    report.add(
        "dns: registry / NSD",
        format!("{ratio:.2}"),
        ">= 0.50",
        Some(ratio >= 0.5),
        json!({ "ratio": ratio, "dnsperf": plan.dnsperf }),
    );
    Ok(())
}

/// What the DNS turns measured.
struct DnsTurns {
    registry: Vec<dns::DnsperfResult>,
    nsd: Vec<dns::DnsperfResult>,
    registry_answer_bytes: usize,
    nsd_answer_bytes: usize,
    /// Lines the registry logged while dnsperf ran: about one per query would mean a
    /// log line per DNS request.
    registry_log_lines: u64,
}

/// Seeds the service, checks that the registry and NSD both answer it with every
/// instance, then takes turns.
async fn dns_in_turns(
    plan: &Plan,
    http: &reqwest::Client,
    registry: &Registry,
    dns_addr: SocketAddr,
    expected: &[Ipv4Addr],
) -> anyhow::Result<DnsTurns> {
    for (k, address) in expected.iter().enumerate() {
        let response = http
            .put(registry.url(&format!(
                "/v1/services/{}/instances/{}-{k}",
                dns::SERVICE,
                dns::SERVICE
            )))
            .header("content-type", "application/json")
            .body(
                json!({ "url": format!("http://{address}:8080/"), "ttl_seconds": 600 }).to_string(),
            )
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "registration answered {status}");
    }
    let registry_answer = dns::wait_for_records(
        dns_addr,
        expected,
        "the registry (REGISTRY_DNS_ADDR)",
        Duration::from_secs(10),
    )
    .await?;
    let nsd = dns::Nsd::start(expected).await?;
    let turns = async {
        let nsd_answer = dns::check_answer(nsd.addr, expected, "NSD").await?;
        let each = Duration::from_secs(plan.dns_seconds);
        scenarios::phase(&format!(
            "A queries of {}, in turns with NSD (dnsperf -c {} -T {} -q {}, {} rounds of {} s)",
            dns::query_name(),
            plan.dnsperf.clients,
            plan.dnsperf.threads,
            plan.dnsperf.outstanding,
            plan.dns_rounds,
            plan.dns_seconds
        ));
        let (mut served, mut ceiling) = (Vec::new(), Vec::new());
        let mut log_lines = 0;
        for _ in 0..plan.dns_rounds {
            let before = registry.log_lines();
            let run = dns::dnsperf(dns_addr, plan.dnsperf, each).await?;
            log_lines += registry.log_lines() - before;
            let nsd_run = dns::dnsperf(nsd.addr, plan.dnsperf, each).await?;
            eprintln!(
                "    registry {:.0} q/s, NSD {:.0} q/s",
                run.per_second, nsd_run.per_second
            );
            served.push(run);
            ceiling.push(nsd_run);
        }
        anyhow::Ok(DnsTurns {
            registry: served,
            nsd: ceiling,
            registry_answer_bytes: registry_answer.size,
            nsd_answer_bytes: nsd_answer.size,
            registry_log_lines: log_lines,
        })
    }
    .await;
    nsd.stop().await?;
    let turns = turns?;
    if turns.registry_log_lines > 100 {
        eprintln!(
            "  the registry logged {} lines while answering {} queries",
            turns.registry_log_lines,
            turns.registry.iter().map(|r| r.completed).sum::<u64>()
        );
    }
    Ok(turns)
}

/// No socket errors, timeouts or error answers.
fn clean(result: &WrkResult) -> bool {
    result.errors == 0 && result.bad_status == 0 && result.requests > 0
}

fn wrk_json(result: &WrkResult) -> serde_json::Value {
    json!({
        "requests": result.requests,
        "per_second": result.per_second,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "socket_errors": result.errors,
        "error_answers": result.bad_status,
    })
}

/// `DATABASE_URL`, else what `scripts/ensure-postgres.sh` finds or starts.
fn postgres_admin_url() -> anyhow::Result<String> {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && url.starts_with("postgres")
    {
        return Ok(url);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ensure-postgres.sh");
    let output = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "the bench needs Postgres: set DATABASE_URL"
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `target/bench/<name>` of the target folder this program was built in (`latest.json`
/// for a run, `quick.json` for a quick one, so a smoke run never replaces the real
/// figures, `scale.json` for `--scale`).
fn output_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(|profile| profile.parent())
        .context("target folder")?;
    Ok(target.join("bench").join(name))
}

/// Raises this process's open-files limit to its hard limit with `prlimit` (util-linux;
/// doing it in-process would need unsafe code), so the watchers fit; the registry started
/// afterwards inherits it. Answers the soft limit in force.
async fn raise_open_files_limit() -> u64 {
    let pid = std::process::id().to_string();
    let hard = read_limit(1);
    if let Some(hard) = hard {
        let _ = tokio::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
            .status()
            .await;
    }
    read_limit(0).unwrap_or(1_024)
}

/// Field `column` (0 soft, 1 hard) of "Max open files" in `/proc/self/limits`.
fn read_limit(column: usize) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let values: Vec<&str> = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .collect();
    values.get(column)?.parse().ok()
}
