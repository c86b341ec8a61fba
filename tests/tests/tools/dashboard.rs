//! `deploy/grafana/central-registry.json` against a real Prometheus: every query of every
//! panel must return data while the demo's resilience scenario (`make demo`) runs, so a
//! renamed metric or label cannot leave a panel silently empty.
//!
//! `demo-client --scenario resilience` starts its own registry (SQLite), sum, mult and two
//! concat instances, breaks and heals them; Prometheus scrapes the registry (found in the
//! scenario's log) and the demo services (found through `/v1/sd/prometheus`). Needs the
//! `prometheus` binary (`scripts/ensure-tools.sh`); without it the test fails rather than
//! skips.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{Prometheus, TempDir, binary, eventually, prometheus_binary};
use serde_json::Value;
use tokio::process::Command;

/// Longest wait for the scenario's registry or for Prometheus to start.
const DEADLINE: Duration = Duration::from_secs(60);
/// Longest run of the whole scenario.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(300);

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

/// Where the scenario's registry listens, from the "registry listening" line of its log.
fn registry_addr(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let line: Value = serde_json::from_str(line).ok()?;
        (line["fields"]["message"] == "registry listening")
            .then(|| line["fields"]["addr"].as_str().map(str::to_owned))?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_while_the_demo_scenario_runs() {
    // Fail before any setup when the tool is missing, with the one line that says why.
    prometheus_binary();
    let exprs = expressions(&dashboard());
    assert!(!exprs.is_empty(), "the dashboard has no queries");

    let work = TempDir::new("dashboard-scenario");
    let story_path = work.0.join("story.txt");
    let story = std::fs::File::create(&story_path).expect("create the story file");
    let cluster_dir = work.0.join("cluster");
    let mut scenario = Command::new(binary("demo-client"))
        .args(["--scenario", "resilience", "--work-dir"])
        .arg(&cluster_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(story.try_clone().expect("story file")))
        .stderr(Stdio::from(story))
        .kill_on_drop(true)
        .spawn()
        .expect("start demo-client --scenario resilience");
    let story_text = || std::fs::read_to_string(&story_path).unwrap_or_default();

    let registry_log = cluster_dir.join("registry.log");
    let registry = eventually(DEADLINE, "the scenario's registry to listen", || {
        let addr = registry_addr(&registry_log);
        async move { addr }
    })
    .await;
    let config = format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: central-registry
    static_configs:
      - targets: ['{registry}']
  - job_name: services
    http_sd_configs:
      - url: http://{registry}/v1/sd/prometheus
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_registry_instance]
        target_label: registry_instance
"
    );
    let prometheus = Prometheus::start("registry-dashboard", &config).await;

    // Poll every expression while the story runs, until each has returned data once.
    let mut pending = exprs.clone();
    let mut ended = None;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (title, expr) in pending {
            match prometheus.query(&expr).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => still.push((title, expr)),
                // A query Prometheus rejects is wrong at once, not late.
                Err(error) => panic!("panel {title:?}: {expr}: {error}"),
            }
        }
        pending = still;
        ended = scenario.try_wait().expect("poll demo-client");
        if ended.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !pending.is_empty() {
        let list: Vec<String> = pending
            .iter()
            .map(|(title, expr)| format!("  {title}: {expr}"))
            .collect();
        panic!(
            "{} of {} dashboard queries returned no data while the scenario ran:\n{}\n\
             targets: {:?}\nprometheus log:\n{}\nscenario:\n{}",
            pending.len(),
            exprs.len(),
            list.join("\n"),
            prometheus.targets().await,
            prometheus.log_tail(),
            story_text()
        );
    }

    let status = match ended {
        Some(status) => status,
        None => tokio::time::timeout(SCENARIO_DEADLINE, scenario.wait())
            .await
            .expect("the scenario ends within its deadline")
            .expect("wait for demo-client"),
    };
    assert!(
        status.success(),
        "the scenario's checks held while it was scraped ({status}):\n{}",
        story_text()
    );
    drop(prometheus);
}
