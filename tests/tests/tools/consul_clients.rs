//! The Consul API with real, unmodified Consul clients: `py-consul` (PyPI, in `.venv`)
//! driven by `tests/consul-py/consul_client_test.py`, and the npm package `consul` (in
//! `tests/consul-js/node_modules`) driven by `tests/consul-js/consul_client_test.mjs`,
//! each against registries served from this process (SQLite, port 0). The Consul routes
//! are on the registry's own port, so the scripts get its URL.
//!
//! Each script runs every scenario itself and says `ok` at the end. This test is the
//! "other client" of the blocking query: when a script prints `change <service>`, this
//! test registers an instance `<service>-2` through v1 and answers
//! `changed <before_ms> <after_ms>` (Unix milliseconds around that write), so the script
//! can check that its parked query woke within a second of a change it did not make.
//!
//! Across ecosystems, also here: an instance that `py-consul` registered is discovered
//! and called by `registry-client`'s `ServiceClient`, and one registered with
//! `registry-client` shows in `py-consul`'s `health.service` as it was registered.
//! `scripts/ensure-tools.sh` installs both clients (`make test` runs it); without them
//! these tests fail, saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{
    Backend, TestRegistry, eventually, repository, require_node_package, run_script, venv_python,
};
use registry_api::InstanceSpec;
use registry_client::{CallerOptions, Discovery, ServiceClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest a whole script may take (its active checks each need a few probe intervals).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);
/// How long this test lets a script's blocking query park before it makes the change the
/// query waits for: the scenario is a change that comes while the query waits.
const PARK: Duration = Duration::from_millis(500);
/// Longest a registration made by one client may take to show to another.
const SHOWS_WITHIN: Duration = Duration::from_secs(10);
const WRITE_TOKEN: &str = "consul-clients-write";
const READ_TOKEN: &str = "consul-clients-read";

/// `.venv/bin/python`, with `py-consul` importable.
fn python() -> PathBuf {
    venv_python("consul", "py-consul")
}

fn python_script() -> PathBuf {
    repository().join("tests/consul-py/consul_client_test.py")
}

fn consul_js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("consul-js")
}

/// Fails with the way out when node or the npm `consul` package is missing.
fn require_node_client() {
    require_node_package("consul-js", "consul");
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
}

/// The environment a script needs: where the open and the guarded registry are, and the
/// guarded one's tokens.
fn script_env(command: &mut Command, open: &TestRegistry, guarded: Option<&TestRegistry>) {
    command
        .env("REGISTRY_CONSUL_URL", &open.base_url)
        .env("REGISTRY_WRITE_TOKEN", WRITE_TOKEN)
        .env("REGISTRY_READ_TOKEN", READ_TOKEN)
        // py-consul reads these when given no host and port; none may leak in.
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_SSL");
    if let Some(guarded) = guarded {
        command.env("REGISTRY_GUARDED_CONSUL_URL", &guarded.base_url);
    }
}

async fn start_open() -> TestRegistry {
    TestRegistry::start(Backend::Sqlite).await
}

async fn start_guarded() -> TestRegistry {
    TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.token = Some(WRITE_TOKEN.to_owned());
        settings.read_token = Some(READ_TOKEN.to_owned());
    })
    .await
}

