//! The registry's DNS interface driving an unmodified HAProxy: a `resolvers` section
//! pointing at the registry's DNS port and a `server-template` on the SRV name
//! `_sum._tcp.service.consul`, as HAProxy is set up in front of Consul. HAProxy runs no
//! health check of its own, so only the registry's answers decide which instances get
//! traffic.
//!
//! Two `sum` instances (small HTTP servers run by the test that answer with their own id
//! and count the calls they get) register through v1 with an active check on `/healthz`.
//! Traffic flows through HAProxy the whole time, and:
//! (a) both instances get calls;
//! (b) once the registry shows one critical (its check fails while it keeps serving),
//!     HAProxy stops sending it calls within [`DROP_BOUND`];
//! (c) once it is passing again it gets calls again within [`RETURN_BOUND`];
//! (d) not one call through HAProxy fails, since no instance ever really stopped.
//!
//! Needs `haproxy` (Debian package `haproxy`; `scripts/ensure-tools.sh`, which `make test`
//! runs, installs it). Without it the test fails rather than skips, so a missing install
//! cannot pass for a green run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Backend, TempDir, TestRegistry, checked_spec};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use registry_api::Status;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest wait for HAProxy to start and for its first resolution to give it servers.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// HAProxy re-resolves every `timeout resolve` (1 s) and drops a server whose SRV record
/// is gone at the next answer (`hold obsolete 0s`): a critical instance must be out of
/// its rotation within this long after the registry shows it critical.
const DROP_BOUND: Duration = Duration::from_secs(2);
/// A passing instance comes back at the next resolution too; "a few seconds" with room.
const RETURN_BOUND: Duration = Duration::from_secs(5);
/// Calls made through HAProxy after the drop bound that must all avoid the critical one.
const CALLS_AFTER_DROP: usize = 50;
/// Pause between two calls of the traffic loop: about 150 calls a second, enough to see
/// every change of the rotation without loading the two shared cores.
const TRAFFIC_PACE: Duration = Duration::from_millis(5);
/// How often the registry is polled for an instance's status: the moment it shows a
/// change is known to within this (plus one lookup).
const STATUS_POLL: Duration = Duration::from_millis(10);
/// Ports tried before giving up when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;

/// Debian's HAProxy (2.6 on Debian 12), which the configuration below is written for.
const HAPROXY: &str = "/usr/sbin/haproxy";

/// The `haproxy` binary, or a failure saying how to get it.
fn haproxy_binary() -> PathBuf {
    let path = PathBuf::from(HAPROXY);
    assert!(
        path.is_file(),
        "{HAPROXY} is missing: apt-get install haproxy (or run scripts/ensure-tools.sh)"
    );
    path
}

/// HAProxy's configuration: the frontend on `port`, the backend filled from the SRV
/// records the registry's DNS at `dns` answers for `sum`.
fn config(port: u16, dns: SocketAddr) -> String {
    format!(
        "global
    # Everything HAProxy logs (server state changes, failed requests) goes to its stderr,
    # which the test keeps in a file and shows when it fails.
    log stderr format raw local0 info
    # No SO_REUSEPORT: a port taken by another process must make the start fail, not be
    # shared with it.
    noreuseport

defaults
    mode http
    log global
    option httplog
    # Only failed or abnormal requests are logged, so the log stays readable; not the
    # connections without a request (the test's probe that HAProxy listens).
    option dontlog-normal
    option dontlognull
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # A call that meets a server just dropped from the rotation is retried elsewhere.
    retries 3
    option redispatch 1
    retry-on all-retryable-errors

resolvers reg
    nameserver reg {dns}
    accepted_payload_size 8192
    resolve_retries 3
    timeout resolve 1s
    timeout retry 1s
    hold valid 1s
    # A server whose SRV record is no longer answered leaves at once.
    hold obsolete 0s

frontend web
    bind 127.0.0.1:{port}
    default_backend sum

backend sum
    balance roundrobin
    # No `check`: membership comes from the registry's answers alone. `init-addr none`:
    # the servers start without an address until the first SRV answer fills them.
    server-template sum 1-10 _sum._tcp.service.consul resolvers reg resolve-prefer ipv4 init-addr none
"
    )
}

/// HAProxy run in the foreground (`-db`) for the test, in a temporary folder of its own,
/// killed on drop.
struct HaProxy {
    child: Child,
    port: u16,
    log: PathBuf,
    // Last, so the folder goes after the process is killed.
    dir: Option<TempDir>,
}

