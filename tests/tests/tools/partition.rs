//! A network partition of one `concat` instance, made real with a network namespace:
//! `concat-1` runs in a namespace of its own, joined to the host by a veth pair, and the
//! partition is the host end of that pair going down (nothing crosses, either way).
//!
//! While it lasts, `concat-1`'s heartbeats cannot reach the registry and `sum`'s calls
//! cannot reach it: the registry must mark it critical within its TTL (plus a second for
//! the sweep and a loaded machine), `sum`'s breaker for it must open, and every call to
//! `sum` must still answer in full (the failed call fails over to `concat-2`). When the
//! link comes back, `concat-1` must be passing again and `sum`'s breaker closed.
//!
//! Needs root (CAP_NET_ADMIN) and `ip` (iproute2), as CI has; without them it fails
//! with a line saying so.

use std::net::Ipv4Addr;
use std::process::Command as StdCommand;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::support::{Backend, DemoService, RegistryProcess, binary, eventually};
use registry_api::Status;
use registry_client::RegistryApi;
use registry_client::caller::{CallerOptions, ServiceClient};
use registry_client::discovery::Discovery;
use tokio::process::Command;
use tokio::time::Instant;

/// `concat-1`'s lease.
const TTL_SECONDS: u64 = 3;
/// How long a test waits for a state the system reaches by itself.
const DEADLINE: Duration = Duration::from_secs(30);

