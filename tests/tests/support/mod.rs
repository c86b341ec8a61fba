//! Shared test support: a registry in this process (on SQLite or Postgres, one fresh
//! database per test, port 0), the real `registry` binary as a child process, a TCP
//! proxy that tests switch and cut to play outages, and polling with a deadline instead
//! of sleeping.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use registry_client::RegistryApi;
use registry_server::{Application, Settings, testing};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// A fresh, empty database of this kind.
    pub async fn fresh_url(self) -> String {
        match self {
            Self::Sqlite => testing::fresh_sqlite_url(),
            Self::Postgres => testing::fresh_postgres_database().await,
        }
    }
}

/// Runs one async test body on both stores: `both_stores!(name, |backend| async { ... })`.
#[macro_export]
macro_rules! both_stores {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::support::Backend::Postgres).await
            }
        }
    };
}

/// A spec without a lease whose status only its HTTP check on `path`, every second, decides
/// (nothing lapses during a test).
pub fn checked_spec(url: &str, path: &str) -> registry_api::InstanceSpec {
    let mut spec = registry_api::InstanceSpec::new(url);
    spec.ttl_seconds = Some(0);
    spec.check = Some(registry_api::CheckSpec {
        http: Some(path.to_owned()),
        tcp: None,
        interval_seconds: Some(1),
        timeout_seconds: Some(1),
        expect_json: None,
    });
    spec
}

/// A registry served from this process.
pub struct TestRegistry {
    pub addr: SocketAddr,
    /// Where Consul's API is served alone, when `consul_addr` was set.
    pub consul_addr: Option<SocketAddr>,
    /// Where DNS is answered (UDP and TCP), when `dns_addr` was set.
    pub dns_addr: Option<SocketAddr>,
    pub base_url: String,
    pub database_url: String,
    pub api: RegistryApi,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestRegistry {
    /// Starts a registry on a fresh database of `backend` with default settings.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a registry on a fresh database, after `tweak` adjusted the settings.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        let database_url = backend.fresh_url().await;
        Self::start_on(database_url, tweak).await
    }

