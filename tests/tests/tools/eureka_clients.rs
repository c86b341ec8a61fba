//! The Eureka API with real, unmodified Eureka clients: `py-eureka-client` (PyPI, in
//! `.venv`) driven by `tests/eureka-py/eureka_client_test.py`, and `eureka-js-client` (npm,
//! in `tests/eureka-js/node_modules`) driven by `tests/eureka-js/eureka_client_test.mjs`,
//! each against a registry served from this process (SQLite, port 0).
//!
//! Each script registers its own instance (a 3 s lease renewed every second), and stops at
//! `wait <name>` for this test, which checks through v1 what the registry holds and makes
//! the changes another client would, then answers `go`:
//! - `registered`: the instance is passing, and stays passing through renewals for more
//!   than three lease durations; then a second `backend` instance is registered through v1
//!   (the script must find both, by app and by VIP address);
//! - `out-of-service`: the client's override drained the instance (maintenance);
//! - `back`: the override is gone and the instance passing again; then the instance is
//!   removed through v1 (the registry lost it), so its next renewal answers 404;
//! - `lost`: the client registered again; then one `backend` instance is replaced through
//!   v1, and the script must see its registry follow;
//! - at the end the client deregistered itself on stop.
//!
//! Across protocols: the first `backend` instance is registered through Consul's API, so
//! the scripts find an instance Consul registered; and with py-eureka-client, the instance
//! it registered is found by py-consul's `health.service` (the Consul scripts' `show`
//! mode), by `dig` on the DNS interface and by `registry-client` (`registry.api`).
//!
//! `scripts/ensure-tools.sh` installs both clients (`make test` runs it); without them
//! these tests fail, saying so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dns_dig::dig;
use crate::support::{
    Backend, TestRegistry, repository, require_node_package, run_script, venv_python,
};
use registry_api::{InstanceSpec, Status};
use tokio::process::Command;

/// Longest a whole script may take.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(150);
/// Longest a change made by one side may take to show to the other.
const SHOWS_WITHIN: Duration = Duration::from_secs(15);
/// The clients' lease, and how long the instance must stay passing on renewals alone.
const LEASE: Duration = Duration::from_secs(3);
const STAYS_FOR: Duration = Duration::from_secs(10);
const WRITE_TOKEN: &str = "eureka-clients-write";
const READ_TOKEN: &str = "eureka-clients-read";

/// `.venv/bin/python`, with `py-eureka-client` importable.
fn python() -> PathBuf {
    venv_python("py_eureka_client", "py-eureka-client")
}

fn eureka_js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("eureka-js")
}

fn require_node_client() {
    require_node_package("eureka-js", "eureka-js-client");
}

/// What the test knows of the script's own instance.
struct Client {
    service: String,
    id: String,
    port: u16,
    /// Whether to find it through Consul's API and DNS too.
    across: bool,
}

impl Client {
    /// The app `app` registering port `port` with the clients' default instance id
    /// (`127.0.0.1:<app in lower case>:<port>`), as the model holds it.
    fn new(app: &str, port: u16, across: bool) -> Self {
        let service = app.to_ascii_lowercase();
        Self {
            id: format!("127.0.0.1_3a{service}_3a{port}"),
            service,
            port,
            across,
        }
    }
}

async fn status_of(registry: &TestRegistry, client: &Client) -> Option<(Status, String)> {
    let answer = registry.api.service(&client.service, None).await.ok()?;
    answer
        .instances
        .into_iter()
        .find(|i| i.id == client.id)
        .map(|i| (i.status, i.last_heartbeat_at.to_rfc3339()))
}

