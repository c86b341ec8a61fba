//! Schemathesis against the registry's own `/openapi.json`, on each store: generated
//! requests (valid and invalid, the stateful phase following the links from a
//! registration to its heartbeat, status and deregistration) must never get a 5xx, and
//! every answer must match the document (status code, content type, headers, body).
//! Every check runs: invalid data must be refused and every schema-valid request
//! accepted, so the document states exactly what the server takes.
//!
//! `GET /v1/events` is left out too: a server-sent event stream never ends, so it cannot
//! be judged as one answer (the e2e tests http_api and bad_input cover it).
//! Settings: tests/fuzz/schemathesis.toml; the tool: `.venv/bin/schemathesis`
//! (scripts/ensure-tools.sh installs it). The seed is fixed so a failure replays.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::{Backend, TempDir, TestRegistry, repository};
use tokio::process::Command;

/// Fewest generated cases a run must reach.
const MIN_CASES: u64 = 1_000;
/// Longest a run may take.
const DEADLINE: Duration = Duration::from_secs(600);

fn schemathesis() -> PathBuf {
    let path = repository().join(".venv/bin/schemathesis");
    assert!(
        path.exists(),
        "{} is missing: run scripts/ensure-tools.sh (make test does)",
        path.display()
    );
    path
}

/// The `N generated` count of Schemathesis's summary.
fn generated_cases(output: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let (count, rest) = line.trim().split_once(' ')?;
        rest.starts_with("generated").then(|| count.parse().ok())?
    })
}

async fn fuzz(backend: Backend) {
    let tool = schemathesis();
    let registry = TestRegistry::start(backend).await;
    // Schemathesis keeps a cache in its working folder.
    let work = TempDir::new("api-fuzz");
    let run = Command::new(tool)
        .current_dir(&work.0)
        .arg("--no-color")
        .arg("--config-file")
        .arg(repository().join("tests/fuzz/schemathesis.toml"))
        .arg("run")
        .arg(registry.url("/openapi.json"))
        .args(["--checks", "all"])
        .args(["--exclude-path", "/v1/events"])
        .args(["--max-examples", "80"])
        .args(["--seed", "1"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("schemathesis ends within its deadline")
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{text}",
        output.status
    );
    let cases = generated_cases(&text).unwrap_or_default();
    assert!(
        cases >= MIN_CASES,
        "only {cases} cases were generated (at least {MIN_CASES} wanted):\n{text}"
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_on_sqlite_get_no_5xx_and_answers_that_match_the_document() {
    fuzz(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_on_postgres_get_no_5xx_and_answers_that_match_the_document() {
    fuzz(Backend::Postgres).await;
}

#[test]
fn reads_the_case_count_of_the_summary() {
    let summary = "Test cases:\n  1254 generated, 1254 passed\n\nSeed: 1";
    assert_eq!(generated_cases(summary), Some(1254));
    assert_eq!(generated_cases("nothing here"), None);
}