    /// Starts a registry on an existing database (to restart on the same state).
    pub async fn start_on(database_url: String, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::new(
            "127.0.0.1:0".parse().expect("address"),
            Some(database_url.clone()),
        );
        tweak(&mut settings);
        let token = settings.token.clone().or(settings.read_token.clone());
        let application = Application::build(settings).await.expect("registry builds");
        let addr = application.local_addr().expect("bound");
        let consul_addr = application.consul_addr().expect("bound");
        let dns_addr = application.dns_addr().expect("bound");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(application.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let base_url = format!("http://{addr}");
        let mut api = RegistryApi::new(&base_url).expect("client");
        if let Some(token) = token {
            api = api.with_token(token);
        }
        Self {
            addr,
            consul_addr,
            dns_addr,
            base_url,
            database_url,
            api,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Stops the registry gracefully and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls `probe` until it answers `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM (what Kubernetes sends before a pod goes) to a running child process.
pub async fn sigterm(child: &Child) {
    let pid = child.id().expect("the process is still running");
    // `kill` the command: sending a signal from Rust needs `libc` or `nix`.
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("run kill -TERM");
    assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
}

/// The repository's root folder (the workspace holds `tests/`).
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds tests/")
        .to_path_buf()
}

/// Runs a client script that talks to its test over its standard streams: each line it
/// prints goes to `answer`, whose reply (if any) is written back as a line; an `Err` from
/// `answer` stops the script. Fails, with the script's output and the end of its standard
/// error, unless it ends within `deadline` and successfully, its last line `ok`.
pub async fn run_script(
    mut command: Command,
    deadline: Duration,
    mut answer: impl AsyncFnMut(String) -> Result<Option<String>, String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start the script");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_text = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut seen = Vec::new();
    let mut problem = None;
    let talk = async {
        while let Some(line) = stdout.next_line().await.expect("read the script's output") {
            seen.push(line.clone());
            match answer(line).await {
                Ok(Some(reply)) => {
                    stdin
                        .write_all(format!("{reply}\n").as_bytes())
                        .await
                        .expect("answer the script");
                    stdin.flush().await.expect("answer the script");
                }
                Ok(None) => {}
                Err(what) => {
                    problem = Some(what);
                    break;
                }
            }
        }
    };
    let finished = tokio::time::timeout(deadline, talk).await.is_ok();
    if !finished || problem.is_some() {
        let _ = child.start_kill();
    }
    let status = child.wait().await.expect("the script ends");
    let errors = stderr_text.await.unwrap_or_default();
    let output = seen.join("\n");
    let tail = {
        let lines: Vec<&str> = errors.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    if let Some(problem) = problem {
        panic!("{problem}; the script said:\n{output}\n{tail}");
    }
    assert!(
        finished,
        "the script ran past {deadline:?}; its output:\n{output}\n{tail}"
    );
    assert!(
        status.success() && seen.last().map(String::as_str) == Some("ok"),
        "the script failed ({status}); its output:\n{output}\n{tail}"
    );
}

/// What to do when a tool the tests use is missing.
const INSTALL: &str = "run scripts/ensure-tools.sh (make test does)";

/// `.venv/bin/python` with `module` (from the PyPI package `package`) importable; fails
/// with the way out when either is missing.
pub fn venv_python(module: &str, package: &str) -> PathBuf {
    let python = repository().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: {INSTALL}",
        python.display()
    );
    let import = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .expect("run .venv/bin/python");
    assert!(
        import.status.success(),
        "{package} is not installed in .venv: {INSTALL}"
    );
    python
}

/// Fails with the way out when node, or the npm `package` installed in `tests/<folder>`,
/// is missing.
pub fn require_node_package(folder: &str, package: &str) {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("node cannot run ({e}): apt-get install nodejs, or {INSTALL}"));
    assert!(node.status.success(), "node --version failed: {INSTALL}");
    let installed = repository()
        .join("tests")
        .join(folder)
        .join("node_modules")
        .join(package);
    assert!(
        installed.is_dir(),
        "{} is missing: npm ci in tests/{folder}, or {INSTALL}",
        installed.display()
    );
}

/// Path of a binary of this workspace, built next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// The real `registry` binary running as a child process.
pub struct RegistryProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub base_url: String,
    pub api: RegistryApi,
    /// The log lines written before it listened (start-up messages).
    pub startup_log: Vec<String>,
    /// The log lines written since.
    log: std::sync::Arc<Mutex<Vec<String>>>,
}

impl RegistryProcess {
    /// Starts `registry serve` on port 0 with `DATABASE_URL` and extra env vars, and waits
    /// (with a deadline) until it logs the address it listens on.
    pub async fn start(database_url: &str, envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary("registry"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("REGISTRY_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start the registry binary");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut startup_log = Vec::new();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stderr") {
                if let Some(addr) = listening_addr(&line) {
                    return addr;
                }
                startup_log.push(line);
            }
            panic!("the registry exited before listening");
        })
        .await
        .expect("the registry did not start listening within 60 s");
        // Keep reading its log so it never blocks on a full pipe.
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().expect("log lock").push(line);
            }
        });
        let base_url = format!("http://{addr}");
        let api = RegistryApi::new(&base_url).expect("client");
        Self {
            child,
            addr,
            base_url,
            api,
            startup_log,
            log,
        }
    }

    /// The log lines written since it listened that contain `text`.
    pub fn log_lines_with(&self, text: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|line| line.contains(text))
            .cloned()
            .collect()
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// SIGTERM (what Kubernetes sends before a pod goes), then waits at most 30 s for the
    /// process to finish its graceful shutdown; answers how it exited.
    pub async fn terminate(mut self) -> ExitStatus {
        sigterm(&self.child).await;
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the registry stops within 30 s of SIGTERM")
            .expect("wait for the registry")
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "registry listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// A TCP proxy on `127.0.0.1:0` forwarding each connection to the current target: a
/// registry that tests restart elsewhere behind one address (as a Kubernetes Service
/// outlives its pods), or a database that tests take away from the registries using it.
///
/// Until the first [`set_target`](Self::set_target) every connection is accepted and
/// closed at once, as by a peer that is not there yet. Changing the target closes the
/// connections open to the old one. [`cut`](Self::cut) closes every open connection and
/// the listening socket itself, so new connections are refused, until `set_target`
/// listens again on the same port.
pub struct TcpProxy {
    pub addr: SocketAddr,
    target: watch::Sender<Option<SocketAddr>>,
    /// The accept loop; `None` while cut.
    accepting: Mutex<Option<JoinHandle<()>>>,
}

impl TcpProxy {
    /// Listens on a port the OS chooses, with no target yet.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (target, _) = watch::channel(None);
        let accepting = tokio::spawn(accept(listener, target.subscribe()));
        Self {
            addr,
            target,
            accepting: Mutex::new(Some(accepting)),
        }
    }

    /// `http://` and the proxy's address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Forwards new connections to `target` (closing those open to another target); after
    /// a [`cut`](Self::cut), listens again on the same port first.
    pub fn set_target(&self, target: SocketAddr) {
        // The target first, so that the first connection accepted after a cut has it.
        self.target.send_if_modified(|current| {
            let changed = *current != Some(target);
            *current = Some(target);
            changed
        });
        let mut accepting = self.accepting.lock().expect("proxy lock");
        if accepting.is_none() {
            // SO_REUSEADDR: the connections just cut may linger in TIME_WAIT on this port.
            let socket = TcpSocket::new_v4().expect("proxy socket");
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            socket
                .bind(self.addr)
                .unwrap_or_else(|e| panic!("listen again on the proxy's port {}: {e}", self.addr));
            let listener = socket.listen(1024).expect("listen");
            *accepting = Some(tokio::spawn(accept(listener, self.target.subscribe())));
        }
    }

    /// Closes the listening socket (new connections are refused) and every open
    /// connection, until [`set_target`](Self::set_target).
    pub async fn cut(&self) {
        let accepting = self.accepting.lock().expect("proxy lock").take();
        if let Some(task) = accepting {
            task.abort();
            // The listener is dropped with the task: refused from here on.
            let _ = task.await;
        }
        self.target.send_replace(None);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.accepting.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
        // Dropping `target` ends every forwarding task (their `changed()` fails).
    }
}

async fn accept(listener: TcpListener, targets: watch::Receiver<Option<SocketAddr>>) {
    while let Ok((inbound, _)) = listener.accept().await {
        tokio::spawn(forward(inbound, targets.clone()));
    }
}

/// Copies bytes both ways until either side closes or the target changes.
async fn forward(mut inbound: TcpStream, mut targets: watch::Receiver<Option<SocketAddr>>) {
    // No target: dropping the inbound side shows the client a peer that is not there.
    let Some(to) = *targets.borrow_and_update() else {
        return;
    };
    let Ok(mut outbound) = TcpStream::connect(to).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = targets.changed() => {}
    }
}

/// A folder of its own under the system's temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a temporary folder");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `prometheus` binary on PATH, or a failure saying how to get it.
pub fn prometheus_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("prometheus"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "prometheus is not installed: apt-get install prometheus (or run scripts/ensure-tools.sh)"
            )
        })
}

