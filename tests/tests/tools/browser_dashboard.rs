//! The dashboard at `/` in a real browser: Debian's headless Chromium, driven by
//! `playwright-core` from `tests/browser/dashboard.test.mjs`, against real registries
//! served from this process (SQLite).
//!
//! This test owns the registries and the instances; the Node script owns the browser and
//! asserts what a person would see. They talk through the script's standard output: when
//! the page shows the short-lease instance passing, the script prints `stop-heartbeats`
//! and this test stops renewing that lease, so the script can watch the row turn critical
//! without a reload; `outage-start` cuts the proxy between a page and its registry and
//! registers an instance meanwhile, `outage-end` restores the proxy, so the script can
//! watch the page reconnect by itself and catch up. A registry of 120 services is walked
//! a page at a time and searched. Needs `/usr/bin/chromium`, `node` and `tests/browser/node_modules`
//! (`scripts/ensure-tools.sh` installs them); without them the test fails, saying so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Backend, TcpProxy, TestRegistry};
use registry_api::{CheckSpec, InstanceSpec, Status};
use registry_client::RegistryApi;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Longest the whole browser run may take (start Chromium, every scenario, screenshots).
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);
/// Heartbeat cadence of the instances whose leases are kept alive: well inside their TTL.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(400);
/// The token the guarded registry wants for reads.
const READ_TOKEN: &str = "dashboard-read-token";
/// The instance whose lease the test lets lapse: service, id, lease in seconds.
const LAPSING: (&str, &str, u32) = ("search", "search-1", 2);

/// Services of the registry the paging scenario walks: more than two pages of fifty.
const PAGED_SERVICES: usize = 120;

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// `target/test-artifacts`, next to the build output (respects `CARGO_TARGET_DIR`).
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target directory above target/<profile>/deps");
    target.join("test-artifacts")
}

/// Fails with the way out when a tool of the browser test is missing.
fn require_browser_tools() {
    let fix = "run scripts/ensure-tools.sh (make test does)";
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: apt-get install chromium, or {fix}"
    );
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("node cannot run ({e}): apt-get install nodejs, or {fix}"));
    assert!(node.status.success(), "node --version failed: {fix}");
    let playwright = browser_dir().join("node_modules/playwright-core");
    assert!(
        playwright.is_dir(),
        "{} is missing: npm ci in tests/browser, or {fix}",
        playwright.display()
    );
}

fn spec(url: &str, ttl_seconds: u32) -> InstanceSpec {
    let mut spec = InstanceSpec::new(url);
    spec.ttl_seconds = Some(ttl_seconds);
    spec
}

