//! The etcd rows: etcd 3.4 (Debian's `etcd-server`), the store many service registries
//! and Kubernetes keep their state in, doing the registry's three operations over its own
//! gRPC API, with the concurrency of the registry's rows, in the same run on the same
//! cores, so the registry's figures can be read against a peer's:
//!
//! - a lookup is a prefix range over a service's keys, one key per instance holding the
//!   instance as the registry answers it;
//! - a durable registration is a lease grant and a put attached to it (two raft writes,
//!   each on disk before the answer), with the body wrk's registrations send; etcd's
//!   registrations and the registry's take turns, so their ratio compares runs seconds
//!   apart rather than minutes;
//! - a heartbeat is a lease keep-alive on a stream.
//!
//! The bench starts its own etcd (one member, etcd's defaults) on free ports of 127.0.0.1
//! with a scratch data folder under the temporary folder, and stops it after; an etcd
//! service Debian may have started on install is left alone. Each worker has its own
//! client and connection, as each of wrk's connections is its own. Built only with the
//! `etcd` feature (the client's code is generated with `protoc`), which `make bench`
//! enables.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::{Client, GetOptions, PutOptions};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::registry::{Registry, unique_suffix};
use crate::scenarios::{self, Spread, median_of_runs};
use crate::{Plan, RegistryFigures, Report, load};

/// The lease of a registration, as wrk's registrations ask (`ttl_seconds`).
const LEASE_SECONDS: i64 = 600;

/// The service the prefix ranges read: the registry's `svc-0`, under etcd's usual layout.
const SERVICE_PREFIX: &str = "/services/svc-0/";

/// etcd, started for the Postgres section, and what its registrations did in their turns
/// with the registry's.
pub struct Peer {
    etcd: Etcd,
    grant_puts: Vec<Throughput>,
}

impl Peer {
    /// Starts etcd, or says in the report why the etcd rows are missing (`None`).
    pub async fn start(report: &mut Report) -> anyhow::Result<Option<Self>> {
        let Some(binary) = crate::dns::find_program("etcd") else {
            report.not_measured(
                "postgres: registrations / etcd lease grant + put",
                ">= 3",
                "etcd not installed (apt-get install etcd-server; make bench does as root)",
            );
            return Ok(None);
        };
        let etcd = Etcd::start(&binary).await?;
        Ok(Some(Self {
            etcd,
            grant_puts: Vec::new(),
        }))
    }

    /// One turn of etcd's registrations: lease grants with puts, `plan.writers` at a time
    /// for `plan.registration_seconds`, the keys of registrations `first + 1` onwards.
    pub async fn registrations(&mut self, plan: &Plan, first: u64) -> anyhow::Result<()> {
        scenarios::phase(&format!(
            "etcd: lease grant + put, {} writers, {} s",
            plan.writers, plan.registration_seconds
        ));
        let grant_put = drive(
            connect(&self.etcd.endpoint, plan.writers).await?,
            Duration::from_secs(plan.registration_seconds),
            move |mut client, n| async move {
                let registration = first + 1 + n;
                let lease = client.lease_grant(LEASE_SECONDS, None).await?;
                let (service, id) = load::registration_key(registration);
                client
                    .put(
                        format!("/services/{service}/{id}"),
                        load::registration_body(registration),
                        Some(PutOptions::new().with_lease(lease.id())),
                    )
                    .await?;
                Ok(client)
            },
        )
        .await?;
        eprintln!("    {}", grant_put.summary());
        self.grant_puts.push(grant_put);
        Ok(())
    }