/// Longest wait for Prometheus to start.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(60);
/// Ports tried before giving up when another process takes the chosen one first.
const PROMETHEUS_PORT_ATTEMPTS: usize = 5;

/// A Prometheus server run for the test in a temporary folder of its own, killed on drop.
pub struct Prometheus {
    child: Child,
    base_url: String,
    log: PathBuf,
    http: reqwest::Client,
    // Last, so the folder goes after the process is killed.
    dir: Option<TempDir>,
}

impl Prometheus {
    /// Writes `config_yaml` as `prometheus.yml` in a new temporary folder named after
    /// `prefix` and starts Prometheus on a free port (it cannot take port 0): a port the
    /// system just handed out and that was released right before the start, and another
    /// one if something else took it in between. Waits, with a deadline, until it is ready.
    pub async fn start(prefix: &str, config_yaml: &str) -> Self {
        let binary = prometheus_binary();
        let dir = TempDir::new(prefix);
        let config = dir.0.join("prometheus.yml");
        std::fs::write(&config, config_yaml).expect("write prometheus.yml");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        for attempt in 1..=PROMETHEUS_PORT_ATTEMPTS {
            let port = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
                probe.local_addr().expect("probe address").port()
            };
            let log = dir.0.join(format!("prometheus-{attempt}.log"));
            let log_file = std::fs::File::create(&log).expect("create the Prometheus log");
            let child = Command::new(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.0.join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log_file))
                .kill_on_drop(true)
                .spawn()
                .expect("start prometheus");
            let mut prometheus = Self {
                child,
                base_url: format!("http://127.0.0.1:{port}"),
                log,
                http: http.clone(),
                dir: None,
            };
            if prometheus.wait_until_ready().await {
                prometheus.dir = Some(dir);
                return prometheus;
            }
            eprintln!(
                "prometheus did not start on port {port} (attempt {attempt}): {}",
                prometheus.log_tail()
            );
        }
        panic!("prometheus did not start after {PROMETHEUS_PORT_ATTEMPTS} attempts");
    }

    /// `true` once `/-/ready` answers 200; `false` if the process exits first (the port
    /// was taken) or the deadline passes.
    async fn wait_until_ready(&mut self) -> bool {
        let until = tokio::time::Instant::now() + PROMETHEUS_DEADLINE;
        while tokio::time::Instant::now() < until {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            let ready = self
                .http
                .get(format!("{}/-/ready", self.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            // Another process holding the port could answer too: ours must say in its
            // log that it is ready, and still be running.
            if ready && self.logged_ready() {
                return self.child.try_wait().ok().flatten().is_none();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill().await;
        false
    }

    fn logged_ready(&self) -> bool {
        std::fs::read_to_string(&self.log)
            .is_ok_and(|log| log.contains("Server is ready to receive web requests"))
    }

    /// The base URL, `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        self.base_url.clone()
    }

    /// The HTTP client (5 s timeout) for Prometheus's API.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The end of Prometheus's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Kills the server.
    pub async fn stop(&mut self) {
        self.child.kill().await.expect("stop prometheus");
    }
}

/// A demo service started from its binary, with its URL read from its log; killed on drop.
pub struct DemoService {
    pub url: String,
    _child: Child,
}

impl DemoService {
    /// Starts `demo-service --role role` as instance `id` of the registry at
    /// `registry_url`, with `envs` added, and waits up to `deadline` for its URL.
    pub async fn start(
        registry_url: &str,
        role: &str,
        id: &str,
        envs: &[(&str, &str)],
        deadline: Duration,
    ) -> Self {
        Self::start_with(
            Command::new(binary("demo-service")),
            registry_url,
            role,
            id,
            envs,
            deadline,
        )
        .await
    }

    /// As [`DemoService::start`], through `command`: the `demo-service` binary itself, or a
    /// program that runs it (`ip netns exec <ns> <binary>`). `envs` may set `LISTEN_ADDR`.
    pub async fn start_with(
        mut command: Command,
        registry_url: &str,
        role: &str,
        id: &str,
        envs: &[(&str, &str)],
        deadline: Duration,
    ) -> Self {
        let mut child = command
            .args(["--role", role])
            .env("REGISTRY_URL", registry_url)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("INSTANCE_ID", id)
            .envs(envs.iter().copied())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("demo-service starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(deadline, async {
            while let Some(line) = lines.next_line().await.expect("read the log") {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let fields = &entry["fields"];
                if fields["message"] == "demo service listening" {
                    return fields["advertise"].as_str().map(str::to_owned);
                }
            }
            None
        })
        .await
        .expect("demo-service says it listens in time")
        .expect("the listening line has the advertised URL");
        // Keep draining the log so the service never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { url, _child: child }
    }
}

/// A Postgres cluster of the test's own (initdb into a temporary folder, a free port on
/// 127.0.0.1), for faults that change server-wide settings and for replication (a primary
/// and its standbys, [`PrivatePostgres::standby_of`]). Needs root (the server runs
/// as the `postgres` user) and the server binaries under /usr/lib/postgresql, as
/// `scripts/ensure-postgres.sh` installs them; stopped (immediate) when dropped.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let bin = postgres_bin_dir();
        let dir = private_folder().await;
        let data = dir.join("data");
        run_as_postgres(
            &bin.join("initdb").to_string_lossy(),
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        )
        .await;
        Self::run(bin, dir).await
    }

    /// A streaming standby of `primary` (`pg_basebackup`), named `name` in the primary's
    /// `pg_stat_replication` and `synchronous_standby_names`; hot, so it answers reads.
    pub async fn standby_of(primary: &PrivatePostgres, name: &str) -> Self {
        let bin = primary.bin.clone();
        let dir = private_folder().await;
        let data = dir.join("data");
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres application_name={name}",
            primary.port
        );
        run_as_postgres(
            &bin.join("pg_basebackup").to_string_lossy(),
            &[
                "-D",
                &data.to_string_lossy(),
                "-d",
                &conninfo,
                "-X",
                "stream",
                "-R",
                "--no-sync",
            ],
        )
        .await;
        // -R wrote primary_conninfo from the connection; the last setting wins.
        let mut auto = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.auto.conf"))
            .expect("open the standby's postgresql.auto.conf");
        std::io::Write::write_all(
            &mut auto,
            format!("primary_conninfo = '{conninfo}'\n").as_bytes(),
        )
        .expect("name the standby");
        Self::run(bin, dir).await
    }

    /// Starts the server of `dir/data` on a free port.
    async fn run(bin: PathBuf, dir: PathBuf) -> Self {
        let data = dir.join("data");
        let port = free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            dir.display()
        );
        run_as_postgres(
            &bin.join("pg_ctl").to_string_lossy(),
            &[
                "-D",
                &data.to_string_lossy(),
                "-o",
                &options,
                "-l",
                &dir.join("server.log").to_string_lossy(),
                "-w",
                "start",
            ],
        )
        .await;
        Self { bin, dir, port }
    }

    /// `host:port`, as a host list in a URL names it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the server at once, as a crash would (`pg_ctl -m immediate`).
    pub async fn crash(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]).await;
    }

    /// Promotes a standby to primary, waiting until it accepts writes.
    pub async fn promote(&self) {
        self.pg_ctl(&["-w", "promote"]).await;
    }

    async fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let mut all = vec!["-D", data.to_str().expect("a UTF-8 path")];
        all.extend_from_slice(args);
        run_as_postgres(&self.bin.join("pg_ctl").to_string_lossy(), &all).await;
    }

    /// A URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` (one statement) as the superuser.
    pub async fn execute(&self, sql: &str) {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url())
            .await
            .expect("connect to the private Postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest server binaries folder under /usr/lib/postgresql.
fn postgres_bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    found.pop().unwrap_or_else(|| {
        panic!("no Postgres server binaries under /usr/lib/postgresql (scripts/ensure-postgres.sh installs them)")
    })
}