/// Runs a scenarios script to its end, making the changes it asks for through v1, and
/// fails with its whole output unless it says `ok`.
async fn run_scenarios(command: Command, open: &TestRegistry) {
    run_script(command, SCRIPT_DEADLINE, async |line: String| {
        let Some(service) = line.strip_prefix("change ") else {
            return Ok(None);
        };
        tokio::time::sleep(PARK).await;
        let before = unix_ms();
        open.api
            .register(
                service,
                &format!("{service}-2"),
                &InstanceSpec::new("http://127.0.0.1:9102"),
            )
            .await
            .expect("register the other client's instance through v1");
        let after = unix_ms();
        Ok(Some(format!("changed {before} {after}")))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_registers_checks_watches_and_discovers() {
    let python = python();
    let open = start_open().await;
    let guarded = start_guarded().await;
    let mut command = Command::new(python);
    command.arg(python_script()).arg("scenarios");
    script_env(&mut command, &open, Some(&guarded));
    run_scenarios(command, &open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_npm_consul_client_registers_checks_watches_and_discovers() {
    require_node_client();
    let open = start_open().await;
    let guarded = start_guarded().await;
    let mut command = Command::new("node");
    command
        .arg("consul_client_test.mjs")
        .current_dir(consul_js_dir());
    script_env(&mut command, &open, Some(&guarded));
    run_scenarios(command, &open).await;
}

/// A Python service, registered by py-consul: it answers `GET /hello` until its standard
/// input closes, then deregisters.
struct PythonService {
    child: Child,
}

impl PythonService {
    async fn start(registry: &TestRegistry, service: &str, id: &str) -> Self {
        let mut command = Command::new(python());
        command
            .arg(python_script())
            .args(["serve", service, id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        script_env(&mut command, registry, None);
        let mut child = command.spawn().expect("start the Python service");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(SHOWS_WITHIN, stdout.next_line())
            .await
            .expect("the Python service registers in time")
            .expect("read its output");
        assert_eq!(
            first.as_deref(),
            Some("registered"),
            "the Python service did not register"
        );
        // Read the rest, so that its last words do not meet a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Self { child }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_registered_by_py_consul_is_discovered_and_called_by_the_service_client() {
    let registry = start_open().await;
    let mut service = PythonService::start(&registry, "py-hello", "py-hello-1").await;
    let client = ServiceClient::new(
        Discovery::new(registry.api.clone()),
        CallerOptions::default(),
    );
    let answer: serde_json::Value = eventually(SHOWS_WITHIN, "a call to py-hello", || async {
        client.get_json("py-hello", "/hello").await.ok()
    })
    .await;
    assert_eq!(answer["served_by"], "py-hello-1", "answer: {answer}");

    let instances = registry
        .api
        .service("py-hello", None)
        .await
        .expect("v1 lookup")
        .instances;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert!(
        instances[0].url.starts_with("http://127.0.0.1:"),
        "the instance's URL is http://Address:Port: {:?}",
        instances[0].url
    );
    drop(service.child.stdin.take());
    let _ = tokio::time::timeout(SHOWS_WITHIN, service.child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_registered_by_registry_client_shows_in_py_consul_health_service() {
    let python = python();
    let registry = start_open().await;
    let mut spec = InstanceSpec::new("http://10.1.2.3:7001");
    spec.tags = vec!["primary".to_owned(), "v3".to_owned()];
    spec.metadata = BTreeMap::from([("zone".to_owned(), "b".to_owned())]);
    spec.ttl_seconds = Some(0);
    registry
        .api
        .register("rust-made", "rust-made-1", &spec)
        .await
        .expect("register through registry-client");

    let node = eventually(SHOWS_WITHIN, "rust-made-1 in py-consul's view", || async {
        let mut command = Command::new(&python);
        command
            .arg(python_script())
            .args(["show", "rust-made"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        script_env(&mut command, &registry, None);
        let output = command.output().await.expect("run the script");
        assert!(output.status.success(), "show rust-made failed");
        let text = String::from_utf8_lossy(&output.stdout);
        let shown: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
        shown["nodes"]
            .as_array()?
            .iter()
            .find(|node| node["Service"]["ID"] == "rust-made-1")
            .cloned()
    })
    .await;
    let service = &node["Service"];
    assert_eq!(service["Service"], "rust-made", "{node}");
    assert_eq!(service["Address"], "10.1.2.3", "{node}");
    assert_eq!(service["Port"], 7001, "{node}");
    let mut tags: Vec<_> = service["Tags"]
        .as_array()
        .expect("Tags is a list")
        .iter()
        .filter_map(|tag| tag.as_str())
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["primary", "v3"], "{node}");
    assert_eq!(service["Meta"], serde_json::json!({"zone": "b"}), "{node}");
    assert_eq!(node["Node"]["Address"], "10.1.2.3", "{node}");
}
