//! `registry-bench --instructions` (`make bench-instructions`): instructions per
//! operation, counted by callgrind, for a fixed number of lookups, heartbeats,
//! `/healthz` and durable registrations on Postgres, and for the no-op axum handler the
//! throughput bench takes as its ceiling.
//!
//! Requests per second move with the machine; the instructions a request costs do not,
//! so this is the measure that decides whether a change to the request path pays
//! (docs/performance.md, "Instructions per operation"). The registry (and the no-op
//! server) run under `valgrind --tool=callgrind --collect-atstart=no` with a toggle on
//! the functions that do a request's work ([`TOGGLES`]; [`NOOP_TOGGLES`]): what the
//! runtime does between requests (timers, background sweeps, idle threads) is not
//! counted. Each operation is sent one at a time on one connection, first [`WARM_UP`]
//! times, then the counters are zeroed (`callgrind_control -z`), then [`MEASURED`]
//! times, then they are dumped (`callgrind_control -d`) and the dump's total divided by
//! [`MEASURED`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::load;
use crate::registry::{Backend, Database, Registry};

/// Requests of each operation sent before the counters are zeroed: connections, pools,
/// caches and metric series made, the allocator's arenas grown.
const WARM_UP: usize = 500;
/// Requests of each operation counted.
const MEASURED: usize = 2_000;
/// Instances of the service that lookups read and heartbeats renew.
const INSTANCES: usize = 10;

/// Callgrind counts only while one of these functions runs. In the registry: hyper's
/// dispatcher polling an HTTP/1 connection (reading a request, routing, middleware, the
/// handler, writing the answer), and the registry's group commit writer, the task that
/// writes a registration to the database while its request waits. They never run inside
/// one another (a toggle inside a toggle would switch counting off). The connection
/// futures around the dispatcher are not used: some builds inline their polls, and then
/// nothing was counted.
const TOGGLES: &[&str] = &[
    "hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_catch",
    "registry_server::store::group_commit::drain::{{closure}}",
];

/// In the no-op server, the poll of [`Counted`], around each connection's: the
/// dispatcher and the few polls between it and [`Counted`]. The no-op server is this
/// program, whose builds inline hyper's dispatcher in one place or another as its code
/// changes, so it counts from a function of its own that is never inlined.
const NOOP_TOGGLES: &[&str] =
    &["<registry_bench::instructions::Counted<F> as core::future::future::Future>::poll"];

/// What a run of this program does: drive the measurement, or be the no-op server it
/// measures (run under valgrind by the former).
pub enum Mode {
    Measure,
    NoopServer,
}

impl Mode {
    /// `--instructions` or `--noop-server` among the arguments.
    pub fn from_args() -> Option<Self> {
        std::env::args().skip(1).find_map(|arg| match arg.as_str() {
            "--instructions" => Some(Self::Measure),
            "--noop-server" => Some(Self::NoopServer),
            _ => None,
        })
    }

    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Measure => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(measure()),
            Self::NoopServer => noop_server(),
        }
    }
}

/// One row of the table.
struct Row {
    operation: &'static str,
    instructions: u64,
}