impl HaProxy {
    /// Starts HAProxy with its frontend on a free port: HAProxy cannot bind port 0 and
    /// tell which port it got, so the port is one the system just handed out and that was
    /// released right before the start, and another one if something else took it in
    /// between. Waits, with a deadline, until the frontend accepts connections.
    async fn start(dns: SocketAddr) -> Self {
        let binary = haproxy_binary();
        let dir = TempDir::new("registry-haproxy");
        let config_path = dir.0.join("haproxy.cfg");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
                probe.local_addr().expect("probe address").port()
            };
            std::fs::write(&config_path, config(port, dns)).expect("write haproxy.cfg");
            if attempt == 1 {
                // A configuration HAProxy refuses is a failure of the test, not a port race.
                let checked = Command::new(&binary)
                    .arg("-c")
                    .arg("-f")
                    .arg(&config_path)
                    .output()
                    .await
                    .expect("run haproxy -c");
                assert!(
                    checked.status.success(),
                    "haproxy refuses the configuration:\n{}{}",
                    String::from_utf8_lossy(&checked.stdout),
                    String::from_utf8_lossy(&checked.stderr)
                );
            }
            let log = dir.0.join(format!("haproxy-{attempt}.log"));
            let log_file = std::fs::File::create(&log).expect("create the HAProxy log");
            let child = Command::new(&binary)
                .arg("-db")
                .arg("-f")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log_file.try_clone().expect("log file")))
                .stderr(Stdio::from(log_file))
                .kill_on_drop(true)
                .spawn()
                .expect("start haproxy");
            let mut haproxy = Self {
                child,
                port,
                log,
                dir: None,
            };
            if haproxy.wait_until_listening().await {
                haproxy.dir = Some(dir);
                return haproxy;
            }
            eprintln!(
                "haproxy did not start on port {port} (attempt {attempt}):\n{}",
                haproxy.log_tail()
            );
        }
        panic!("haproxy did not start after {PORT_ATTEMPTS} attempts");
    }

    /// `true` once the frontend accepts a connection while HAProxy still runs; `false` if
    /// it exits first (the port was taken) or the deadline passes.
    async fn wait_until_listening(&mut self) -> bool {
        let until = Instant::now() + START_DEADLINE;
        while Instant::now() < until {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return self.child.try_wait().ok().flatten().is_none();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill().await;
        false
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The end of HAProxy's log, to explain a failure.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Fails the test with `message` and HAProxy's log.
    fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n--- haproxy log (last lines) ---\n{}",
            self.log_tail()
        );
    }
}

struct SumState {
    id: String,
    /// What `/healthz` answers: the registry's check; the other routes always work.
    healthy: AtomicBool,
    hits: AtomicUsize,
    last_hit: Mutex<Option<Instant>>,
}

/// A `sum` instance: `/healthz` answers 200 or 500 as set, every other path answers its
/// own id and is counted.
struct Sum {
    addr: SocketAddr,
    state: Arc<SumState>,
    task: JoinHandle<()>,
}

impl Sum {
    async fn start(id: &str) -> Self {
        let state = Arc::new(SumState {
            id: id.to_owned(),
            healthy: AtomicBool::new(true),
            hits: AtomicUsize::new(0),
            last_hit: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a sum instance");
        let addr = listener.local_addr().expect("sum address");
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn last_hit(&self) -> Option<Instant> {
        *self.state.last_hit.lock().expect("last hit lock")
    }

    fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }
}

impl Drop for Sum {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(state): State<Arc<SumState>>, uri: Uri) -> Response {
    if uri.path() == "/healthz" {
        return if state.healthy.load(Ordering::SeqCst) {
            StatusCode::OK.into_response()
        } else {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        };
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    *state.last_hit.lock().expect("last hit lock") = Some(Instant::now());
    state.id.clone().into_response()
}

/// Registered with only its check on `/healthz` deciding its status.
async fn register(registry: &TestRegistry, id: &str, sum: &Sum) {
    registry
        .api
        .register("sum", id, &checked_spec(&sum.url(), "/healthz"))
        .await
        .unwrap_or_else(|e| panic!("register {id}: {e}"));
}

/// What the traffic loop saw.
#[derive(Default)]
struct Seen {
    calls: usize,
    by_instance: BTreeMap<String, usize>,
    /// Each failed call: when (since the loop started) and what went wrong.
    failures: Vec<String>,
}

/// Calls through HAProxy one after another until stopped, as a client of the service
/// would, and records every answer.
struct Traffic {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Traffic {
    fn start(url: String) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            let stop = Arc::clone(&stop);
            async move {
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let outcome = match http.get(&url).send().await {
                        Ok(response) if response.status() == reqwest::StatusCode::OK => {
                            response.text().await.map_err(|e| e.to_string())
                        }
                        Ok(response) => Err(format!("HTTP {}", response.status())),
                        Err(error) => Err(error.to_string()),
                    };
                    {
                        let mut seen = seen.lock().expect("traffic lock");
                        seen.calls += 1;
                        match outcome {
                            Ok(id) => *seen.by_instance.entry(id).or_default() += 1,
                            Err(error) => seen
                                .failures
                                .push(format!("at {:?}: {error}", started.elapsed())),
                        }
                    }
                    tokio::time::sleep(TRAFFIC_PACE).await;
                }
            }
        });
        Self { seen, stop, task }
    }

    fn calls(&self) -> usize {
        self.seen.lock().expect("traffic lock").calls
    }

    fn failures(&self) -> Vec<String> {
        self.seen.lock().expect("traffic lock").failures.clone()
    }

    async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("traffic loop");
        Arc::try_unwrap(self.seen)
            .ok()
            .expect("the loop has ended")
            .into_inner()
            .expect("traffic lock")
    }
}

