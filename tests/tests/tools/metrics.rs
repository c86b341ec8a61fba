//! The registry's and the client library's Prometheus metrics, once every family has
//! samples, pass `promtool check metrics` and name every metric docs/operations.md
//! lists (Observability). The registry runs in this process; the demo services are the real
//! binaries, so the client metrics are those a service actually serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{Backend, DemoService, TestRegistry, eventually};
use registry_api::{CheckSpec, InstanceSpec};

/// How long a test waits for something the registry or a service does by itself.
const DEADLINE: Duration = Duration::from_secs(20);

const REGISTRY_METRICS: [&str; 11] = [
    "registry_instances",
    "registry_instances_by_status",
    "registry_registrations_total",
    "registry_heartbeats_total",
    "registry_expirations_total",
    "registry_check_results_total",
    "registry_events_total",
    "registry_watchers",
    "registry_index",
    "registry_http_request_duration_seconds",
    "registry_db_query_duration_seconds",
];

const CLIENT_METRICS: [&str; 5] = [
    "registry_client_breaker_state",
    "registry_client_calls_total",
    "registry_client_call_duration_seconds",
    "registry_client_discovery_cache_age_seconds",
    "registry_client_registry_reachable",
];

/// The output of `GET url`, which must be 200 in the Prometheus text format.
async fn scrape(url: &str) -> String {
    let response = reqwest::get(url).await.expect("scrape");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.expect("text")
}

/// Whether `text` has at least one sample of `family` (for a histogram, its count).
fn has_samples(text: &str, family: &str) -> bool {
    text.lines().any(|line| {
        !line.starts_with('#')
            && (line.starts_with(&format!("{family} "))
                || line.starts_with(&format!("{family}{{"))
                || line.starts_with(&format!("{family}_count")))
    })
}

/// The value of the sample line `series` exactly, if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Runs `promtool check metrics < file` on `text`; fails the test unless it exits 0.
fn promtool_check(text: &str, name: &str) {
    let file: PathBuf =
        std::env::temp_dir().join(format!("metrics-{name}-{}.txt", std::process::id()));
    std::fs::write(&file, text).expect("write the scrape");
    let output = run_promtool(&file);
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "promtool check metrics failed for {name}:\n{}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

fn run_promtool(file: &Path) -> std::process::Output {
    let stdin = std::fs::File::open(file).expect("open the scrape");
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(stdin)
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool is missing: run scripts/ensure-tools.sh (Debian package `prometheus`)")
        }
        Err(error) => panic!("cannot run promtool: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_metrics_pass_promtool_with_every_family_sampled() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let api = &registry.api;

    // A registration and heartbeats on a lease that then lapses.
    let mut leased = InstanceSpec::new("http://10.0.0.1:8080");
    leased.ttl_seconds = Some(1);
    api.register("leased", "l-1", &leased)
        .await
        .expect("register");
    api.heartbeat("leased", "l-1").await.expect("heartbeat");
    // An active check against the registry itself, which passes.
    let mut checked = InstanceSpec::new(&registry.base_url);
    checked.ttl_seconds = Some(0);
    checked.check = Some(CheckSpec {
        http: Some("/healthz".into()),
        tcp: None,
        interval_seconds: Some(1),
        timeout_seconds: None,
        expect_json: None,
    });
    api.register("checked", "c-1", &checked)
        .await
        .expect("register");

    let metrics_url = registry.url("/metrics");
    let text = eventually(DEADLINE, "a lapsed lease and a check result", || async {
        let text = scrape(&metrics_url).await;
        let lapsed = value(&text, "registry_expirations_total").is_some_and(|v| v >= 1.0);
        let checked = value(&text, "registry_check_results_total{result=\"passing\"}")
            .is_some_and(|v| v >= 1.0);
        (lapsed && checked).then_some(text)
    })
    .await;
    // The scrape that read this text is itself timed, so the histogram has samples too.
    let text = if has_samples(&text, "registry_http_request_duration_seconds") {
        text
    } else {
        scrape(&metrics_url).await
    };

    for family in REGISTRY_METRICS {
        assert!(
            has_samples(&text, family),
            "no samples of {family}:\n{text}"
        );
    }
    assert!(
        text.contains("route=\"/v1/services/{service}/instances/{id}/heartbeat\""),
        "requests are labelled with the route template:\n{text}"
    );
    promtool_check(&text, "registry");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_metrics_of_a_demo_service_pass_promtool() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let concat = DemoService::start(&registry.base_url, "concat", "concat-1", &[], DEADLINE).await;
    let sum = DemoService::start(&registry.base_url, "sum", "sum-1", &[], DEADLINE).await;
    eventually(DEADLINE, "concat to be registered", || async {
        let answer = registry.api.service("concat", None).await.ok()?;
        (!answer.instances.is_empty()).then_some(())
    })
    .await;

    let answer: serde_json::Value = reqwest::get(format!("{}/sum?x=2&y=3", sum.url))
        .await
        .expect("sum answers")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["result"], 5, "{answer}");

    let text = scrape(&format!("{}/metrics", sum.url)).await;
    for family in CLIENT_METRICS {
        assert!(
            has_samples(&text, family),
            "no samples of {family}:\n{text}"
        );
    }
    assert_eq!(
        value(
            &text,
            "registry_client_calls_total{outcome=\"success\",service=\"concat\"}"
        ),
        Some(1.0),
        "{text}"
    );
    promtool_check(&text, "demo-service");
    drop(concat);
    registry.stop().await;
}