    /// Measures etcd's lookups and heartbeats, stops etcd, and adds the etcd rows and the
    /// registry's figures over etcd's where both were measured in this run.
    pub async fn report_rows(
        self,
        plan: &Plan,
        registry: &Registry,
        http: &reqwest::Client,
        figures: &RegistryFigures,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let values = service_values(http, registry).await?;
        let measured = measure(plan, &self.etcd.endpoint, &values).await;
        self.etcd.stop().await?;
        let (range, keep_alive) = measured?;
        report.add(
            format!(
                "etcd: prefix range of {} keys/s, {} conns",
                values.len(),
                plan.lookup_connections
            ),
            range.summary(),
            "",
            None,
            serde_json::to_value(&range)?,
        );
        // No turns were taken when the registrations did not run (`BENCH_PHASES`).
        let grant_put =
            (!self.grant_puts.is_empty()).then(|| Throughput::combine(&self.grant_puts));
        if let Some(grant_put) = &grant_put {
            report.add(
                format!(
                    "etcd: lease grant + put/s, {} writers, in turns with the registry's",
                    plan.writers
                ),
                grant_put.summary(),
                "",
                None,
                serde_json::to_value(grant_put)?,
            );
        }
        report.add(
            format!(
                "etcd: lease keep-alive/s, {} conns",
                plan.heartbeat_connections
            ),
            keep_alive.summary(),
            "",
            None,
            serde_json::to_value(&keep_alive)?,
        );
        report.ratio(
            "postgres: lookups / etcd prefix range",
            figures.lookups_per_second,
            range.per_second,
            None,
        );
        if let Some(grant_put) = &grant_put {
            report.ratio(
                "postgres: registrations / etcd lease grant + put",
                figures.registrations_per_second,
                grant_put.per_second,
                Some(3.0),
            );
        }
        report.ratio(
            "postgres: heartbeats / etcd lease keep-alive",
            figures.heartbeats_per_second,
            keep_alive.per_second,
            None,
        );
        Ok(())
    }
}

/// Operations done by a set of workers in one timed run.
#[derive(Debug, Serialize)]
struct Throughput {
    workers: usize,
    operations: usize,
    seconds: f64,
    per_second: f64,
    latency: Spread,
}

impl Throughput {
    /// One figure for runs taken in turns with others: their operations over their time,
    /// and the median of their latencies.
    fn combine(runs: &[Throughput]) -> Self {
        let median =
            |pick: fn(&Spread) -> f64| median_of_runs(runs.iter().map(|run| pick(&run.latency)));
        let operations = runs.iter().map(|run| run.operations).sum();
        let seconds: f64 = runs.iter().map(|run| run.seconds).sum();
        Self {
            workers: runs.first().map_or(0, |run| run.workers),
            operations,
            seconds,
            per_second: operations as f64 / seconds.max(f64::EPSILON),
            latency: Spread {
                count: operations,
                p50_ms: median(|spread| spread.p50_ms),
                p99_ms: median(|spread| spread.p99_ms),
                max_ms: runs
                    .iter()
                    .map(|run| run.latency.max_ms)
                    .fold(0.0, f64::max),
            },
        }
    }

    fn summary(&self) -> String {
        format!(
            "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            self.per_second, self.latency.p50_ms, self.latency.p99_ms
        )
    }
}

