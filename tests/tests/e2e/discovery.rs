//! Discovery against a real registry: the watch keeps the view fresh, the view is served
//! while the registry is stopped (fail static) and followed again when it returns, a cold
//! start works from the cache file alone, and a registry that lost its state is relearned:
//! the instances it forgot are kept for a bounded window, then it is followed rather than
//! waited on.
//!
//! A restarted registry gets a new port (port 0), so the client talks to it through a small
//! TCP proxy on a port of its own that the test switches to the new address, as a
//! Kubernetes Service would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{Backend, TestRegistry, eventually};
use registry_api::InstanceSpec;
use registry_client::RegistryApi;
use registry_client::discovery::{Discovery, DiscoveryOptions, Resolved};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(15);

/// A TCP forwarder on its own port 0. Switching the target cuts every open connection, as
/// the death of the process behind them would; with no target, connections are accepted
/// and closed at once (nothing behind the address). It counts the HTTP requests it
/// forwards (a client sends each request head in one write, and the watch sends one
/// request at a time).
struct Proxy {
    addr: SocketAddr,
    target: watch::Sender<Option<SocketAddr>>,
    requests: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: Option<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (target, targets) = watch::channel(target);
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut targets = targets.clone();
                let to = *targets.borrow_and_update();
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let Some(to) = to else { return };
                    let Ok(outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        () = forward(inbound, outbound, counter) => {}
                        _ = targets.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            target,
            requests,
            accept,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn switch(&self, to: Option<SocketAddr>) {
        self.target.send_replace(to);
    }

    fn api(&self) -> RegistryApi {
        RegistryApi::new(&format!("http://{}", self.addr)).expect("client")
    }
}

/// Copies both ways until either side closes, counting the request heads sent upstream.
async fn forward(inbound: TcpStream, outbound: TcpStream, requests: Arc<AtomicUsize>) {
    let (mut from_client, mut to_client) = inbound.into_split();
    let (mut from_server, mut to_server) = outbound.into_split();
    let upstream = async {
        let mut buffer = vec![0_u8; 16 * 1024];
        loop {
            let n = match from_client.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if buffer[..n].starts_with(b"GET ") {
                requests.fetch_add(1, Ordering::SeqCst);
            }
            if to_server.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    };
    let downstream = tokio::io::copy(&mut from_server, &mut to_client);
    tokio::select! {
        () = upstream => {}
        _ = downstream => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Short waits and backoffs so that the tests follow changes quickly.
fn options(cache_file: Option<PathBuf>) -> DiscoveryOptions {
    DiscoveryOptions {
        wait: Duration::from_secs(5),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(250),
        first_fetch_timeout: Duration::from_secs(3),
        cache_file,
        relearn_margin: RELEARN_MARGIN,
        relearn_default_lease: RELEARN_LEASE,
    }
}

/// The relearning window of these tests' instances (registered without a lease): a
/// forgotten instance is kept this long after the registry lost it.
const RELEARN_LEASE: Duration = Duration::from_secs(2);
const RELEARN_MARGIN: Duration = Duration::from_secs(1);

fn ids(resolved: &Resolved) -> Vec<&str> {
    let mut ids: Vec<&str> = resolved.instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

/// Registers without a lease (`ttl_seconds: 0`), so that no lease can lapse while a test
/// runs and add a change the test did not make.
async fn register(api: &RegistryApi, service: &str, id: &str) {
    let mut spec = InstanceSpec::new(format!("http://{id}.example:4040"));
    spec.ttl_seconds = Some(0);
    api.register(service, id, &spec).await.expect("register");
}

/// Polls the cached view (no I/O) until it has exactly these instance ids.
async fn cached_with(discovery: &Discovery, service: &str, expected: &[&str]) -> Resolved {
    eventually(
        DEADLINE,
        &format!("{service} cached with {expected:?}"),
        || async move {
            discovery
                .cached(service)
                .filter(|resolved| ids(resolved) == expected)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_sees_registrations_and_the_watch_keeps_the_view_fresh() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    register(&registry.api, "sum", "sum-1").await;
    let discovery = Discovery::with_options(registry.api.clone(), options(None));

    let sum = discovery.resolve("sum").await.expect("resolve");
    assert_eq!(ids(&sum), ["sum-1"]);
    assert!(sum.registry_reachable);
    assert!(discovery.registry_reachable());
    assert!(discovery.cached("mult").is_none());

    // No resolve call from here on: the background watch brings the change in.
    register(&registry.api, "sum", "sum-2").await;
    let fresh = cached_with(&discovery, "sum", &["sum-1", "sum-2"]).await;
    assert!(fresh.index > sum.index);
    assert!(fresh.registry_reachable);

    registry
        .api
        .deregister("sum", "sum-1")
        .await
        .expect("deregister");
    cached_with(&discovery, "sum", &["sum-2"]).await;

    // An unknown service resolves to an empty list, then fills in.
    let mult = discovery.resolve("mult").await.expect("resolve mult");
    assert!(mult.instances.is_empty());
    register(&registry.api, "mult", "mult-1").await;
    cached_with(&discovery, "mult", &["mult-1"]).await;

    // A name the registry refuses fails that resolve, and says nothing about the
    // registry's health.
    let refused = discovery
        .resolve("Not_A_Service")
        .await
        .expect_err("refused");
    assert_eq!(refused.status(), Some(400), "{refused:?}");
    assert!(discovery.registry_reachable());
    assert!(discovery.cached("Not_A_Service").is_none());

    discovery.shutdown();
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_known_view_is_served_while_the_registry_is_stopped() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let proxy = Proxy::start(Some(registry.addr)).await;
    register(&registry.api, "sum", "sum-1").await;
    // The default 30 s wait, longer than DEADLINE: the return of the registry must be
    // noticed at once, not when a blocking query on the unchanged service runs out.
    let long_wait = DiscoveryOptions {
        wait: Duration::from_secs(30),
        ..options(None)
    };
    let discovery = Discovery::with_options(proxy.api(), long_wait);
    let before = discovery.resolve("sum").await.expect("resolve");
    assert_eq!(ids(&before), ["sum-1"]);
    assert!(before.registry_reachable);

    let database_url = registry.database_url.clone();
    registry.stop().await;
    let d = &discovery;
    eventually(DEADLINE, "discovery to notice the outage", || async move {
        (!d.registry_reachable()).then_some(())
    })
    .await;

    // Fail static: the same instances, flagged as unconfirmed, with a growing age.
    let during = discovery.resolve("sum").await.expect("served from memory");
    assert_eq!(ids(&during), ["sum-1"]);
    assert!(!during.registry_reachable);
    assert_eq!(during.index, before.index);
    let first_age = during.age;
    let later = eventually(DEADLINE, "the age to grow", || async move {
        let resolved = d.resolve("sum").await.ok()?;
        (resolved.age >= first_age + Duration::from_millis(300)).then_some(resolved)
    })
    .await;
    assert_eq!(ids(&later), ["sum-1"]);
    assert!(!later.registry_reachable);
    assert!(discovery.max_cache_age() >= Some(later.age));

    // The registry returns on the same database, at a new address behind the proxy.
    let returned = TestRegistry::start_on(database_url, |_| {}).await;
    proxy.switch(Some(returned.addr));
    let confirmed = eventually(
        DEADLINE,
        "the unchanged view to be confirmed",
        || async move {
            d.cached("sum")
                .filter(|resolved| resolved.registry_reachable)
        },
    )
    .await;
    assert_eq!(ids(&confirmed), ["sum-1"]);
    assert_eq!(confirmed.index, before.index);
    assert!(confirmed.age < later.age, "{confirmed:?}");
    assert!(discovery.registry_reachable());
    register(&returned.api, "sum", "sum-2").await;
    let after = cached_with(&discovery, "sum", &["sum-1", "sum-2"]).await;
    assert!(after.registry_reachable);
    assert!(after.index > before.index);
    let resolved = discovery.resolve("sum").await.expect("resolve");
    assert_eq!(ids(&resolved), ["sum-1", "sum-2"]);

    discovery.shutdown();
    returned.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_with_the_registry_down_resolves_from_the_cache_file() {
    let dir = std::env::temp_dir().join(format!(
        "registry-tests-discovery-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cache_file = dir.join("discovery.json");

    let registry = TestRegistry::start(Backend::Sqlite).await;
    register(&registry.api, "sum", "sum-1").await;
    let warm = Discovery::with_options(registry.api.clone(), options(Some(cache_file.clone())));
    warm.resolve("sum").await.expect("resolve");
    let path = &cache_file;
    eventually(DEADLINE, "the cache file to be written", || async move {
        let text = std::fs::read_to_string(path).ok()?;
        text.contains("sum-1").then_some(())
    })
    .await;
    warm.shutdown();
    registry.stop().await;

    // A new process, and nothing answers at the registry's address.
    let proxy = Proxy::start(None).await;
    let cold = Discovery::with_options(proxy.api(), options(Some(cache_file.clone())));
    let sum = cold
        .resolve("sum")
        .await
        .expect("resolved from the cache file");
    assert_eq!(ids(&sum), ["sum-1"]);
    assert!(!sum.registry_reachable);
    assert!(!cold.registry_reachable());
    let unknown = cold.resolve("mult").await;
    assert!(unknown.is_err(), "nothing is known about mult: {unknown:?}");

    cold.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_lost_its_state_is_relearned_then_followed_not_waited_on() {
    let old = TestRegistry::start(Backend::Sqlite).await;
    for id in ["sum-1", "sum-2", "sum-3"] {
        register(&old.api, "sum", id).await;
    }
    let proxy = Proxy::start(Some(old.addr)).await;
    let discovery = Discovery::with_options(proxy.api(), options(None));
    let before = discovery.resolve("sum").await.expect("resolve");
    assert_eq!(ids(&before), ["sum-1", "sum-2", "sum-3"]);
    assert!(before.index >= 3);

    // Behind the same address, a registry on a fresh, empty database: its index starts
    // over, below the one the watch holds, and its epoch is another.
    let fresh = TestRegistry::start(Backend::Sqlite).await;
    register(&fresh.api, "sum", "sum-a").await;
    let switched = tokio::time::Instant::now();
    proxy.switch(Some(fresh.addr));
    // Relearning: what the registry says (sum-a), and what it forgot, kept meanwhile.
    let merged = cached_with(&discovery, "sum", &["sum-1", "sum-2", "sum-3", "sum-a"]).await;
    assert_eq!(merged.relearning, 3, "{merged:?}");
    assert!(merged.index < before.index, "{merged:?}");
    assert!(merged.registry_reachable);
    // Then, within the bounded window, the view follows the registry: it is not frozen.
    let followed = cached_with(&discovery, "sum", &["sum-a"]).await;
    let window = RELEARN_LEASE + RELEARN_MARGIN;
    assert!(
        switched.elapsed() >= window,
        "followed after {:?}, before the window of {window:?} ended",
        switched.elapsed()
    );
    assert_eq!(followed.relearning, 0);
    assert!(followed.index < before.index, "{followed:?}");
    assert!(followed.registry_reachable);

    // Still below the old index: a watch waiting for the old index would miss it.
    register(&fresh.api, "sum", "sum-b").await;
    let next = cached_with(&discovery, "sum", &["sum-a", "sum-b"]).await;
    assert!(next.index < before.index, "{next:?}");

    // And the watch holds its query again from the new index. A watch still asking with
    // the old index would be answered at once every time (the registry's rule for an
    // index ahead of its own) and poll in a loop. The one fixed wait of this file: it is
    // a measurement window, as no polling can show the absence of requests.
    let asked = proxy.requests();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let more = proxy.requests() - asked;
    assert!(more <= 2, "{more} queries in 1 s: the watch is not holding");

    discovery.shutdown();
    fresh.stop().await;
    old.stop().await;
}

// Indexes alone cannot tell a fresh database whose index already passed the old one: the
// epoch does. Instances the old registry knew are kept until they register again (here
// sum-2, at once) or their window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_is_relearned_even_when_the_index_moved_forward() {
    let old = TestRegistry::start(Backend::Sqlite).await;
    for id in ["sum-1", "sum-2"] {
        register(&old.api, "sum", id).await;
    }
    let proxy = Proxy::start(Some(old.addr)).await;
    let discovery = Discovery::with_options(proxy.api(), options(None));
    let before = discovery.resolve("sum").await.expect("resolve");
    assert_eq!(ids(&before), ["sum-1", "sum-2"]);

    let fresh = TestRegistry::start(Backend::Sqlite).await;
    for n in 0..before.index + 2 {
        register(&fresh.api, "other", &format!("other-{n}")).await;
    }
    register(&fresh.api, "sum", "sum-2").await;
    proxy.switch(Some(fresh.addr));
    let merged = cached_with(&discovery, "sum", &["sum-1", "sum-2"]).await;
    let merged = if merged.index == before.index {
        // Still the old registry's answer: wait for the fresh one's.
        eventually(DEADLINE, "the fresh registry's answer", || async {
            discovery
                .cached("sum")
                .filter(|resolved| resolved.index > before.index)
        })
        .await
    } else {
        merged
    };
    assert!(merged.index > before.index, "{merged:?}");
    assert_eq!(ids(&merged), ["sum-1", "sum-2"], "sum-1 kept: {merged:?}");
    assert_eq!(merged.relearning, 1, "sum-2 is the registry's: {merged:?}");
    cached_with(&discovery, "sum", &["sum-2"]).await;

    discovery.shutdown();
    fresh.stop().await;
    old.stop().await;
}
