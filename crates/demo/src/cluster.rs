//! The local cluster of the resilience demo: a registry on SQLite and the sample
//! services, each a child process with its log in a file, so the story can kill and
//! restart the registry and break services at will.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How long a process may take to say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lease of the demo services: short, so the story moves quickly.
pub const SERVICE_TTL_SECONDS: u32 = 3;

/// One sample service instance of the cluster.
#[derive(Debug)]
pub struct Member {
    pub service: String,
    pub id: String,
    /// Where it answers (and registered).
    pub url: String,
    child: Child,
}

/// The processes of the demo and where their logs are.
#[derive(Debug)]
pub struct Cluster {
    pub work_dir: PathBuf,
    bin_dir: PathBuf,
    registry: Option<Child>,
    registry_port: u16,
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts the registry (SQLite in `work_dir`) and one sum, one mult and two concat
    /// instances, with the binaries found next to this one.
    pub async fn start(work_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let bin_dir = exe
            .parent()
            .context("this program has no folder")?
            .to_path_buf();
        for name in ["registry", "demo-service"] {
            if !bin_dir.join(name).exists() {
                bail!(
                    "{} is missing next to demo-client: run `cargo build --workspace --bins` (make demo does)",
                    name
                );
            }
        }
        let mut cluster = Self {
            work_dir: work_dir.to_path_buf(),
            bin_dir,
            registry: None,
            registry_port: 0,
            members: Vec::new(),
        };
        cluster.start_registry().await?;
        for (role, id) in [
            ("concat", "concat-1"),
            ("concat", "concat-2"),
            ("sum", "sum-1"),
            ("mult", "mult-1"),
        ] {
            cluster.start_member(role, id).await?;
        }
        Ok(cluster)
    }

    pub fn registry_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.registry_port)
    }

    /// Starts the registry; the first time on any free port, later on the same port so
    /// the services find it again.
    pub async fn start_registry(&mut self) -> anyhow::Result<()> {
        let database = format!("sqlite://{}", self.work_dir.join("registry.db").display());
        let mut command = Command::new(self.bin_dir.join("registry"));
        command
            .arg("serve")
            .env("DATABASE_URL", database)
            .env("REGISTRY_ADDR", format!("127.0.0.1:{}", self.registry_port))
            .env("REGISTRY_DEREGISTER_CRITICAL_AFTER", "10m");
        let (child, line) = spawn_logged(
            command,
            &self.work_dir.join("registry.log"),
            "registry listening",
        )
        .await?;
        let port = json_field(&line, "addr")
            .and_then(|addr| addr.rsplit(':').next().map(str::to_owned))
            .and_then(|port| port.parse().ok())
            .context("the registry did not say where it listens")?;
        self.registry_port = port;
        self.registry = Some(child);
        Ok(())
    }

    /// SIGKILL: the registry disappears without a word, as in a crash.
    pub async fn kill_registry(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.registry.take() {
            child.kill().await.context("cannot kill the registry")?;
        }
        Ok(())
    }

    async fn start_member(&mut self, role: &str, id: &str) -> anyhow::Result<()> {
        let mut command = Command::new(self.bin_dir.join("demo-service"));
        command
            .args(["--role", role])
            .env("REGISTRY_URL", self.registry_url())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("INSTANCE_ID", id)
            .env("SERVICE_TTL_SECONDS", SERVICE_TTL_SECONDS.to_string());
        let log = self.work_dir.join(format!("{id}.log"));
        let (child, line) = spawn_logged(command, &log, "demo service listening").await?;
        let url = json_field(&line, "advertise").context("the service did not say its URL")?;
        self.members.push(Member {
            service: role.to_owned(),
            id: id.to_owned(),
            url,
            child,
        });
        Ok(())
    }

    /// The member with this instance id.
    pub fn member(&self, id: &str) -> anyhow::Result<&Member> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .with_context(|| format!("no member {id}"))
    }

    /// Stops the services (SIGTERM: they leave the registry gracefully), then the registry.
    pub async fn stop(mut self) {
        for member in &mut self.members {
            terminate(&mut member.child).await;
        }
        if let Some(mut registry) = self.registry.take() {
            terminate(&mut registry).await;
        }
    }
}

/// SIGTERM, then SIGKILL if it does not stop in time.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Starts `command` with JSON logs copied to `log`, and waits until a log line whose
/// message is `ready` appears (answering that line).
async fn spawn_logged(
    mut command: Command,
    log: &Path,
    ready: &'static str,
) -> anyhow::Result<(Child, String)> {
    command
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await
        .with_context(|| format!("cannot write {}", log.display()))?;
    let (found, listening) = oneshot::channel();
    tokio::spawn(async move {
        let mut found = Some(found);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = file.write_all(line.as_bytes()).await;
            let _ = file.write_all(b"\n").await;
            if json_field(&line, "message").as_deref() == Some(ready)
                && let Some(found) = found.take()
            {
                let _ = found.send(line);
            }
        }
    });
    match tokio::time::timeout(START_TIMEOUT, listening).await {
        Ok(Ok(line)) => Ok((child, line)),
        _ => bail!("{program} did not start; see {}", log.display()),
    }
}

/// A field of a JSON log line (`fields.<name>`).
fn json_field(line: &str, name: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get("fields")?.get(name)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_json_log_lines() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"registry listening","addr":"127.0.0.1:4242"}}"#;
        assert_eq!(json_field(line, "addr").as_deref(), Some("127.0.0.1:4242"));
        assert_eq!(
            json_field(line, "message").as_deref(),
            Some("registry listening")
        );
        assert_eq!(json_field("not json", "addr"), None);
    }
}