/// The instances of the seeded service `svc-0`, each as the registry's lookup answers it:
/// the values of the service's keys in etcd.
async fn service_values(
    http: &reqwest::Client,
    registry: &Registry,
) -> anyhow::Result<Vec<String>> {
    let answer: serde_json::Value = http
        .get(registry.url("/v1/services/svc-0?status=passing"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let instances = answer
        .get("instances")
        .and_then(|instances| instances.as_array())
        .context("a lookup answer without instances")?;
    ensure!(!instances.is_empty(), "the seeded service has no instances");
    Ok(instances
        .iter()
        .map(|instance| instance.to_string())
        .collect())
}

/// Prefix ranges, then keep-alives, `load_seconds` each.
async fn measure(
    plan: &Plan,
    endpoint: &str,
    values: &[String],
) -> anyhow::Result<(Throughput, Throughput)> {
    let duration = Duration::from_secs(plan.load_seconds);
    let mut client = Client::connect([endpoint], None).await?;
    for (k, value) in values.iter().enumerate() {
        client
            .put(format!("{SERVICE_PREFIX}i-{k}"), value.as_str(), None)
            .await?;
    }

    scenarios::phase(&format!(
        "etcd: prefix range of {} keys, {} conns, {} s",
        values.len(),
        plan.lookup_connections,
        plan.load_seconds
    ));
    let keys = values.len();
    let range = drive(
        connect(endpoint, plan.lookup_connections).await?,
        duration,
        move |mut client, _| async move {
            let answer = client
                .get(SERVICE_PREFIX, Some(GetOptions::new().with_prefix()))
                .await?;
            ensure!(
                answer.kvs().len() == keys,
                "a range answered {} keys",
                answer.kvs().len()
            );
            Ok(client)
        },
    )
    .await?;
    eprintln!("    {}", range.summary());

    scenarios::phase(&format!(
        "etcd: lease keep-alive, {} conns, {} s",
        plan.heartbeat_connections, plan.load_seconds
    ));
    let mut streams = Vec::new();
    for mut client in connect(endpoint, plan.heartbeat_connections).await? {
        let lease = client.lease_grant(LEASE_SECONDS, None).await?;
        let (keeper, stream) = client.lease_keep_alive(lease.id()).await?;
        streams.push((client, keeper, stream));
    }
    let keep_alive = drive(
        streams,
        duration,
        |(client, mut keeper, mut stream), _| async move {
            keeper.keep_alive().await?;
            let answer = stream
                .message()
                .await?
                .context("the keep-alive stream ended")?;
            ensure!(answer.ttl() > 0, "lease {} has expired", answer.id());
            Ok((client, keeper, stream))
        },
    )
    .await?;
    eprintln!("    {}", keep_alive.summary());
    Ok((range, keep_alive))
}

/// `count` clients, each on a connection of its own.
async fn connect(endpoint: &str, count: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(Client::connect([endpoint], None).await?);
    }
    Ok(clients)
}

/// Runs one worker per state, each doing `operation` after `operation` until `duration`
/// has passed. `operation` takes the worker's state and a number no other operation of
/// the run gets (for new keys), and gives the state back.
async fn drive<S, F, Fut>(
    states: Vec<S>,
    duration: Duration,
    operation: F,
) -> anyhow::Result<Throughput>
where
    S: Send + 'static,
    F: Fn(S, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<S>> + Send,
{
    let workers = states.len();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for (worker, state) in states.into_iter().enumerate() {
        let operation = operation.clone();
        tasks.spawn(async move {
            let mut state = state;
            let mut latencies = Vec::new();
            let mut number = worker as u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                state = operation(state, number).await?;
                latencies.push(sent.elapsed());
                number += workers as u64;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Throughput {
        workers,
        operations: latencies.len(),
        seconds,
        per_second: latencies.len() as f64 / seconds.max(f64::EPSILON),
        latency: Spread::of(latencies),
    })
}

/// A running etcd on a scratch folder of its own (its data and log). [`Etcd::stop`] ends
/// it and removes the folder.
struct Etcd {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

impl Etcd {
    /// Starts a one-member etcd with its defaults on two free ports (clients, peers) and
    /// waits (at most 20 s) until it answers.
    async fn start(binary: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("registry-bench-etcd-{}", unique_suffix()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let [client_port, peer_port] = free_ports()?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new(binary)
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=bench={peer}"))
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut etcd = Self {
            child,
            dir,
            endpoint,
        };
        if let Err(error) = etcd.wait_until_ready().await {
            let log = std::fs::read_to_string(etcd.dir.join("etcd.log")).unwrap_or_default();
            etcd.stop().await?;
            bail!("{error:#}; its log: {}", log.trim());
        }
        Ok(etcd)
    }

    async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "etcd exited ({status}) before answering on {}",
                    self.endpoint
                );
            }
            let answered = async {
                let mut client = Client::connect([self.endpoint.as_str()], None).await?;
                client.status().await
            }
            .await;
            match answered {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(anyhow::Error::new(error).context(format!(
                        "etcd did not answer on {} within 20 s",
                        self.endpoint
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// SIGTERM, at most 10 s, then SIGKILL; removes the scratch folder.
    async fn stop(mut self) -> anyhow::Result<()> {
        crate::dns::terminate(&mut self.child).await?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Two distinct free TCP ports of 127.0.0.1, released before etcd binds them (a fixed
/// port could be taken by anything else on the machine, Debian's own etcd among them).
fn free_ports() -> anyhow::Result<[u16; 2]> {
    let first = TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP port")?;
    let second = TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP port")?;
    Ok([first.local_addr()?.port(), second.local_addr()?.port()])
}