/// Polls the registry until `sum/id` has `status`; answers the moment it was seen.
async fn shown_as(registry: &TestRegistry, id: &str, status: Status) -> Instant {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = registry
            .api
            .service("sum", None)
            .await
            .is_ok_and(|s| s.instances.iter().any(|i| i.id == id && i.status == status));
        if shown {
            return Instant::now();
        }
        assert!(
            Instant::now() < until,
            "the registry did not show {id} as {status:?} within 30 s"
        );
        tokio::time::sleep(STATUS_POLL).await;
    }
}

/// Milliseconds from `from` to `to`, negative when `to` came first.
fn signed_ms(from: Instant, to: Instant) -> i128 {
    if to >= from {
        to.duration_since(from).as_millis() as i128
    } else {
        -(from.duration_since(to).as_millis() as i128)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_follows_the_registry_dns_without_failing_a_call() {
    // Fail before any setup when the tool is missing, with the one line that says why.
    haproxy_binary();
    let registry = TestRegistry::start_with(Backend::Sqlite, |s| {
        s.dns_addr = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let dns = registry.dns_addr.expect("the registry serves DNS");
    let sums = [Sum::start("sum-1").await, Sum::start("sum-2").await];
    for (n, sum) in sums.iter().enumerate() {
        register(&registry, &format!("sum-{}", n + 1), sum).await;
    }
    let [sum1, sum2] = &sums;

    let haproxy = HaProxy::start(dns).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    // Until its first resolution HAProxy has no server and answers 503.
    let until = Instant::now() + START_DEADLINE;
    loop {
        let ok = http
            .get(haproxy.url())
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
        if ok {
            break;
        }
        if Instant::now() >= until {
            haproxy.fail("HAProxy never got a server from the registry's SRV answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let traffic = Traffic::start(haproxy.url());

    // (a) Both instances get calls.
    let until = Instant::now() + START_DEADLINE;
    while sum1.hits() == 0 || sum2.hits() == 0 {
        if Instant::now() >= until {
            haproxy.fail(&format!(
                "calls through HAProxy did not reach both instances: sum-1 {}, sum-2 {}",
                sum1.hits(),
                sum2.hits()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "both instances get calls through HAProxy ({:?} after its first answer)",
        started.elapsed()
    );

    // (b) sum-2's check fails while it keeps serving: once the registry shows it critical,
    // HAProxy must stop sending it calls within the bound.
    sum2.set_healthy(false);
    let critical_at = shown_as(&registry, "sum-2", Status::Critical).await;
    // Sleeping to the bound is the assertion's timing, not a wait for readiness: every
    // call from here on must avoid sum-2.
    tokio::time::sleep_until(critical_at + DROP_BOUND).await;
    let (sum1_before, sum2_before, calls_before) = (sum1.hits(), sum2.hits(), traffic.calls());
    let until = Instant::now() + Duration::from_secs(30);
    while traffic.calls() < calls_before + CALLS_AFTER_DROP {
        if Instant::now() >= until {
            haproxy.fail("the calls through HAProxy stalled");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_to_sum2 = sum2.last_hit().expect("sum-2 had calls");
    let stopped_after = signed_ms(critical_at, last_to_sum2);
    println!(
        "HAProxy's last call to sum-2 came {stopped_after} ms after the registry showed it critical"
    );
    if sum2.hits() != sum2_before || last_to_sum2 > critical_at + DROP_BOUND {
        haproxy.fail(&format!(
            "sum-2 still got calls {DROP_BOUND:?} after the registry showed it critical: \
             {} more of the next {CALLS_AFTER_DROP} calls, the last {stopped_after} ms after",
            sum2.hits() - sum2_before
        ));
    }
    assert!(
        sum1.hits() >= sum1_before + CALLS_AFTER_DROP - 1,
        "the calls after the drop went to sum-1 ({} of {CALLS_AFTER_DROP})",
        sum1.hits() - sum1_before
    );

    // (c) Passing again: it gets calls again within a few seconds.
    sum2.set_healthy(true);
    let passing_at = shown_as(&registry, "sum-2", Status::Passing).await;
    let sum2_at_passing = sum2.hits();
    while sum2.hits() == sum2_at_passing {
        if passing_at.elapsed() >= RETURN_BOUND {
            haproxy.fail(&format!(
                "sum-2 got no call within {RETURN_BOUND:?} of the registry showing it passing again"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "sum-2 got calls again {} ms after the registry showed it passing",
        passing_at.elapsed().as_millis()
    );

    // (d) Not one call failed: no instance ever stopped serving.
    let failures = traffic.failures();
    if !failures.is_empty() {
        haproxy.fail(&format!(
            "{} calls through HAProxy failed: {failures:#?}",
            failures.len()
        ));
    }
    let seen = traffic.stop().await;
    println!(
        "{} calls through HAProxy in {:?}, none failed: {:?}",
        seen.calls,
        started.elapsed(),
        seen.by_instance
    );
    if !seen.failures.is_empty() {
        haproxy.fail(&format!("calls failed: {:#?}", seen.failures));
    }
    drop(haproxy);
    registry.stop().await;
}