/// Renews the leases of `alive` every [`HEARTBEAT_EVERY`] until the test ends; an
/// instance taken out of `alive` is left to lapse.
fn keep_alive(
    api: RegistryApi,
    alive: Arc<Mutex<BTreeSet<(String, String)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now: Vec<_> = alive.lock().expect("lock").iter().cloned().collect();
            for (service, id) in now {
                if let Err(error) = api.heartbeat(&service, &id).await {
                    eprintln!("heartbeat {service}/{id}: {error}");
                }
            }
            tokio::time::sleep(HEARTBEAT_EVERY).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_system_live_and_in_the_past_in_chromium() {
    require_browser_tools();
    let open = TestRegistry::start(Backend::Sqlite).await;
    let guarded = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.read_token = Some(READ_TOKEN.to_owned());
    })
    .await;

    // A small system: leases renewed by this test, lease-less instances, an active check
    // (against the registry's own /healthz, a real HTTP endpoint), one in maintenance,
    // and the instance whose lease will lapse.
    let api = &open.api;
    let base = open.base_url.clone();
    let alive = Arc::new(Mutex::new(BTreeSet::new()));
    for (service, id, ttl) in [("checkout", "checkout-1", 10), LAPSING] {
        api.register(
            service,
            id,
            &spec(&format!("http://10.0.0.7:8080/{id}"), ttl),
        )
        .await
        .expect("register a leased instance");
        alive
            .lock()
            .expect("lock")
            .insert((service.to_owned(), id.to_owned()));
    }
    let mut checked = spec(&base, 0);
    checked.check = Some(CheckSpec {
        http: Some("/healthz".to_owned()),
        tcp: None,
        interval_seconds: Some(1),
        timeout_seconds: Some(1),
        expect_json: None,
    });
    api.register("checkout", "checkout-2", &checked)
        .await
        .expect("register the checked instance");
    for (service, id) in [
        ("payments", "payments-1"),
        ("payments", "payments-2"),
        ("search", "search-2"),
        ("inventory", "inventory-1"),
    ] {
        api.register(service, id, &spec(&format!("http://10.0.1.9:9000/{id}"), 0))
            .await
            .expect("register a lease-less instance");
    }
    api.set_status("payments", "payments-2", Status::Maintenance)
        .await
        .expect("maintenance");
    let heartbeats = keep_alive(open.api.clone(), alive.clone());

    guarded
        .api
        .register("orders", "orders-1", &spec("http://10.0.2.3:7000/", 0))
        .await
        .expect("register on the guarded registry");

    // Six instances whose leases nobody renews: together they go silent, and the registry
    // holds their lapses (self-preservation) instead of turning them critical.
    let preserving = TestRegistry::start(Backend::Sqlite).await;
    for n in 1..=6 {
        preserving
            .api
            .register(
                "fleet",
                &format!("fleet-{n}"),
                &spec("http://10.0.4.1:8080/", 2),
            )
            .await
            .expect("register a fleet instance");
    }

    // More services than one page of the dashboard holds, one lease-less instance each:
    // app-000 to app-119, three pages of fifty.
    let paged = TestRegistry::start(Backend::Sqlite).await;
    for n in 0..PAGED_SERVICES {
        let service = format!("app-{n:03}");
        paged
            .api
            .register(
                &service,
                &format!("{service}-1"),
                &spec("http://10.0.5.1:8080/", 0),
            )
            .await
            .expect("register a paged service");
    }

    // The outage scenario reaches the registry through a proxy this test cuts and restores.
    let proxy = TcpProxy::start().await;
    proxy.set_target(open.addr);

    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    let mut node = Command::new("node")
        .arg("dashboard.test.mjs")
        .current_dir(browser_dir())
        .env("REGISTRY_URL", &open.base_url)
        .env("GUARDED_REGISTRY_URL", &guarded.base_url)
        .env("PROXIED_REGISTRY_URL", proxy.url())
        .env("PRESERVING_REGISTRY_URL", &preserving.base_url)
        .env("PAGED_REGISTRY_URL", &paged.base_url)
        .env("PAGED_SERVICES", PAGED_SERVICES.to_string())
        .env("READ_TOKEN", READ_TOKEN)
        .env("LAPSE_SERVICE", LAPSING.0)
        .env("LAPSE_INSTANCE", LAPSING.1)
        .env("CHROMIUM_PATH", CHROMIUM)
        .env("ARTIFACTS_DIR", &artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let stdout = node.stdout.take().expect("node stdout");
    let run = async {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await.expect("read node output") {
            eprintln!("browser: {line}");
            match line.trim() {
                "stop-heartbeats" => {
                    alive
                        .lock()
                        .expect("lock")
                        .remove(&(LAPSING.0.to_owned(), LAPSING.1.to_owned()));
                }
                // A change while the page cannot reach the registry: it must show up once
                // the page has reconnected by itself.
                "outage-start" => {
                    proxy.cut().await;
                    api.register("outage", "outage-1", &spec("http://10.0.3.1:8080/", 0))
                        .await
                        .expect("register during the outage");
                }
                "outage-end" => proxy.set_target(open.addr),
                _ => {}
            }
        }
        node.wait().await.expect("wait for node")
    };
    let status = tokio::time::timeout(BROWSER_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("the browser test did not finish within {BROWSER_DEADLINE:?}"));
    assert!(
        status.success(),
        "the browser test failed ({status}); its output is above"
    );

    // What the page showed is what the registry holds.
    let system = open.api.status(None).await.expect("status");
    let search = system
        .services
        .iter()
        .find(|s| s.name == LAPSING.0)
        .expect("search listed");
    let lapsed = search
        .instances
        .iter()
        .find(|i| i.id == LAPSING.1)
        .expect("search-1 listed");
    assert_eq!(lapsed.status, Status::Critical);
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a real screenshot",
        screenshot.display()
    );

    heartbeats.abort();
    paged.stop().await;
    preserving.stop().await;
    guarded.stop().await;
    open.stop().await;
}
