//! The system under test: the real `registry` release binary as a child process, on a
//! database made for this run and dropped after it, so every figure comes from the same
//! program users run and no run sees the state of another.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which store a registry runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// A database made for one benchmark run; [`Database::drop_now`] removes it.
pub struct Database {
    pub url: String,
    admin_url: Option<String>,
    name: String,
    dir: Option<PathBuf>,
}

/// A name no other run uses: the process id and the current time.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}_{}", std::process::id(), nanos)
}

impl Database {
    /// Creates an empty database of `backend`; Postgres ones on the server `admin_url`.
    pub async fn fresh(backend: Backend, admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("registry_bench_{}", unique_suffix());
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                Ok(Self {
                    url: format!("sqlite://{}", dir.join("registry.db").display()),
                    admin_url: None,
                    name,
                    dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(admin_url)
                    .await
                    .context("cannot reach Postgres (DATABASE_URL)")?;
                // The name is a fixed prefix, digits and underscores (above).
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .context("cannot create the benchmark database")?;
                let mut url = url::Url::parse(admin_url).context("DATABASE_URL is not a URL")?;
                url.set_path(&name);
                Ok(Self {
                    url: url.to_string(),
                    admin_url: Some(admin_url.to_owned()),
                    name,
                    dir: None,
                })
            }
        }
    }

    /// Removes the database (call once every registry on it has stopped).
    pub async fn drop_now(self) -> anyhow::Result<()> {
        if let Some(dir) = &self.dir {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        if let Some(admin) = &self.admin_url {
            let mut conn = sqlx::PgConnection::connect(admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await
            .context("cannot drop the benchmark database")?;
        }
        Ok(())
    }
}

/// Settings of the Postgres server that decide what "durable" means for registrations.
pub async fn postgres_durability(admin_url: &str) -> anyhow::Result<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&mut conn)
        .await?;
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut conn)
        .await?;
    Ok((fsync, synchronous_commit))
}

/// The release `registry` binary, built next to this one; `BENCH_REGISTRY` names another
/// (to measure a build before and after a change).
pub fn registry_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("BENCH_REGISTRY") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("path of this program")?;
    let path = exe
        .parent()
        .map(|dir| dir.join("registry"))
        .context("folder of this program")?;
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin registry` (make bench does)",
            path.display()
        );
    }
    Ok(path)
}

/// A running `registry serve`.
pub struct Registry {
    child: Child,
    pub base: String,
    /// Where its DNS interface listens (UDP and TCP), when `REGISTRY_DNS_ADDR` is set.
    pub dns: Option<SocketAddr>,
    /// Lines it has logged since it listens: a line per request would cost throughput
    /// (the DNS row reports it).
    log_lines: Arc<AtomicU64>,
}

impl Registry {
    /// Starts the registry on port 0 with `database_url` and `envs`, and waits (at most
    /// 60 s) until it logs the address it listens on.
    pub async fn start(database_url: &str, envs: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::start_under(&[], database_url, envs).await
    }

    /// [`Registry::start`], waiting at most `within` until it listens (it loads the whole
    /// registry from the database first, which takes long on a large one).
    pub async fn start_within(
        database_url: &str,
        envs: &[(&str, String)],
        within: Duration,
    ) -> anyhow::Result<Self> {
        Self::spawn(&[], database_url, envs, within).await
    }

    /// [`Registry::start`], run by `wrapper` (a program and its arguments, such as
    /// valgrind's) when it is not empty.
    pub async fn start_under(
        wrapper: &[String],
        database_url: &str,
        envs: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        Self::spawn(wrapper, database_url, envs, Duration::from_secs(60)).await
    }

    async fn spawn(
        wrapper: &[String],
        database_url: &str,
        envs: &[(&str, String)],
        within: Duration,
    ) -> anyhow::Result<Self> {
        let binary = registry_binary()?;
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("REGISTRY_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .envs(envs.iter().map(|(k, v)| (k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("cannot start the registry")?;
        let stderr = child.stderr.take().context("registry stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut dns = None;
        let addr = tokio::time::timeout(within, async {
            while let Some(line) = lines.next_line().await? {
                // Logged before the HTTP address when REGISTRY_DNS_ADDR is set.
                if let Some(addr) = listening_addr(&line, "DNS listening (UDP and TCP)") {
                    dns = Some(addr);
                }
                if let Some(addr) = listening_addr(&line, "registry listening") {
                    return Ok(addr);
                }
                if line.contains("\"ERROR\"") {
                    eprintln!("registry: {line}");
                }
            }
            bail!("the registry exited before listening")
        })
        .await
        .with_context(|| format!("the registry did not listen within {} s", within.as_secs()))??;
        // Keep draining its log so it never blocks on a full pipe; errors are shown.
        let log_lines = Arc::new(AtomicU64::new(0));
        let counted = log_lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                counted.fetch_add(1, Ordering::Relaxed);
                if line.contains("\"ERROR\"") {
                    eprintln!("registry: {line}");
                }
            }
        });
        Ok(Self {
            child,
            base: format!("http://{addr}"),
            dns,
            log_lines,
        })
    }

    /// Its process id (valgrind's, when it runs under valgrind: the same process).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// How many lines it has logged since it listens.
    pub fn log_lines(&self) -> u64 {
        self.log_lines.load(Ordering::Relaxed)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Resident memory of the process now, in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the registry has exited")?;
        rss_kib_of(&Path::new("/proc").join(pid.to_string()).join("status"))
    }

    /// CPU time the process has used so far, user and system.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let pid = self.child.id().context("the registry has exited")?;
        cpu_time_of(pid)
    }

    /// SIGTERM, then at most 30 s for the graceful shutdown; SIGKILL after that.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // `kill` the command: signalling from Rust would need `libc` and unsafe code.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// The address of a JSON log line whose message is `message`.
fn listening_addr(line: &str, message: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != message {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// CPU time process `pid` has used so far, user and system (`/proc/<pid>/stat`, in the
/// kernel's clock ticks of 1/100 s).
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    const TICKS_PER_SECOND: u64 = 100;
    let path = Path::new("/proc").join(pid.to_string()).join("stat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    // The fields after the command name (which may hold spaces) in parentheses; utime and
    // stime are the 14th and 15th of the line, the 12th and 13th after it.
    let after_name = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("no CPU time in {}", path.display()))
    };
    let ticks = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(ticks * 1_000 / TICKS_PER_SECOND))
}

fn rss_kib_of(status: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(status)
        .with_context(|| format!("cannot read {}", status.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("no VmRSS line")
}