async fn measure() -> anyhow::Result<()> {
    let started = Instant::now();
    let admin_url = crate::postgres_admin_url()?;
    let dumps = crate::output_path("callgrind")?;
    // Dumps of an earlier run would be mistaken for this one's.
    if dumps.exists() {
        std::fs::remove_dir_all(&dumps)
            .with_context(|| format!("cannot empty {}", dumps.display()))?;
    }
    std::fs::create_dir_all(&dumps)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(120))
        .build()?;

    let mut rows = Vec::new();
    eprintln!("no-op axum handler under callgrind");
    rows.push(noop_row(&http, &dumps.join("noop.out")).await?);

    eprintln!("registry on Postgres under callgrind");
    let database = Database::fresh(Backend::Postgres, &admin_url).await?;
    let outcome = registry_rows(&http, &database, &dumps.join("registry.out")).await;
    database.drop_now().await?;
    rows.extend(outcome?);

    let mut table = String::from("| operation | instructions per operation |\n|---|---|\n");
    for row in &rows {
        table.push_str(&format!(
            "| {} | {} |\n",
            row.operation,
            thousands(row.instructions)
        ));
    }
    println!("{table}");
    let path = crate::output_path("instructions.json")?;
    let document = json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "seconds": started.elapsed().as_secs(),
        "warm_up": WARM_UP,
        "measured": MEASURED,
        "toggles": TOGGLES,
        "noop_toggles": NOOP_TOGGLES,
        "results": rows
            .iter()
            .map(|row| json!({ "operation": row.operation, "instructions": row.instructions }))
            .collect::<Vec<_>>(),
    });
    crate::write_json(&path, &document)?;
    eprintln!(
        "wrote {} in {} s",
        path.display(),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// `valgrind` and its options: callgrind, counting only inside `toggles`, its output
/// (and each dump, numbered after it) in `out`.
fn callgrind(out: &Path, toggles: &[&str]) -> Vec<String> {
    let mut wrapper: Vec<String> = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--dump-instr=no",
    ]
    .map(String::from)
    .to_vec();
    wrapper.extend(toggles.iter().map(|f| format!("--toggle-collect={f}")));
    wrapper.push(format!("--callgrind-out-file={}", out.display()));
    wrapper
}

/// Lookups of the same path as the registry's against the no-op handler of the
/// throughput bench, in a process of its own under callgrind ([`noop_server`]).
async fn noop_row(http: &reqwest::Client, out: &Path) -> anyhow::Result<Row> {
    let wrapper = callgrind(out, NOOP_TOGGLES);
    let exe = std::env::current_exe().context("path of this program")?;
    let mut child = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(exe)
        .arg("--noop-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start valgrind (apt-get install valgrind)")?;
    let base = noop_base(&mut child).await?;
    let pid = child.id().context("the no-op server has exited")?;
    let mut dumps = Dumps::new(pid, out);
    let instructions = dumps
        .count(|i| {
            http.get(format!(
                "{base}/v1/services/svc-{}?status=passing",
                i % INSTANCES
            ))
            .send()
        })
        .await?;
    // Closing its standard input stops it.
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok(Row {
        operation: "no-op axum handler (GET, a lookup's path)",
        instructions,
    })
}

/// The address the no-op server prints (`listening on ADDR`).
async fn noop_base(child: &mut Child) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("no-op server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix("listening on ") {
                return Ok(format!("http://{addr}"));
            }
        }
        bail!("the no-op server exited before listening")
    })
    .await
    .context("the no-op server did not listen within 120 s")?
}

/// `registry-bench --noop-server`: the throughput bench's no-op handler, served as axum
/// serves it but with each connection's future in [`Counted`], until standard input
/// closes.
fn noop_server() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("no-op server runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        std::io::Write::flush(&mut std::io::stdout())?;
        let app =
            axum::Router::new().route("/v1/services/{service}", axum::routing::get(load::noop));
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
        });
        let accept = async {
            loop {
                let (stream, _) = listener.accept().await?;
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(Counted(Box::pin(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                })));
            }
        };
        tokio::select! {
            accepted = accept => accepted,
            _ = stdin_closed => Ok(()),
        }
    })
}

