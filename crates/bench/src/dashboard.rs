//! The dashboard rows of `registry-bench --scale`: how long the dashboard at `/` takes to
//! show a large registry, and to answer a search, in headless Chromium.
//!
//! A person's wait is the page's, not the API's: the summary and a page of services
//! fetched, parsed and drawn. Measuring it needs a browser, so this module runs
//! `tests/browser/dashboard-timing.mjs` with `node` (Debian's Chromium driven by the
//! browser test's pinned playwright-core) and turns the JSON it prints into report rows.
//! Without those tools the rows say what is missing instead of ending the bench
//! (`make bench-scale` installs them as root).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::json;

use crate::Report;
use crate::registry::Registry;
use crate::scenarios::Spread;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Page loads, and searches, measured.
const REPEAT: usize = 5;
/// The target of both rows.
const TARGET: Duration = Duration::from_secs(2);
/// Longest the whole browser run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

const RENDER: &str = "dashboard first render in Chromium (summary and first page of 50)";

/// The folder of the browser test and its npm packages.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

/// Why the rows cannot be measured here, if they cannot.
async fn missing_tool() -> Option<String> {
    let fix = "make bench-scale installs it as root";
    if !Path::new(CHROMIUM).is_file() {
        return Some(format!(
            "{CHROMIUM} is missing (apt-get install chromium; {fix})"
        ));
    }
    let node = tokio::process::Command::new("node")
        .arg("--version")
        .output()
        .await;
    if !node.is_ok_and(|out| out.status.success()) {
        return Some(format!("node cannot run (apt-get install nodejs; {fix})"));
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "playwright-core is missing (npm ci in tests/browser; {fix})"
        ));
    }
    None
}

/// The first render of `/` on `registry` holding `instances` (at least) over `services`
/// services named `svc-N`, and a search for a name few of them contain.
pub async fn measure(
    registry: &Registry,
    instances: usize,
    services: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    // svc-X and svc-X0 to svc-X9: 11 services at every size.
    let term = format!("svc-{}", services * 4242 / 100_000);
    let matches = (0..services)
        .filter(|k| format!("svc-{k}").contains(&term))
        .count();
    let search = format!(
        "dashboard search for {term} ({matches} services) in Chromium, typing pause of 300 ms included"
    );
    if let Some(reason) = missing_tool().await {
        report.not_measured(RENDER, "< 2 s", &reason);
        report.not_measured(search, "< 2 s", &reason);
        return Ok(());
    }
    crate::scenarios::phase(&format!(
        "the dashboard in Chromium: {REPEAT} first renders, {REPEAT} searches for {term}"
    ));
    match run_script(registry, instances, &term, matches).await {
        Ok(timings) => {
            for (metric, key) in [(RENDER, "first_render_ms"), (&search, "search_ms")] {
                let spread =
                    spread(&timings[key]).with_context(|| format!("{key} in {timings}"))?;
                report.add(
                    format!("{metric}, {} times", spread.count),
                    format!("p50 {:.0} ms, max {:.0} ms", spread.p50_ms, spread.max_ms),
                    "< 2 s",
                    Some(spread.max_ms < TARGET.as_secs_f64() * 1e3),
                    json!({ "latency": spread, "chromium": timings["chromium"] }),
                );
            }
        }
        Err(error) => {
            let error = format!("{error:#}");
            for metric in [RENDER, &search] {
                report.add(
                    metric,
                    format!("failed: {error}"),
                    "< 2 s",
                    Some(false),
                    json!({ "error": error }),
                );
            }
        }
    }
    Ok(())
}

/// The times (milliseconds) of a JSON array as a [`Spread`].
fn spread(times: &serde_json::Value) -> Option<Spread> {
    let times = times.as_array()?;
    let samples = times
        .iter()
        .map(|ms| ms.as_f64().map(|ms| Duration::from_secs_f64(ms / 1e3)))
        .collect::<Option<Vec<_>>>()?;
    (!samples.is_empty()).then(|| Spread::of(samples))
}

/// Runs the timing script against `registry`; the JSON line it printed.
async fn run_script(
    registry: &Registry,
    instances: usize,
    term: &str,
    matches: usize,
) -> anyhow::Result<serde_json::Value> {
    let child = tokio::process::Command::new("node")
        .arg("dashboard-timing.mjs")
        .current_dir(browser_dir())
        .env("REGISTRY_URL", &registry.base)
        .env("INSTANCES", instances.to_string())
        .env("SEARCH", term)
        .env("SEARCH_MATCHES", matches.to_string())
        .env("REPEAT", REPEAT.to_string())
        .env("CHROMIUM_PATH", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("start node")?;
    let output = tokio::time::timeout(RUN_DEADLINE, child.wait_with_output())
        .await
        .with_context(|| format!("the browser run took over {RUN_DEADLINE:?}"))??;
    ensure!(
        output.status.success(),
        "dashboard-timing.mjs failed ({}); its output is above",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .context("no output from dashboard-timing.mjs")?;
    serde_json::from_str(line).with_context(|| format!("dashboard-timing.mjs printed {line:?}"))
}
