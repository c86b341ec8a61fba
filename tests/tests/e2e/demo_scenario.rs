//! The resilience story end to end: `demo-client --scenario resilience` starts the real
//! registry and sample services, breaks them, and checks each step; this test runs it
//! and asserts every step's outcome from its output.

use std::time::Duration;

use tokio::process::Command;

/// The lines the story prints when each promised behaviour held.
const EXPECTED: &[&str] = &[
    "[ok] every instance registered and passing",
    "[ok] sum answers 25 and concat's phrase",
    "[ok] mult answers 150 and concat's phrase",
    "[ok] sum's circuit breaker for concat-1 opened",
    "[ok] every answer stayed complete: a failed call to concat-1 was retried on concat-2",
    "[ok] with the breaker open, calls go to concat-2 at once (10 of 10 complete)",
    "[ok] sum still answers 25, with string null (a partial result)",
    "[ok] mult still answers 150, with string null",
    "[ok] both concat instances are critical in the registry",
    "[ok] both concat instances are passing again",
    "[ok] the client knows the registry is unreachable",
    "[ok] every call succeeded without the registry",
    "[ok] the restarted registry kept every instance, all passing",
    "[ok] every breaker in sum is closed again",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resilience_story_holds_at_every_step() {
    let work_dir = std::env::temp_dir().join(format!(
        "registry-test-{}-{}-demo",
        std::process::id(),
        rand::random::<u64>()
    ));
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(crate::support::binary("demo-client"))
            .args(["--scenario", "resilience", "--work-dir"])
            .arg(&work_dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the story ends within 5 minutes")
    .expect("demo-client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in EXPECTED {
        assert!(
            stdout.contains(line),
            "missing `{line}` in the story:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(!stdout.contains("[FAIL]"), "a step failed:\n{stdout}");
    assert!(
        output.status.success(),
        "demo-client failed:\n{stdout}\n{stderr}"
    );
    assert!(
        work_dir.join("registry.log").exists() && work_dir.join("concat-1.log").exists(),
        "every process logs to the work folder"
    );
}