/// A connection's future whose `poll` is never inlined: the no-op server's toggle
/// ([`NOOP_TOGGLES`]).
struct Counted<F>(Pin<Box<F>>);

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// `/healthz`, lookups, heartbeats and registrations of one registry under callgrind.
async fn registry_rows(
    http: &reqwest::Client,
    database: &Database,
    out: &Path,
) -> anyhow::Result<Vec<Row>> {
    let registry = Registry::start_under(&callgrind(out, TOGGLES), &database.url, &[]).await?;
    let pid = registry.pid().context("the registry has exited")?;
    crate::scenarios::seed(http, &registry, 1, INSTANCES, 1, "seeding").await?;
    let mut dumps = Dumps::new(pid, out);
    let mut rows = Vec::new();

    let healthz = registry.url("/healthz");
    rows.push(Row {
        operation: "GET /healthz",
        instructions: dumps.count(|_| http.get(&healthz).send()).await?,
    });
    rows.push(Row {
        operation: "lookup, 10 instances (GET /v1/services/svc-0?status=passing)",
        instructions: dumps
            .count(|_| {
                http.get(registry.url("/v1/services/svc-0?status=passing"))
                    .send()
            })
            .await?,
    });
    rows.push(Row {
        operation: "heartbeat on a live lease (PUT .../heartbeat)",
        instructions: dumps
            .count(|i| {
                http.put(registry.url(&format!(
                    "/v1/services/svc-0/instances/i-{}/heartbeat",
                    i % INSTANCES
                )))
                .send()
            })
            .await?,
    });
    rows.push(Row {
        operation: "registration of a new instance, durable (PUT, Postgres)",
        instructions: dumps
            .count(|i| {
                let n = i as u64;
                let (service, id) = crate::load::registration_key(n);
                http.put(registry.url(&format!("/v1/services/{service}/instances/{id}")))
                    .header("content-type", "application/json")
                    .body(crate::load::registration_body(n))
                    .send()
            })
            .await?,
    });
    registry.stop().await?;
    Ok(rows)
}

/// The counters of one process under callgrind, zeroed and dumped through
/// `callgrind_control`; each dump is the file `out` followed by its number.
struct Dumps {
    pid: String,
    out: PathBuf,
    taken: usize,
}

impl Dumps {
    fn new(pid: u32, out: &Path) -> Self {
        Self {
            pid: pid.to_string(),
            out: out.to_owned(),
            taken: 0,
        }
    }

    /// Sends request `send(i)` [`WARM_UP`] times, zeroes the counters, sends it
    /// [`MEASURED`] times more (one at a time, each answer read whole and checked) and
    /// answers the instructions counted per request.
    async fn count<F, R>(&mut self, send: F) -> anyhow::Result<u64>
    where
        F: Fn(usize) -> R,
        R: Future<Output = reqwest::Result<reqwest::Response>>,
    {
        for i in 0..WARM_UP {
            answered(send(i).await?).await?;
        }
        self.control("-z").await?;
        for i in WARM_UP..WARM_UP + MEASURED {
            answered(send(i).await?).await?;
        }
        self.control("-d").await?;
        self.taken += 1;
        let dump = PathBuf::from(format!("{}.{}", self.out.display(), self.taken));
        let total = total_instructions(&dump)?;
        // A toggle function inlined away in this build: a row of 0 is no measurement.
        // Code and features change what is inlined (the no-op server counts from a
        // function of its own for that reason).
        ensure!(
            total > 0,
            "no instructions counted in {} (its toggles, among {TOGGLES:?} and \
             {NOOP_TOGGLES:?}, are inlined in this build)",
            dump.display()
        );
        Ok(total / MEASURED as u64)
    }

    async fn control(&self, command: &str) -> anyhow::Result<()> {
        let output = Command::new("callgrind_control")
            .args([command, &self.pid])
            .output()
            .await
            .context("cannot run callgrind_control (it comes with valgrind)")?;
        let said = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success() && said.contains("OK"),
            "callgrind_control {command} {}: {said}{}",
            self.pid,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

/// Reads the whole answer; a request that failed would make the count meaningless.
async fn answered(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    let url = response.url().clone();
    response.bytes().await?;
    ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}

/// The instructions (`Ir`) of a callgrind dump: its `summary:` line (older versions
/// write `totals:`).
fn total_instructions(dump: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(dump)
        .with_context(|| format!("cannot read the dump {}", dump.display()))?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ir| ir.parse().ok())
        .with_context(|| format!("no instruction total in {}", dump.display()))
}

/// `12345678` as `12,345,678`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
