//! `deploy/grafana/central-registry.json` against a real Prometheus: every query of every
//! panel must return data once a registry, demo services and Prometheus run together, so a
//! renamed metric or label cannot leave a panel silently empty.
//!
//! The registry runs in this process; two `concat` and one `sum` demo services are the real
//! binaries, discovered by Prometheus through `/v1/sd/prometheus`. Needs the `prometheus`
//! binary (`scripts/ensure-tools.sh`); without it the test fails rather than skips.

mod support;

use std::path::Path;
use std::time::Duration;

use registry_api::InstanceSpec;
use serde_json::Value;
use support::{Backend, DemoService, Prometheus, TestRegistry, eventually, prometheus_binary};

/// Longest wait for a service, for Prometheus to start, or for every panel to have data.
const DEADLINE: Duration = Duration::from_secs(60);

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

impl Prometheus {
    /// The instant query's result vector, or why there is none.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url()),
            &[("query", expr)],
        )
        .map_err(|e| e.to_string())?;
        let response = self
            .http()
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
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
            .http()
            .get(format!("{}/api/v1/targets?state=active", self.url()))
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

/// A demo service whose lease is short: a heartbeat about every second.
async fn demo_service(registry: &TestRegistry, role: &str, id: &str) -> DemoService {
    DemoService::start(
        &registry.base_url,
        role,
        id,
        &[("SERVICE_TTL_SECONDS", "3")],
        DEADLINE,
    )
    .await
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
    let concat1 = demo_service(&registry, "concat", "concat-1").await;
    let concat2 = demo_service(&registry, "concat", "concat-2").await;
    let sum = demo_service(&registry, "sum", "sum-1").await;
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

    let registry_target = registry
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let config = format!(
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
    );
    let prometheus = Prometheus::start("registry-dashboard", &config).await;

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
