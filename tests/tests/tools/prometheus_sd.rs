//! `GET /v1/sd/prometheus` against a real Prometheus: the registry's answer is what
//! Prometheus's `http_sd_configs` reads, so the test that matters is Prometheus itself
//! discovering the instances, scraping them (`up == 1`) and dropping one that
//! deregisters. A second test pins the answer's shape without Prometheus.
//!
//! The Prometheus test needs the `prometheus` binary (Debian package `prometheus`;
//! `scripts/ensure-tools.sh`, which `make test` runs, installs it). Without it the test
//! fails rather than skips, so a missing install cannot pass for a green run.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{Backend, Prometheus, TestRegistry, prometheus_binary};
use registry_api::{InstanceSpec, Status};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Longest wait for Prometheus to start, discover, scrape or forget a target.
const DEADLINE: Duration = Duration::from_secs(60);

/// A tiny HTTP server on port 0 answering `path` with one Prometheus gauge, standing in
/// for an instance that exposes metrics.
struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    async fn start(path: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics server");
        let addr = listener.local_addr().expect("metrics server address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0_u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let target = head.split_whitespace().nth(1).unwrap_or("");
                    let (status, body) = if target.split('?').next() == Some(path) {
                        ("200 OK", "# TYPE demo_up gauge\ndemo_up 1\n")
                    } else {
                        ("404 Not Found", "not found\n")
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prometheus {
    async fn api(&self, path: &str) -> Option<Value> {
        let response = self
            .http()
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// Active targets of the `registry` job: (registry instance id, health).
    async fn active_targets(&self) -> Option<Vec<(String, String)>> {
        let data = self.api("/api/v1/targets?state=active").await?;
        Some(
            data["activeTargets"]
                .as_array()?
                .iter()
                .filter(|t| t["labels"]["job"] == "registry")
                .map(|t| {
                    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
                    (
                        text(&t["discoveredLabels"]["__meta_registry_instance"]),
                        text(&t["health"]),
                    )
                })
                .collect(),
        )
    }

    /// Instances (by the copied `service` label and the instance id) whose `up` is 1.
    async fn up(&self) -> Option<Vec<(String, String)>> {
        let data = self.api("/api/v1/query?query=up").await?;
        let mut up: Vec<(String, String)> = data["result"]
            .as_array()?
            .iter()
            .filter(|r| r["value"][1] == "1")
            .map(|r| {
                let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
                (
                    text(&r["metric"]["service"]),
                    text(&r["metric"]["registry_instance"]),
                )
            })
            .collect();
        up.sort();
        Some(up)
    }

    /// Polls `probe` until it answers `Some`, or fails with Prometheus's log after the
    /// deadline.
    async fn eventually<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "timed out after {DEADLINE:?} waiting for {what}; prometheus log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn no_lease(url: &str) -> InstanceSpec {
    InstanceSpec {
        ttl_seconds: Some(0),
        ..InstanceSpec::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_scrapes_and_forgets_registered_instances() {
    // Fail before any setup when the tool is missing, with the one line that says why.
    prometheus_binary();
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let plain = MetricsServer::start("/metrics").await;
    let custom_path = MetricsServer::start("/internal/metrics").await;

    let mut demo1 = no_lease(&plain.url());
    demo1.tags = vec!["scrape".into(), "v1".into()];
    registry
        .api
        .register("demo", "demo-1", &demo1)
        .await
        .expect("register demo-1");
    // Scraped on its own path only if `__metrics_path__` reaches Prometheus.
    let mut demo2 = no_lease(&custom_path.url());
    demo2.tags = vec!["v1".into(), "scrape".into()];
    demo2
        .metadata
        .insert("metrics_path".into(), "/internal/metrics".into());
    registry
        .api
        .register("demo", "demo-2", &demo2)
        .await
        .expect("register demo-2");
    // Discovered but kept out by the tag rule below: proves the `,a,b,` tag format.
    registry
        .api
        .register("other", "other-1", &no_lease(&plain.url()))
        .await
        .expect("register other-1");

    let config = format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: registry
    http_sd_configs:
      - url: {}/v1/sd/prometheus
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_registry_tags]
        regex: .*,scrape,.*
        action: keep
      - source_labels: [__meta_registry_service]
        target_label: service
      - source_labels: [__meta_registry_instance]
        target_label: registry_instance
",
        registry.base_url
    );
    let mut prometheus = Prometheus::start("registry-prometheus-sd", &config).await;

    let targets = prometheus
        .eventually("both demo instances discovered and healthy", || async {
            let mut targets = prometheus.active_targets().await?;
            targets.sort();
            let healthy = targets.len() == 2 && targets.iter().all(|(_, health)| health == "up");
            healthy.then_some(targets)
        })
        .await;
    assert_eq!(
        targets
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["demo-1", "demo-2"],
        "other-1 has no `scrape` tag and must be dropped by the keep rule"
    );
    prometheus
        .eventually("up == 1 for both demo instances", || async {
            let up = prometheus.up().await?;
            let want = [
                ("demo".to_owned(), "demo-1".to_owned()),
                ("demo".to_owned(), "demo-2".to_owned()),
            ];
            (up == want).then_some(())
        })
        .await;

    registry
        .api
        .deregister("demo", "demo-2")
        .await
        .expect("deregister demo-2");
    prometheus
        .eventually("prometheus to drop the deregistered demo-2", || async {
            let targets = prometheus.active_targets().await?;
            let ids: Vec<&str> = targets.iter().map(|(id, _)| id.as_str()).collect();
            (ids == ["demo-1"]).then_some(())
        })
        .await;

    prometheus.stop().await;
    registry.stop().await;
}

/// GET the SD document: (status, content type, body).
async fn sd(registry: &TestRegistry, query: &str) -> (u16, String, Value) {
    let response = registry
        .http
        .get(registry.url(&format!("/v1/sd/prometheus{query}")))
        .send()
        .await
        .expect("GET /v1/sd/prometheus");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.json().await.expect("a JSON body");
    (status, content_type, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_offers_only_passing_instances_as_target_groups() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let (status, content_type, body) = sd(&registry, "").await;
    assert_eq!((status, body), (200, serde_json::json!([])));
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );

    let mut web = no_lease("https://web.internal/app");
    web.tags = vec!["a".into(), "b".into()];
    web.metadata
        .insert("app.kubernetes.io/name".into(), "web".into());
    web.metadata.insert("metrics_path".into(), "/m".into());
    registry
        .api
        .register("web", "web-1", &web)
        .await
        .expect("register web-1");
    registry
        .api
        .register("web", "web-2", &no_lease("http://10.0.0.8:8080"))
        .await
        .expect("register web-2");
    registry
        .api
        .set_status("web", "web-2", Status::Maintenance)
        .await
        .expect("drain web-2");
    registry
        .api
        .register("db", "db-1", &no_lease("http://[::1]:5433"))
        .await
        .expect("register db-1");

    let (status, _, body) = sd(&registry, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!([
            {
                "targets": ["[::1]:5433"],
                "labels": {
                    "__meta_registry_service": "db",
                    "__meta_registry_instance": "db-1",
                    "__meta_registry_url": "http://[::1]:5433",
                    "__meta_registry_status": "passing",
                    "__meta_registry_tags": ",,",
                    "__scheme__": "http",
                }
            },
            {
                "targets": ["web.internal:443"],
                "labels": {
                    "__meta_registry_service": "web",
                    "__meta_registry_instance": "web-1",
                    "__meta_registry_url": "https://web.internal/app",
                    "__meta_registry_status": "passing",
                    "__meta_registry_tags": ",a,b,",
                    "__meta_registry_metadata_app_kubernetes_io_name": "web",
                    "__meta_registry_metadata_metrics_path": "/m",
                    "__metrics_path__": "/m",
                    "__scheme__": "https",
                }
            }
        ]),
        "web-2 is in maintenance and must not be offered"
    );

    let (_, _, only_web) = sd(&registry, "?service=web").await;
    let ids: Vec<&Value> = only_web
        .as_array()
        .expect("an array")
        .iter()
        .map(|g| &g["labels"]["__meta_registry_instance"])
        .collect();
    assert_eq!(ids, ["web-1"]);
    assert_eq!(
        sd(&registry, "?service=nothing-here").await.2,
        serde_json::json!([])
    );
    let (status, _, error) = sd(&registry, "?service=Not_A_Name").await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "invalid_argument");
    assert_eq!(error["error"]["field"], "service");

    let doc: Value = registry
        .http
        .get(registry.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("JSON");
    assert!(doc["paths"]["/v1/sd/prometheus"]["get"].is_object());
    assert!(doc["components"]["schemas"]["TargetGroup"].is_object());
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_needs_the_read_token_when_one_is_set() {
    let registry = TestRegistry::start_with(Backend::Sqlite, |s| {
        s.read_token = Some("reader".into());
    })
    .await;
    let url = registry.url("/v1/sd/prometheus");
    let anonymous = registry.http.get(&url).send().await.expect("GET");
    assert_eq!(anonymous.status().as_u16(), 401);
    let reader = registry
        .http
        .get(&url)
        .bearer_auth("reader")
        .send()
        .await
        .expect("GET with the read token");
    assert_eq!(reader.status().as_u16(), 200);
    registry.stop().await;
}
