//! Shared test support: a registry in this process (on SQLite or Postgres, one fresh
//! database per test, port 0), the real `registry` binary as a child process, and
//! polling with a deadline instead of sleeping.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use registry_client::RegistryApi;
use registry_server::{Application, Settings, testing};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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

/// A registry served from this process.
pub struct TestRegistry {
    pub addr: SocketAddr,
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
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stderr") {
                if let Some(addr) = listening_addr(&line) {
                    return addr;
                }
            }
            panic!("the registry exited before listening");
        })
        .await
        .expect("the registry did not start listening within 60 s");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let base_url = format!("http://{addr}");
        let api = RegistryApi::new(&base_url).expect("client");
        Self {
            child,
            addr,
            base_url,
            api,
        }
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
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
