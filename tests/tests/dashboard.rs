//! `deploy/grafana/central-registry.json` against a real Prometheus: every query of every
//! panel must return data once a registry, demo services and Prometheus run together, so a
//! renamed metric or label cannot leave a panel silently empty.
//!
//! The registry runs in this process; two `concat` and one `sum` demo services are the real
//! binaries, discovered by Prometheus through `/v1/sd/prometheus`. Needs the `prometheus`
//! binary (`scripts/ensure-tools.sh`); without it the test fails rather than skips.

mod support;

use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use registry_api::InstanceSpec;
use serde_json::Value;
use support::{Backend, TestRegistry, eventually};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest wait for a service, for Prometheus to start, or for every panel to have data.
const DEADLINE: Duration = Duration::from_secs(60);
/// Ports tried before giving up when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;

/// The dashboard, read from the repository.
fn dashboard() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/central-registry.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            if panel["type"] == "row" {
                walk(&panel["panels"], out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (panel title, expression) for every target of every panel.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("").to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |target| {
                    let expr = target["expr"].as_str().unwrap_or("").to_owned();
                    (title.clone(), expr)
                })
        })
        .collect()
}

#[test]
fn dashboard_is_json_with_titled_panels_that_have_queries() {
    let dashboard = dashboard();
    assert!(
        dashboard["title"].is_string(),
        "the dashboard needs a title"
    );
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion: {}",
        dashboard["schemaVersion"]
    );
    let panels = panels(&dashboard);
    assert!(!panels.is_empty(), "no panels");
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "a panel has no title: {panel}");
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets >= 1, "panel {title:?} has no target");
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "panel {title:?} has a target without an expression: {target}"
            );
        }
    }
    let ids: std::collections::BTreeSet<u64> =
        panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(
        ids.len(),
        panels.len(),
        "panel ids must be present and unique"
    );
}

/// A folder of its own under the system's temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
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
fn prometheus_binary() -> PathBuf {
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

/// A Prometheus server run for the test, killed on drop.
struct Prometheus {
    child: Child,
    base_url: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus on a port the system just handed out (it cannot take port 0),
    /// trying another one if something took it in between, and waits until it is ready.
    async fn start(config: &Path, dir: &Path) -> Self {
        let binary = prometheus_binary();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = {
                let probe = StdTcpListener::bind("127.0.0.1:0").expect("bind a probe port");
                probe.local_addr().expect("probe address").port()
            };
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let log_file = std::fs::File::create(&log).expect("create the Prometheus log");
            let child = Command::new(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("data-{attempt}")).display()
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
            };
            if prometheus.wait_until_ready().await {
                return prometheus;
            }
            eprintln!(
                "prometheus did not start on port {port} (attempt {attempt}): {}",
                prometheus.log_tail()
            );
        }
        panic!("prometheus did not start after {PORT_ATTEMPTS} attempts");
    }

    /// `true` once `/-/ready` answers 200 and our own process logged that it is ready;
    /// `false` if the process exits first (the port was taken) or the deadline passes.
    async fn wait_until_ready(&mut self) -> bool {
        let until = tokio::time::Instant::now() + DEADLINE;
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

    /// The end of Prometheus's log, to explain a failure.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The instant query's result vector, or why there is none.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base_url),
            &[("query", expr)],
        )
        .map_err(|e| e.to_string())?;
        let response = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("query failed: {body}"));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Active targets by job: (job, health).
    async fn targets(&self) -> Vec<(String, String)> {
        let Ok(response) = self
            .http
            .get(format!("{}/api/v1/targets?state=active", self.base_url))
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: Value = response.json().await.unwrap_or_default();
        body["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
                (
                    format!("{} {}", text(&t["labels"]["job"]), text(&t["scrapeUrl"])),
                    text(&t["health"]),
                )
            })
            .collect()
    }
}

/// A demo service started from its binary, with its URL read from its log.
struct DemoService {
    url: String,
    _child: Child,
}

impl DemoService {
    async fn start(registry: &TestRegistry, role: &str, id: &str) -> Self {
        let mut child = Command::new(support::binary("demo-service"))
            .args(["--role", role])
            .env("REGISTRY_URL", &registry.base_url)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("INSTANCE_ID", id)
            // A short lease: a heartbeat about every second.
            .env("SERVICE_TTL_SECONDS", "3")
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
        let url = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.expect("read the log") {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
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

/// One call to sum, which calls concat through the client library.
async fn call_sum(http: &reqwest::Client, sum: &DemoService) -> bool {
    http.get(format!("{}/sum?x=2&y=3", sum.url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    // Fail before any setup when the tool is missing, with the one line that says why.
    prometheus_binary();
    let exprs = expressions(&dashboard());
    assert!(!exprs.is_empty(), "the dashboard has no queries");

    let registry = TestRegistry::start(Backend::Sqlite).await;
    let concat1 = DemoService::start(&registry, "concat", "concat-1").await;
    let concat2 = DemoService::start(&registry, "concat", "concat-2").await;
    let sum = DemoService::start(&registry, "sum", "sum-1").await;
    eventually(
        DEADLINE,
        "both concat instances to be registered",
        || async {
            let answer = registry.api.service("concat", None).await.ok()?;
            (answer.instances.len() == 2).then_some(())
        },
    )
    .await;
    // A lease that is never renewed, so expirations is not zero. Its URL has nothing
    // listening; once its lease lapses it is no longer offered to Prometheus.
    let mut lapsing = InstanceSpec::new("http://127.0.0.1:9");
    lapsing.ttl_seconds = Some(1);
    registry
        .api
        .register("lapsing", "lapsing-1", &lapsing)
        .await
        .expect("register lapsing-1");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    for _ in 0..4 {
        assert!(call_sum(&http, &sum).await, "sum answers");
    }

    let dir = TempDir::new("registry-dashboard");
    let config = dir.0.join("prometheus.yml");
    let registry_target = registry
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    std::fs::write(
        &config,
        format!(
            "global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: central-registry
    static_configs:
      - targets: ['{registry_target}']
  - job_name: services
    http_sd_configs:
      - url: {}/v1/sd/prometheus
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_registry_instance]
        target_label: registry_instance
",
            registry.base_url
        ),
    )
    .expect("write prometheus.yml");
    let prometheus = Prometheus::start(&config, &dir.0).await;

    // Poll every expression until each has a result, driving sum traffic meanwhile.
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut pending = exprs.clone();
    loop {
        call_sum(&http, &sum).await;
        let mut still = Vec::new();
        for (title, expr) in pending {
            match prometheus.query(&expr).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => still.push((title, expr)),
                Err(error) => {
                    // A query Prometheus rejects is wrong at once, not late.
                    panic!("panel {title:?}: {expr}: {error}");
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= until {
            let list: Vec<String> = pending
                .iter()
                .map(|(title, expr)| format!("  {title}: {expr}"))
                .collect();
            panic!(
                "{} of {} dashboard queries returned no data after {DEADLINE:?}:\n{}\n\
                 targets: {:?}\nprometheus log:\n{}",
                pending.len(),
                exprs.len(),
                list.join("\n"),
                prometheus.targets().await,
                prometheus.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The lapsed lease was counted and reached Prometheus.
    let expired = prometheus
        .query("max(registry_expirations_total)")
        .await
        .expect("query expirations");
    assert!(
        expired
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0),
        "registry_expirations_total should be at least 1: {expired:?}"
    );

    drop(prometheus);
    drop((sum, concat1, concat2));
    registry.stop().await;
}
