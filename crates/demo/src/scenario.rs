//! What `demo-client` runs: the seed's flow (`sum(10,15)`, `mult(10,15)`), and the
//! resilience story that breaks things on purpose and checks, step by step, that the
//! system behaves as promised. Every expectation prints `[ok]` or `[FAIL]`; the story
//! fails if any expectation does.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use registry_api::{Status, SystemStatus};
use registry_cli::display;
use registry_client::RegistryApi;
use registry_client::caller::{CallerOptions, ServiceClient};
use registry_client::discovery::Discovery;
use serde_json::json;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::service::{BreakerView, Computed};

/// The expectations of a run, printed as they are checked.
#[derive(Debug, Default)]
pub struct Story {
    checks: u32,
    failures: Vec<String>,
}

impl Story {
    pub fn chapter(&self, number: u32, title: &str) {
        println!("\n== {number}. {title}");
    }

    pub fn note(&self, text: &str) {
        println!("   {text}");
    }

    /// Records one expectation.
    pub fn check(&mut self, ok: bool, what: &str) -> bool {
        self.checks += 1;
        println!("   [{}] {what}", if ok { "ok" } else { "FAIL" });
        if !ok {
            self.failures.push(what.to_owned());
        }
        ok
    }

    /// Prints the verdict; true when every expectation held.
    pub fn finish(&self) -> bool {
        if self.failures.is_empty() {
            println!("\nAll {} expectations held.", self.checks);
            true
        } else {
            println!(
                "\n{} of {} expectations failed:",
                self.failures.len(),
                self.checks
            );
            for failure in &self.failures {
                println!("  - {failure}");
            }
            false
        }
    }
}

