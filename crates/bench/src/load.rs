//! Load generation with `wrk` (one thread), and the side server
//! that gives the ceiling: a no-op axum JSON handler on a runtime of its own.
//!
//! wrk is C and epoll: on two cores shared with the server it takes less of the CPU than
//! a generator written with an HTTP client library, so both the ceiling and the registry
//! get as much of the machine as they can, and the ratio of the two is honest. Each
//! request's path is made by a Lua function, the same for the ceiling and the registry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::process::Command;

use crate::scenarios::median_of_runs;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors and timeouts.
    pub errors: u64,
    /// Answers that were not 2xx or 3xx.
    pub bad_status: u64,
}

impl WrkResult {
    /// Throughput and latency as the report's table shows them.
    pub fn summary(&self) -> String {
        format!(
            "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            self.per_second, self.p50_ms, self.p99_ms
        )
    }
}

/// Requests per second (0 for a run that took no time).
fn rate(requests: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        requests as f64 / seconds
    } else {
        0.0
    }
}

#[derive(Deserialize)]
struct WrkSummary {
    requests: u64,
    duration_us: f64,
    p50_us: f64,
    p99_us: f64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
}

/// Prints one JSON line wrk's caller parses, instead of wrk's human report.
const DONE: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%.0f,"p99_us":%.0f,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

/// Lookups of a random one of `services` services `svc-0`.. with `?status=passing`,
/// under `prefix` (empty for the registry).
pub fn lookup_script(prefix: &str, services: usize) -> String {
    format!(
        r#"
local services = {services}
request = function()
  return wrk.format("GET", "{prefix}/v1/services/svc-" .. math.random(0, services - 1) .. "?status=passing")
end
{DONE}"#
    )
}

/// Consul's health lookups of passing instances of a random service (as Consul clients
/// discover), under `prefix`.
pub fn consul_lookup_script(prefix: &str, services: usize) -> String {
    format!(
        r#"
local services = {services}
request = function()
  return wrk.format("GET", "{prefix}/v1/health/service/svc-" .. math.random(0, services - 1) .. "?passing=1")
end
{DONE}"#
    )
}

/// `GET /healthz`: the registry's whole HTTP stack (middleware, tracing, metrics) around
/// a handler that does nothing, the floor under every lookup.
pub fn healthz_script() -> String {
    format!(
        r#"
request = function()
  return wrk.format("GET", "/healthz")
end
{DONE}"#
    )
}

/// Heartbeats of a random one of the seeded instances (see `seed_path`).
pub fn heartbeat_script(services: usize, per_service: usize) -> String {
    format!(
        r#"
local services = {services}
local total = {total}
request = function()
  local k = math.random(0, total - 1)
  return wrk.format("PUT", "/v1/services/svc-" .. (k % services) .. "/instances/i-" .. math.floor(k / services) .. "/heartbeat")
end
{DONE}"#,
        total = services * per_service
    )
}

/// Registrations of new instances, each a new id, spread over 100 services `reg-*`
/// (request `counter` registers `registration_key(counter)` with
/// `registration_body(counter)`), the first being `first + 1`.
pub fn registration_script(first: u64) -> String {
    format!(
        r#"
local counter = {first}
local headers = {{ ["Content-Type"] = "application/json" }}
request = function()
  counter = counter + 1
  local body = '{{"url":"http://10.1.' .. (counter % 250) .. '.' .. (counter % 199) .. ':8080/","tags":["bench"],"metadata":{{"version":"1.0.0"}},"ttl_seconds":600}}'
  return wrk.format("PUT", "/v1/services/reg-" .. (counter % 100) .. "/instances/w-" .. counter, headers, body)
end
{DONE}"#
    )
}

/// The service and instance id of the `counter`th registration of `registration_script`.
pub fn registration_key(counter: u64) -> (String, String) {
    (format!("reg-{}", counter % 100), format!("w-{counter}"))
}

/// The body of the `counter`th registration of `registration_script`, for the peers'
/// rows, which write the same registrations (etcd's value, pgbench's rows).
pub fn registration_body(counter: u64) -> String {
    format!(
        r#"{{"url":"http://10.1.{}.{}:8080/","tags":["bench"],"metadata":{{"version":"1.0.0"}},"ttl_seconds":600}}"#,
        counter % 250,
        counter % 199
    )
}

/// Whether wrk can run here.
pub async fn wrk_available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok()
}

