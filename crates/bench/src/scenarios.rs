//! The measurements that are not plain request rates: seeding, watch fan-out, failure
//! detection and propagation between replicas. Each drives the registry over HTTP only,
//! as its users do.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::registry::Registry;

/// A one-line progress display on stderr: a label and a running count.
/// The count is redrawn in place on a terminal, and printed every few seconds otherwise
/// (a log file gets lines, not carriage returns).
pub struct Progress {
    label: String,
    total: usize,
    shown: Instant,
    terminal: bool,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        let label = label.into();
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if terminal {
            eprint!("  {label}: 0/{total}");
        }
        Self {
            label,
            total,
            shown: Instant::now(),
            terminal,
        }
    }

    pub fn tick(&mut self, done: usize) {
        if self.terminal && self.shown.elapsed() >= Duration::from_millis(250) {
            eprint!("\r  {}: {done}/{}", self.label, self.total);
            self.shown = Instant::now();
        } else if !self.terminal && self.shown.elapsed() >= Duration::from_secs(5) {
            eprintln!("  {}: {done}/{}", self.label, self.total);
            self.shown = Instant::now();
        }
    }

    pub fn finish(self, note: &str) {
        let start = if self.terminal { "\r" } else { "" };
        eprintln!(
            "{start}  {}: {}/{} {note}",
            self.label, self.total, self.total
        );
    }
}

/// Prints the start of a phase that shows no count (a timed load run).
pub fn phase(label: &str) {
    eprintln!("  {label}");
}