/// A new folder the `postgres` user owns, for a private server.
async fn private_folder() -> PathBuf {
    let made = run_as_postgres("mktemp", &["-d", "/tmp/registry-test-pg-XXXXXX"]).await;
    PathBuf::from(made.trim())
}

/// Runs a program as the `postgres` user (root only) and answers its standard output.
async fn run_as_postgres(program: &str, args: &[&str]) -> String {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--", program])
        .args(args)
        .current_dir("/tmp")
        .output()
        .await
        .expect("run runuser");
    assert!(
        output.status.success(),
        "{program} {args:?} as postgres failed (this test needs root): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A port free on 127.0.0.1 now (for a server that cannot be told to take port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// The address Postgres listens on, from a database URL.
pub async fn postgres_addr(database_url: &str) -> SocketAddr {
    let url = reqwest::Url::parse(database_url).expect("database URL");
    let host = url.host_str().expect("database host").to_owned();
    let port = url.port().unwrap_or(5432);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve the database host")
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .expect("the database host has an address")
}

/// `database_url` with its host and port replaced by the proxy's.
pub fn through(database_url: &str, proxy: &TcpProxy) -> String {
    let mut url = reqwest::Url::parse(database_url).expect("database URL");
    url.set_host(Some(&proxy.addr.ip().to_string()))
        .expect("set host");
    url.set_port(Some(proxy.addr.port())).expect("set port");
    url.to_string()
}