/// Polls until the client's instance has `wanted` (`None`: is gone).
async fn until(
    registry: &TestRegistry,
    client: &Client,
    wanted: Option<Status>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + SHOWS_WITHIN;
    loop {
        let now = status_of(registry, client).await;
        if now.as_ref().map(|(s, _)| *s) == wanted {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "{}/{} is {now:?} after {SHOWS_WITHIN:?}, not {wanted:?}",
                client.service, client.id
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Passing at every look for [`STAYS_FOR`] (several leases), renewed meanwhile.
async fn stays_passing(registry: &TestRegistry, client: &Client) -> Result<(), String> {
    until(registry, client, Some(Status::Passing)).await?;
    let first = status_of(registry, client).await;
    let end = tokio::time::Instant::now() + STAYS_FOR;
    while tokio::time::Instant::now() < end {
        match status_of(registry, client).await {
            Some((Status::Passing, _)) => {}
            other => {
                return Err(format!(
                    "with renewals every second and a {LEASE:?} lease, the instance was {other:?}"
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let last = status_of(registry, client).await;
    if first.as_ref().map(|f| &f.1) == last.as_ref().map(|l| &l.1) {
        return Err(format!(
            "no renewal reached the registry: {first:?} then {last:?}"
        ));
    }
    Ok(())
}

fn backend(port: u16) -> InstanceSpec {
    let mut spec = InstanceSpec::new(format!("http://127.0.0.1:{port}"));
    // No lease and no check: it stays passing through the whole test.
    spec.ttl_seconds = Some(0);
    spec
}

/// The first backend, registered through Consul's API (no check: always passing).
async fn register_backend_through_consul(registry: &TestRegistry) {
    let answer = registry
        .http
        .put(registry.url("/v1/agent/service/register"))
        .body(r#"{"Name": "backend", "ID": "backend-1", "Address": "127.0.0.1", "Port": 7001}"#)
        .send()
        .await
        .expect("the registry answers");
    assert!(
        answer.status().is_success(),
        "Consul registration: {}",
        answer.status()
    );
}

/// The client's instance as py-consul's `health.service` and `dig` find it.
async fn found_across(registry: &TestRegistry, client: &Client) -> Result<(), String> {
    let output = Command::new(python())
        .arg(repository().join("tests/consul-py/consul_client_test.py"))
        .args(["show", &client.service])
        .env("REGISTRY_CONSUL_URL", &registry.base_url)
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .await
        .map_err(|e| format!("run py-consul: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next().unwrap_or_default();
    let shown: serde_json::Value = serde_json::from_str(first)
        .map_err(|e| format!("py-consul's answer is not JSON ({e}): {text}"))?;
    let found = shown["nodes"].as_array().into_iter().flatten().any(|node| {
        node["Service"]["ID"] == client.id.as_str()
            && node["Service"]["Port"] == client.port
            && node["Service"]["Address"] == "127.0.0.1"
    });
    if !found {
        return Err(format!(
            "py-consul's health.service does not show it: {shown}"
        ));
    }
    let dns = registry.dns_addr.ok_or("the DNS interface is off")?;
    let answer = dig(dns, &format!("{}.service.consul", client.service), "A", &[]).await;
    if answer.answers("A") != ["127.0.0.1"] {
        return Err(format!("dig does not find it:\n{}", answer.text));
    }
    Ok(())
}

async fn register_backend(registry: &TestRegistry, n: u16) {
    registry
        .api
        .register("backend", &format!("backend-{n}"), &backend(7000 + n))
        .await
        .expect("register a backend through v1");
}

/// What the test does at a script's `wait <name>`.
async fn at(registry: &TestRegistry, client: &Client, name: &str) -> Result<(), String> {
    match name {
        "registered" => {
            stays_passing(registry, client).await?;
            if client.across {
                found_across(registry, client).await?;
            }
            register_backend(registry, 2).await;
        }
        "out-of-service" => until(registry, client, Some(Status::Maintenance)).await?,
        "back" => {
            until(registry, client, Some(Status::Passing)).await?;
            registry
                .api
                .deregister(&client.service, &client.id)
                .await
                .map_err(|e| format!("remove the instance through v1: {e}"))?;
        }
        "lost" => {
            until(registry, client, Some(Status::Passing)).await?;
            registry
                .api
                .deregister("backend", "backend-2")
                .await
                .map_err(|e| format!("remove backend-2: {e}"))?;
            register_backend(registry, 3).await;
        }
        other => return Err(format!("the script waits at an unknown step {other}")),
    }
    Ok(())
}

/// Runs a client's script to its end, answering its waits, and fails with its whole output
/// unless it says `ok` and its instance is gone afterwards.
async fn run(mut command: Command, client: Client) {
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.dns_addr = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let guarded = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.token = Some(WRITE_TOKEN.to_owned());
        settings.read_token = Some(READ_TOKEN.to_owned());
    })
    .await;
    register_backend_through_consul(&registry).await;
    let app = client.service.to_ascii_uppercase();
    command
        .env("REGISTRY_EUREKA_URL", registry.url("/eureka"))
        .env("REGISTRY_GUARDED_EUREKA_URL", guarded.url("/eureka"))
        .env("REGISTRY_WRITE_TOKEN", WRITE_TOKEN)
        .env("EUREKA_APP", app)
        .env("EUREKA_PORT", client.port.to_string());
    run_script(command, SCRIPT_DEADLINE, async |line: String| {
        let Some(name) = line.strip_prefix("wait ") else {
            return Ok(None);
        };
        at(&registry, &client, name)
            .await
            .map_err(|what| format!("at {name}: {what}"))?;
        Ok(Some("go".to_owned()))
    })
    .await;
    until(&registry, &client, None)
        .await
        .unwrap_or_else(|what| panic!("after the client stopped: {what}"));
    let guarded_left = guarded.api.services().await.expect("guarded services");
    assert!(
        guarded_left.services.is_empty(),
        "the guarded registry still holds {:?}",
        guarded_left.services
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_eureka_client_registers_renews_discovers_and_deregisters() {
    let mut command = Command::new(python());
    command.arg(repository().join("tests/eureka-py/eureka_client_test.py"));
    run(command, Client::new("PY-CLIENT", 9101, true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eureka_js_client_registers_renews_discovers_and_deregisters() {
    require_node_client();
    let mut command = Command::new("node");
    command
        .arg("eureka_client_test.mjs")
        .current_dir(eureka_js_dir());
    run(command, Client::new("JS-CLIENT", 9102, false)).await;
}