/// Runs wrk with one thread and `connections` connections against `base` for `duration`.
pub async fn wrk(
    base: &str,
    script: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let path = script_path();
    std::fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    let output = Command::new("wrk")
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&path)
        .arg(base)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run wrk (make bench installs it)")?;
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("BENCH_JSON ")) else {
        bail!(
            "wrk printed no summary: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let summary: WrkSummary = serde_json::from_str(line).context("wrk summary")?;
    let seconds = summary.duration_us / 1e6;
    Ok(WrkResult {
        requests: summary.requests,
        seconds,
        per_second: rate(summary.requests, seconds),
        p50_ms: summary.p50_us / 1e3,
        p99_ms: summary.p99_us / 1e3,
        errors: summary.connect + summary.read + summary.write + summary.timeout,
        bad_status: summary.status,
    })
}

/// Runs wrk on each `(base, script)` target in turns, `rounds` times `each`, so that
/// whatever else the machine does at the time weighs on all alike; answers one total per
/// target (latency percentiles: the median of its rounds').
pub async fn in_turns(
    targets: &[(&str, &str)],
    connections: usize,
    rounds: u32,
    each: Duration,
) -> anyhow::Result<Vec<WrkResult>> {
    let mut runs = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for ((base, script), results) in targets.iter().zip(runs.iter_mut()) {
            results.push(wrk(base, script, connections, each).await?);
        }
    }
    Ok(runs.iter().map(|results| combine(results)).collect())
}

/// One result for runs taken in turns with others: their requests over their time, and
/// the median of their latencies.
pub fn combine(runs: &[WrkResult]) -> WrkResult {
    let median = |pick: fn(&WrkResult) -> f64| median_of_runs(runs.iter().map(pick));
    let requests = runs.iter().map(|r| r.requests).sum();
    let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
    WrkResult {
        requests,
        seconds,
        per_second: rate(requests, seconds),
        p50_ms: median(|r| r.p50_ms),
        p99_ms: median(|r| r.p99_ms),
        errors: runs.iter().map(|r| r.errors).sum(),
        bad_status: runs.iter().map(|r| r.bad_status).sum(),
    }
}

fn script_path() -> PathBuf {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("registry-bench-{}-{run}.lua", std::process::id()))
}

/// The no-op ceiling and an OTLP sink, served by a two-worker runtime on a thread of its
/// own (like the registry's runtime on two cores), so the bench's own tasks never share
/// its workers. Stops when dropped.
pub struct SideServer {
    pub addr: SocketAddr,
    /// What `/sized/v1/services/{service}` answers: set to a real lookup answer, it gives
    /// the ceiling for a body of the same size, which tells the cost of the bytes apart
    /// from the cost of the registry's own work.
    pub sized_body: Arc<RwLock<Bytes>>,
    /// What `/sized/v1/health/service/{service}` answers: a real Consul health answer,
    /// for the same comparison of Consul's lookups.
    pub consul_sized_body: Arc<RwLock<Bytes>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SideServer {
    pub fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("side server runtime")?;
        // Bound here (std) so the address is known before the thread starts; tokio takes
        // it over inside the side runtime.
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("side server listener")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let sized_body = Arc::new(RwLock::new(Bytes::new()));
        let body = sized_body.clone();
        let consul_sized_body = Arc::new(RwLock::new(Bytes::new()));
        let consul_body = consul_sized_body.clone();
        std::thread::Builder::new()
            .name("bench-side-server".into())
            .spawn(move || {
                let app = Router::new()
                    // The same paths the registry's lookups take; the answer is constant.
                    .route("/v1/services/{service}", get(noop))
                    .route(
                        "/sized/v1/services/{service}",
                        get(move || {
                            let body = body
                                .read()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .clone();
                            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
                        }),
                    )
                    .route(
                        "/sized/v1/health/service/{service}",
                        get(move || {
                            let body = consul_body
                                .read()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .clone();
                            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
                        }),
                    )
                    // OTLP over HTTP: accept every batch of spans and drop it.
                    .route("/v1/traces", post(accept_spans));
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await
                });
                if let Err(error) = served {
                    eprintln!("side server: {error}");
                }
            })
            .context("side server thread")?;
        Ok(Self {
            addr,
            sized_body,
            consul_sized_body,
            stop: Some(stop),
        })
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SideServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The no-op handler: the ceiling's answer.
pub async fn noop() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "ok": true }))
}

/// An empty `ExportTraceServiceResponse` (all fields default) is an empty body.
async fn accept_spans() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
    )
}