/// The namespace and veth pair of one test run, removed on drop.
struct Partitionable {
    namespace: String,
    host_link: String,
    host_ip: Ipv4Addr,
    inner_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = StdCommand::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Partitionable {
    /// A namespace with `inner_ip`, reachable from the host at `host_ip` over a veth pair.
    fn create() -> Self {
        let pid = std::process::id();
        // Interface names have at most 15 characters; the subnet differs per process.
        let third = u8::try_from(pid % 250).unwrap_or(0);
        let net = Self {
            namespace: format!("cr-part-{pid}"),
            host_link: format!("crh{pid}"),
            host_ip: Ipv4Addr::new(10, 213, third, 1),
            inner_ip: Ipv4Addr::new(10, 213, third, 2),
        };
        let inner_link = format!("crn{pid}");
        let (host_cidr, inner_cidr) = (
            format!("{}/30", net.host_ip),
            format!("{}/30", net.inner_ip),
        );
        let steps: [&[&str]; 8] = [
            &["netns", "add", &net.namespace],
            &[
                "link",
                "add",
                &net.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &inner_link,
            ],
            &["link", "set", &inner_link, "netns", &net.namespace],
            &["addr", "add", &host_cidr, "dev", &net.host_link],
            &["link", "set", &net.host_link, "up"],
            &[
                "-n",
                &net.namespace,
                "addr",
                "add",
                &inner_cidr,
                "dev",
                &inner_link,
            ],
            &["-n", &net.namespace, "link", "set", &inner_link, "up"],
            &["-n", &net.namespace, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(error) = ip(step) {
                panic!(
                    "cannot set up the network namespace ({error}); this test needs root \
                     (CAP_NET_ADMIN) and iproute2, as CI has"
                );
            }
        }
        net
    }

    fn set_link(&self, up: bool) {
        ip(&[
            "link",
            "set",
            &self.host_link,
            if up { "up" } else { "down" },
        ])
        .expect("switch the host end of the veth pair");
    }

    /// `demo-service` inside the namespace.
    fn command(&self) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(binary("demo-service"));
        command
    }
}

impl Drop for Partitionable {
    fn drop(&mut self) {
        // Deleting the host end removes its peer; the namespace goes last.
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}

/// `sum(10, 15)` answered in full (concat's sentence, not the partial answer).
async fn complete_sum(client: &ServiceClient) -> Result<(), String> {
    let answer: serde_json::Value = client
        .get_json("sum", "/sum?x=10&y=15")
        .await
        .map_err(|error| error.to_string())?;
    if answer["string"].as_str().is_some_and(|s| s.ends_with("25")) {
        Ok(())
    } else {
        Err(format!("partial answer: {answer}"))
    }
}

/// The state of `sum`'s breaker for `target`, as its `/admin/breakers` shows it.
async fn breaker_state(http: &reqwest::Client, sum_url: &str, target: &str) -> Option<String> {
    let views: serde_json::Value = http
        .get(format!("{sum_url}/admin/breakers"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    views
        .as_array()?
        .iter()
        .find(|view| view["target"] == target)
        .and_then(|view| view["state"].as_str().map(str::to_owned))
}

async fn status_of(api: &RegistryApi, id: &str) -> Option<Status> {
    let instances = api.service("concat", None).await.ok()?.instances;
    instances.into_iter().find(|i| i.id == id).map(|i| i.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_instance_turns_critical_breakers_open_calls_fail_over_and_it_heals() {
    let net = Partitionable::create();
    let database = Backend::Sqlite.fresh_url().await;
    let listen = format!("{}:0", net.host_ip);
    let registry = RegistryProcess::start(&database, &[("REGISTRY_ADDR", listen.as_str())]).await;
    let ttl = TTL_SECONDS.to_string();
    let inner_listen = format!("{}:0", net.inner_ip);
    let _concat_1 = DemoService::start_with(
        net.command(),
        &registry.base_url,
        "concat",
        "concat-1",
        &[
            ("SERVICE_TTL_SECONDS", ttl.as_str()),
            ("LISTEN_ADDR", inner_listen.as_str()),
        ],
        DEADLINE,
    )
    .await;
    let env = [("SERVICE_TTL_SECONDS", ttl.as_str())];
    let _concat_2 =
        DemoService::start(&registry.base_url, "concat", "concat-2", &env, DEADLINE).await;
    let sum = DemoService::start(&registry.base_url, "sum", "sum-1", &env, DEADLINE).await;
    let api = registry.api.clone();
    eventually(DEADLINE, "both concat instances passing", || async {
        let one = status_of(&api, "concat-1").await?;
        let two = status_of(&api, "concat-2").await?;
        (one == Status::Passing && two == Status::Passing).then_some(())
    })
    .await;
    // A call of sum that went to concat-1 just as the link went down waits out sum's own
    // call timeout (2 s: packets on an open connection vanish) before it is retried on
    // concat-2; the caller of sum gives it that long and more.
    let options = CallerOptions {
        call_timeout: Duration::from_secs(6),
        ..CallerOptions::default()
    };
    let client = Arc::new(ServiceClient::new(Discovery::new(api.clone()), options));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // sum has called concat-1 (its breaker exists, closed) before the partition.
    eventually(DEADLINE, "sum to call concat-1", || async {
        complete_sum(&client).await.ok()?;
        let state = breaker_state(&http, &sum.url, "concat/concat-1").await?;
        (state == "closed").then_some(())
    })
    .await;

    // Calls to sum from two loops, all through the partition and the healing.
    let calling = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (client, calling) = (client.clone(), calling.clone());
            let calls = calls.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while calling.load(Ordering::Relaxed) {
                    calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(error) = complete_sum(&client).await {
                        failures.push(error);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                failures
            })
        })
        .collect();

    net.set_link(false);
    let cut = Instant::now();
    eventually(DEADLINE, "concat-1 critical", || async {
        (status_of(&api, "concat-1").await? == Status::Critical).then_some(())
    })
    .await;
    let critical_after = cut.elapsed();
    eventually(DEADLINE, "sum's breaker for concat-1 open", || async {
        let state = breaker_state(&http, &sum.url, "concat/concat-1").await?;
        (state == "open").then_some(())
    })
    .await;
    println!("concat-1 critical {critical_after:?} after the partition; sum's breaker open");
    assert!(
        critical_after <= Duration::from_secs(TTL_SECONDS + 1),
        "concat-1 turned critical {critical_after:?} after the partition (TTL {TTL_SECONDS} s)"
    );

    net.set_link(true);
    let healed = Instant::now();
    eventually(DEADLINE, "concat-1 passing again", || async {
        (status_of(&api, "concat-1").await? == Status::Passing).then_some(())
    })
    .await;
    eventually(
        DEADLINE,
        "sum's breaker for concat-1 closed again",
        || async {
            let state = breaker_state(&http, &sum.url, "concat/concat-1").await?;
            (state == "closed").then_some(())
        },
    )
    .await;
    println!("healed {:?} after the link came back", healed.elapsed());

    calling.store(false, Ordering::Relaxed);
    let mut failures = Vec::new();
    for calls in loops {
        failures.extend(calls.await.expect("call loop"));
    }
    let calls = calls.load(Ordering::Relaxed);
    println!("{calls} calls to sum, {} not complete", failures.len());
    assert!(calls >= 20, "only {calls} calls to sum");
    assert!(
        failures.is_empty(),
        "calls to sum that did not answer in full ({} of {calls}):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    registry.kill().await;
}