/// The median of the runs' figures (the upper one of an even count; 0 without runs): how
/// runs taken in turns combine their latencies.
pub fn median_of_runs(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Spread {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1e3
        };
        Self {
            count: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// The body of a seeded instance: a URL, one tag, one metadata pair, a 10-minute lease
/// (nothing expires while the bench runs).
pub fn instance_body(k: usize) -> String {
    format!(
        r#"{{"url":"http://10.0.{}.{}:8080/","tags":["bench"],"metadata":{{"version":"1.0.0"}},"ttl_seconds":600}}"#,
        (k / 250) % 250,
        k % 250
    )
}

/// Registers instances `0..count` of the seed layout (instance `k` is `i-{k / services}`
/// of `svc-{k % services}`, with a 10-minute lease) with `writers` concurrent requests;
/// answers registrations/s.
pub async fn seed(
    http: &reqwest::Client,
    registry: &Registry,
    services: usize,
    count: usize,
    writers: usize,
    label: &str,
) -> anyhow::Result<f64> {
    register_many(http, count, writers, label, |k| {
        (
            registry.url(&format!(
                "/v1/services/svc-{}/instances/i-{}",
                k % services,
                k / services
            )),
            instance_body(k),
        )
    })
    .await
}

/// Sends `count` registrations, `writers` at a time, showing progress under `label`:
/// registration `k` is a PUT of the body to the URL `request(k)` answers, made when the
/// request is about to be sent. Answers registrations/s.
pub async fn register_many(
    http: &reqwest::Client,
    count: usize,
    writers: usize,
    label: &str,
    request: impl Fn(usize) -> (String, String),
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut progress = Progress::new(label, count);
    let mut requests = futures::stream::iter(0..count)
        .map(|k| {
            let (url, body) = request(k);
            async move {
                let response = http
                    .put(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                ensure!(status.is_success(), "registration answered {status}");
                Ok(())
            }
        })
        .buffer_unordered(writers);
    let mut done = 0;
    while let Some(outcome) = requests.next().await {
        outcome?;
        done += 1;
        progress.tick(done);
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    progress.finish(&format!("({rate:.0}/s)"));
    Ok(rate)
}

/// The service's index and its instances, from a (blocking) lookup.
pub async fn lookup(
    http: &reqwest::Client,
    url: String,
) -> anyhow::Result<(u64, Vec<serde_json::Value>)> {
    let body: serde_json::Value = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let index = body["index"].as_u64().context("lookup without index")?;
    let instances = body["instances"]
        .as_array()
        .cloned()
        .context("lookup without instances")?;
    Ok((index, instances))
}

/// Checks that a seeded service answers all its instances as passing.
pub async fn check_seeded(
    http: &reqwest::Client,
    registry: &Registry,
    per_service: usize,
) -> anyhow::Result<()> {
    let (_, instances) = lookup(http, registry.url("/v1/services/svc-0?status=passing")).await?;
    ensure!(
        instances.len() == per_service,
        "svc-0 has {} passing instances, expected {per_service}",
        instances.len()
    );
    Ok(())
}

/// The value of the `registry_watchers` gauge.
async fn watchers_gauge(http: &reqwest::Client, registry: &Registry) -> anyhow::Result<usize> {
    let text = http
        .get(registry.url("/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .find_map(|line| line.strip_prefix("registry_watchers "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as usize)
        .context("no registry_watchers in /metrics")
}

pub async fn register(
    http: &reqwest::Client,
    registry: &Registry,
    service: &str,
    id: &str,
    body: String,
) -> anyhow::Result<()> {
    let response = http
        .put(registry.url(&format!("/v1/services/{service}/instances/{id}")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    ensure!(status.is_success(), "registration answered {status}");
    Ok(())
}

/// One parked blocking query on its own connection: answers when its whole answer was read
/// and whether that answer holds the instance the change added.
async fn park(
    addr: String,
    path: String,
    sent: Arc<AtomicUsize>,
    connecting: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<(Instant, bool)> {
    let mut stream = {
        // Bounds the connections being opened at once (the listen backlog is finite).
        let _permit = connecting.acquire().await?;
        let mut stream = TcpStream::connect(&addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        stream
    };
    sent.fetch_add(1, Ordering::Relaxed);
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let at = Instant::now();
    let text = String::from_utf8_lossy(&answer);
    Ok((
        at,
        text.starts_with("HTTP/1.1 200") && text.contains("\"i-1\""),
    ))
}

/// Outcome of the fan-out: delivery times of the watchers that got the change.
#[derive(Debug, serde::Serialize)]
pub struct FanOut {
    pub watchers: usize,
    pub notified: usize,
    pub spread: Spread,
}

/// `watchers` blocking queries on one service, all parked first (the `registry_watchers`
/// gauge says so), then one change: how long until each has read its answer.
pub async fn fan_out(
    http: &reqwest::Client,
    registry: &Registry,
    watchers: usize,
) -> anyhow::Result<FanOut> {
    register(http, registry, "fan", "i-0", instance_body(0)).await?;
    let (index, _) = lookup(http, registry.url("/v1/services/fan")).await?;
    let baseline = watchers_gauge(http, registry).await?;
    let addr = registry
        .base
        .strip_prefix("http://")
        .context("registry address")?
        .to_owned();
    let path = format!("/v1/services/fan?index={index}&wait=60s");
    let sent = Arc::new(AtomicUsize::new(0));
    let connecting = Arc::new(tokio::sync::Semaphore::new(128));
    let tasks: Vec<_> = (0..watchers)
        .map(|_| {
            tokio::spawn(park(
                addr.clone(),
                path.clone(),
                sent.clone(),
                connecting.clone(),
            ))
        })
        .collect();
    let mut progress = Progress::new("watchers parked", watchers);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // While thousands of connections open, one poll may fail: the next one counts.
        let parked = match watchers_gauge(http, registry).await {
            Ok(gauge) => gauge.saturating_sub(baseline),
            Err(error) => {
                eprintln!("\n  reading registry_watchers failed ({error:#}); retrying");
                0
            }
        };
        progress.tick(parked.min(watchers));
        if parked >= watchers {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {parked} of {watchers} watchers parked within 90 s ({} requests sent)",
                sent.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish("");
    let changed = Instant::now();
    register(http, registry, "fan", "i-1", instance_body(1)).await?;
    let mut samples = Vec::with_capacity(watchers);
    let mut progress = Progress::new("watchers notified", watchers);
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok((at, true)))) => samples.push(at.saturating_duration_since(changed)),
            Ok(Ok(Ok((_, false)))) => eprintln!("\n  a watcher's answer lacked the change"),
            Ok(Ok(Err(error))) => eprintln!("\n  a watcher failed: {error:#}"),
            Ok(Err(error)) => eprintln!("\n  a watcher task failed: {error}"),
            Err(_) => eprintln!("\n  a watcher got no answer within 30 s"),
        }
        progress.tick(samples.len());
    }
    progress.finish("");
    Ok(FanOut {
        watchers,
        notified: samples.len(),
        spread: Spread::of(samples),
    })
}

/// Registers `count` instances with a `ttl` lease that are never renewed, each in a
/// service of its own watched by blocking queries: the time from the registration's answer
/// (the lease's start) until a watcher sees the instance `critical`.
pub async fn detection(
    http: &reqwest::Client,
    registry: &Registry,
    count: usize,
    ttl: Duration,
) -> anyhow::Result<Spread> {
    let watches = (0..count).map(|k| async move {
        let service = format!("det-{k}");
        let body = format!(
            r#"{{"url":"http://10.3.0.{k}:8080/","ttl_seconds":{}}}"#,
            ttl.as_secs()
        );
        register(http, registry, &service, "i-0", body).await?;
        let lease_start = Instant::now();
        let mut index = 0;
        let deadline = lease_start + ttl + Duration::from_secs(30);
        loop {
            let (now_index, instances) = lookup(
                http,
                registry.url(&format!("/v1/services/{service}?index={index}&wait=10s")),
            )
            .await?;
            let critical = instances
                .iter()
                .any(|i| i["status"].as_str() == Some("critical"));
            if critical {
                return Ok(lease_start.elapsed());
            }
            ensure!(Instant::now() < deadline, "{service} never turned critical");
            index = now_index;
        }
    });
    let samples = futures::future::try_join_all(watches).await?;
    Ok(Spread::of(samples))
}

/// Waits on `reader` (blocking queries from `index` on) until `prop` shows the URL that
/// holds `marker`; answers when.
async fn seen_on(
    http: &reqwest::Client,
    reader: &Registry,
    mut index: u64,
    marker: &str,
) -> anyhow::Result<(Instant, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now_index, instances) = lookup(
            http,
            reader.url(&format!("/v1/services/prop?index={index}&wait=10s")),
        )
        .await?;
        let seen = instances
            .iter()
            .any(|i| i["url"].as_str().is_some_and(|u| u.contains(marker)));
        if seen {
            return Ok((Instant::now(), now_index));
        }
        ensure!(
            Instant::now() < deadline,
            "a write did not propagate in 10 s"
        );
        index = now_index;
    }
}

/// Writes on `writer` and times, per write, until both `readers` answer a blocking query
/// with it (the slower of the two counts), from the moment the write is sent.
pub async fn propagation(
    http: &reqwest::Client,
    writer: &Registry,
    readers: [&Registry; 2],
    writes: usize,
) -> anyhow::Result<Spread> {
    register(http, writer, "prop", "i-0", instance_body(0)).await?;
    let (mut index, _) = lookup(http, writer.url("/v1/services/prop")).await?;
    let mut samples = Vec::with_capacity(writes);
    let mut progress = Progress::new("writes propagated", writes);
    for write in 1..=writes {
        let port = 10_000 + write;
        let marker = format!(":{port}/");
        let body = format!(r#"{{"url":"http://10.2.0.1:{port}/","ttl_seconds":600}}"#);
        let change = async {
            // Gives the two blocking queries time to park first; a late one only makes
            // the figure worse, never better.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let sent = Instant::now();
            register(http, writer, "prop", "i-0", body).await?;
            anyhow::Ok(sent)
        };
        let (on_b, on_c, sent) = tokio::join!(
            seen_on(http, readers[0], index, &marker),
            seen_on(http, readers[1], index, &marker),
            change
        );
        let (sent, (at_b, index_b), (at_c, index_c)) = (sent?, on_b?, on_c?);
        samples.push(at_b.max(at_c).saturating_duration_since(sent));
        index = index_b.max(index_c);
        progress.tick(write);
    }
    progress.finish("");
    Ok(Spread::of(samples))
}