/// Polls `probe` every 250 ms until it answers `Some` or `deadline` passes, printing a
/// dot every second so a person sees it is working.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    print!("   waiting for {what} ");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let mut last_dot = started;
    loop {
        if let Some(value) = probe().await {
            println!(" ({:.1}s)", started.elapsed().as_secs_f64());
            return Some(value);
        }
        if started.elapsed() >= deadline {
            println!(" gave up after {}s", deadline.as_secs());
            return None;
        }
        if last_dot.elapsed() >= Duration::from_secs(1) {
            print!(".");
            let _ = std::io::stdout().flush();
            last_dot = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `sum(x, y)` through the registry.
pub async fn sum(client: &ServiceClient, x: i64, y: i64) -> Result<Computed, String> {
    client
        .get_json("sum", &format!("/sum?x={x}&y={y}"))
        .await
        .map_err(|e| e.to_string())
}

/// `mult(x, y)` through the registry.
pub async fn mult(client: &ServiceClient, x: i64, y: i64) -> Result<Computed, String> {
    client
        .get_json("mult", &format!("/mult?x={x}&y={y}"))
        .await
        .map_err(|e| e.to_string())
}

fn complete(answer: &Result<Computed, String>, result: i64) -> bool {
    answer.as_ref().is_ok_and(|c| {
        c.result == result && c.string.as_deref() == Some(&format!("The result is: {result}"))
    })
}

fn partial(answer: &Result<Computed, String>, result: i64) -> bool {
    answer
        .as_ref()
        .is_ok_and(|c| c.result == result && c.string.is_none())
}

fn show(answer: &Result<Computed, String>) -> String {
    match answer {
        Ok(c) => json!({"result": c.result, "string": c.string}).to_string(),
        Err(e) => format!("error: {e}"),
    }
}

/// The seed's flow: the client finds `sum` through the registry and calls it; `sum` finds
/// `concat` and calls it; the same for `mult`. True when both answers are complete.
pub async fn seed_flow(story: &mut Story, client: &ServiceClient) -> bool {
    let s = sum(client, 10, 15).await;
    story.note(&format!("sum(10, 15)  -> {}", show(&s)));
    let m = mult(client, 10, 15).await;
    story.note(&format!("mult(10, 15) -> {}", show(&m)));
    let a = story.check(complete(&s, 25), "sum answers 25 and concat's phrase");
    let b = story.check(complete(&m, 150), "mult answers 150 and concat's phrase");
    a && b
}

/// Runs the seed's flow against the registry at `REGISTRY_URL` (for Kubernetes and
/// `helm test`). True when it worked.
pub async fn run_seed_flow(api: RegistryApi) -> bool {
    let mut story = Story::default();
    let client = ServiceClient::new(Discovery::new(api), CallerOptions::default());
    story.chapter(1, "The seed's flow");
    let ready = wait_for(
        "sum, mult and concat to be registered",
        Duration::from_secs(60),
        || async {
            let sum = sum(&client, 10, 15).await;
            complete(&sum, 25).then_some(())
        },
    )
    .await;
    story.check(ready.is_some(), "the services answer through the registry");
    seed_flow(&mut story, &client).await;
    story.finish()
}

async fn print_status(api: &RegistryApi) {
    match api.status(None).await {
        Ok(status) => {
            for line in display::format_status(&status).lines() {
                println!("   | {line}");
            }
        }
        Err(e) => println!("   | (registry unreachable: {e})"),
    }
}

fn passing_count(status: &SystemStatus, service: &str) -> usize {
    status
        .services
        .iter()
        .filter(|s| s.name == service)
        .flat_map(|s| &s.instances)
        .filter(|i| i.status == Status::Passing)
        .count()
}

fn instance_status(status: &SystemStatus, id: &str) -> Option<Status> {
    status
        .services
        .iter()
        .flat_map(|s| &s.instances)
        .find(|i| i.id == id)
        .map(|i| i.status)
}

async fn wait_for_passing(api: &RegistryApi, wanted: &[(&str, usize)], what: &str) -> bool {
    wait_for(what, Duration::from_secs(60), || async {
        let status = api.status(None).await.ok()?;
        wanted
            .iter()
            .all(|(service, n)| passing_count(&status, service) == *n)
            .then_some(())
    })
    .await
    .is_some()
}

/// The breakers inside the `sum` service, as its `/admin/breakers` shows them.
async fn breakers(http: &reqwest::Client, sum_url: &str) -> Vec<BreakerView> {
    let url = format!("{}/admin/breakers", sum_url.trim_end_matches('/'));
    match http.get(url).send().await {
        Ok(response) => response.json().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

fn breaker_state(views: &[BreakerView], target: &str) -> String {
    views
        .iter()
        .find(|b| b.target == target)
        .map_or_else(|| "closed".to_owned(), |b| b.state.clone())
}

fn print_breakers(views: &[BreakerView]) {
    if views.is_empty() {
        println!("   | sum has made no call through a breaker yet");
    }
    for view in views {
        let rate = view
            .failure_rate
            .map_or_else(|| "-".to_owned(), |r| format!("{:.0}%", r * 100.0));
        println!(
            "   | breaker in sum for {:<16} {:<9} failure rate {rate}",
            view.target, view.state
        );
    }
}

async fn set_fault(http: &reqwest::Client, url: &str, fault: serde_json::Value) -> bool {
    let url = format!("{}/admin/fault", url.trim_end_matches('/'));
    http.put(url)
        .json(&fault)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The resilience story of `make demo`: starts a local cluster in `work_dir`, breaks it
/// in the ways the client library is built to survive (a failing instance, a whole
/// service down, the registry killed), and checks each outcome. Ctrl-C
/// stops the story and every process cleanly.
pub async fn run_resilience(work_dir: &Path) -> anyhow::Result<bool> {
    let mut story = Story::default();
    story.chapter(
        1,
        "Start: a registry (SQLite) and sum, mult, concat-1, concat-2",
    );
    let mut cluster = Cluster::start(work_dir).await?;
    let outcome = tokio::select! {
        outcome = resilience_chapters(&mut story, &mut cluster) => outcome,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted");
            story.failures.push("interrupted".to_owned());
            Ok(())
        }
    };
    story.note("stopping every process (services leave the registry gracefully)");
    cluster.stop().await;
    outcome?;
    Ok(story.finish())
}

async fn resilience_chapters(story: &mut Story, cluster: &mut Cluster) -> anyhow::Result<()> {
    let api = RegistryApi::new(&cluster.registry_url())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let everyone = [("sum", 1), ("mult", 1), ("concat", 2)];
    let up = wait_for_passing(&api, &everyone, "every instance to register").await;
    story.check(up, "every instance registered and passing");
    print_status(&api).await;
    let client = ServiceClient::new(Discovery::new(api.clone()), CallerOptions::default());
    let sum_url = cluster.member("sum-1")?.url.clone();
    let concat_1 = cluster.member("concat-1")?.url.clone();
    let concat_2 = cluster.member("concat-2")?.url.clone();

    story.chapter(2, "Normal operation: the seed's flow");
    seed_flow(story, &client).await;

    story.chapter(3, "concat-1 starts failing: every answer is HTTP 500");
    story.check(
        set_fault(&http, &concat_1, json!({"error_rate": 1.0})).await,
        "fault injected into concat-1",
    );
    print!("   calling sum until its breaker for concat-1 opens ");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let (mut calls, mut complete_answers, mut open) = (0_u32, 0_u32, false);
    while !open && started.elapsed() < Duration::from_secs(60) && calls < 200 {
        let answer = sum(&client, 10, 15).await;
        calls += 1;
        complete_answers += u32::from(complete(&answer, 25));
        open = breaker_state(&breakers(&http, &sum_url).await, "concat/concat-1") == "open";
        print!(".");
        let _ = std::io::stdout().flush();
    }
    println!();
    story.note(&format!(
        "{calls} calls to sum: {complete_answers} complete answers"
    ));
    story.check(open, "sum's circuit breaker for concat-1 opened");
    story.check(
        complete_answers == calls,
        "every answer stayed complete: a failed call to concat-1 was retried on concat-2",
    );
    let mut after = 0;
    for _ in 0..10 {
        after += u32::from(complete(&sum(&client, 10, 15).await, 25));
    }
    story.check(
        after == 10,
        "with the breaker open, calls go to concat-2 at once (10 of 10 complete)",
    );
    print_breakers(&breakers(&http, &sum_url).await);

    story.chapter(4, "Every concat instance is down");
    let down = set_fault(&http, &concat_1, json!({"down": true})).await
        && set_fault(&http, &concat_2, json!({"down": true})).await;
    story.check(
        down,
        "concat-1 and concat-2 stop answering and stop heartbeating",
    );
    let s = sum(&client, 10, 15).await;
    let m = mult(&client, 10, 15).await;
    story.note(&format!("sum(10, 15)  -> {}", show(&s)));
    story.note(&format!("mult(10, 15) -> {}", show(&m)));
    story.check(
        partial(&s, 25),
        "sum still answers 25, with string null (a partial result)",
    );
    story.check(partial(&m, 150), "mult still answers 150, with string null");
    let lapsed = wait_for(
        "the registry to see concat's leases lapse",
        Duration::from_secs(30),
        || async {
            let status = api.status(None).await.ok()?;
            let both = instance_status(&status, "concat-1") == Some(Status::Critical)
                && instance_status(&status, "concat-2") == Some(Status::Critical);
            both.then_some(())
        },
    )
    .await;
    story.check(
        lapsed.is_some(),
        "both concat instances are critical in the registry",
    );
    print_status(&api).await;

    story.chapter(5, "concat recovers");
    let healed = set_fault(&http, &concat_1, json!({})).await
        && set_fault(&http, &concat_2, json!({})).await;
    story.check(healed, "faults cleared on concat-1 and concat-2");
    let back = wait_for_passing(&api, &everyone, "concat to be passing again").await;
    story.check(back, "both concat instances are passing again");

    story.chapter(6, "The registry is killed (SIGKILL)");
    cluster.kill_registry().await?;
    let mut ok = 0;
    let rounds = 20;
    for _ in 0..rounds {
        ok += u32::from(complete(&sum(&client, 10, 15).await, 25));
        ok += u32::from(complete(&mult(&client, 10, 15).await, 150));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let age = client.discovery().cached("sum").map_or_else(
        || "unknown".to_owned(),
        |r| format!("{:.1}s", r.age.as_secs_f64()),
    );
    story.note(&format!(
        "{ok} of {} calls complete; the client answers from its cache (sum's view is {age} old)",
        rounds * 2
    ));
    story.check(
        !client.discovery().registry_reachable(),
        "the client knows the registry is unreachable",
    );
    story.check(
        ok == rounds * 2,
        "every call succeeded without the registry",
    );

    story.chapter(7, "The registry comes back; everything heals");
    cluster.start_registry().await?;
    let all_back = wait_for_passing(&api, &everyone, "every instance to be passing").await;
    story.check(
        all_back,
        "the restarted registry kept every instance, all passing",
    );
    let closed = wait_for(
        "sum's breakers to close",
        Duration::from_secs(90),
        || async {
            let _ = sum(&client, 10, 15).await;
            let views = breakers(&http, &sum_url).await;
            views.iter().all(|b| b.state == "closed").then_some(())
        },
    )
    .await;
    story.check(closed.is_some(), "every breaker in sum is closed again");
    print_breakers(&breakers(&http, &sum_url).await);
    seed_flow(story, &client).await;
    print_status(&api).await;
    Ok(())
}
