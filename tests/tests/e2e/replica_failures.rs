//! Replicas failing while clients keep calling them (docs/operations.md, Outages): several
//! `registry` replicas share one Postgres, and whatever happens to one of them, or to the
//! database under them, the clients (a `RegistryApi` over every replica's URL, and
//! `Registration` handles on it) should not notice more than docs/operations.md allows.
//!
//! - An active check is claimed by one replica per interval, not run by each, and goes on
//!   when the replicas that ran it stop.
//! - A replica SIGKILLed under steady calls costs no call: the client fails over.
//! - A rolling restart (SIGTERM, restart on the same port, wait for `/readyz`) costs no
//!   lookup and lapses no lease.
//! - Postgres taken away for 30 s: writes and readiness answer 503, lookups keep answering
//!   from the view, nothing answers 500, and no lease lapses because of the outage.
//! - After such an outage every lease gets one full TTL from the database's return
//!   (the outage grace), even when its client stays quiet until just before it ends.
//! - One replica cut off from Postgres while the other still reaches it hands its clients
//!   over before their leases run out.
//!
//! Postgres only: replicas need a shared database. Each test has a database of its own,
//! and every port is one the OS chose (a restarted replica binds again the port its
//! predecessor got). Sleeps appear only where time has to pass on purpose (a measured
//! window, an outage, a lease length); readiness is always polled with a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    Backend, RegistryProcess, TcpProxy, TestRegistry, eventually, postgres_addr, through,
};
use registry_api::{CheckSpec, ErrorBody, ErrorCode, InstanceSpec, Reason, Status};
use registry_client::{
    ClientError, Registration, RegistrationOptions, RegistrationState, RegistryApi,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// The service every test registers in and looks up.
const SERVICE: &str = "s";

/// How long a test waits for a state the registries reach by themselves.
const DEADLINE: Duration = Duration::from_secs(10);

/// ~20 lookups a second: dense enough that any gap in service shows as failed calls.
const LOOKUP_EVERY: Duration = Duration::from_millis(50);

/// A registration or a heartbeat every 100 ms, when the load writes.
const WRITE_EVERY: Duration = Duration::from_millis(100);

fn spec(ttl_seconds: u32) -> InstanceSpec {
    let mut spec = InstanceSpec::new("http://10.0.0.9:8080");
    spec.ttl_seconds = Some(ttl_seconds);
    spec
}

/// Every problem a test found, one line each, or nothing.
fn lines(problems: &[String]) -> String {
    problems.join("\n  ")
}

// ---------------------------------------------------------------------------------------
// 1. Active checks are claimed once per interval.

/// An HTTP server on `127.0.0.1:0` that answers 200 on `/health` and notes when.
struct HealthServer {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Instant>>>,
    task: JoinHandle<()>,
}

impl HealthServer {
    async fn start() -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let noted = hits.clone();
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                noted.lock().expect("hits lock").push(Instant::now());
                async { "ok" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the checked server");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.lock().expect("hits lock").len()
    }

    /// Time between consecutive hits from the `from`th on, in milliseconds.
    fn gaps_ms(&self, from: usize) -> Vec<u128> {
        let hits = self.hits.lock().expect("hits lock");
        hits.get(from..)
            .unwrap_or_default()
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect()
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_active_check_is_run_by_one_replica_per_interval_and_survives_replicas() {
    let url = Backend::Postgres.fresh_url().await;
    let a = TestRegistry::start_on(url.clone(), |_| {}).await;
    let b = TestRegistry::start_on(url.clone(), |_| {}).await;
    let c = TestRegistry::start_on(url, |_| {}).await;
    let health = HealthServer::start().await;

    let mut spec = InstanceSpec::new(format!("http://{}", health.addr));
    // Active check only: no lease to lapse while the test watches the checks.
    spec.ttl_seconds = Some(0);
    spec.check = Some(CheckSpec {
        http: Some("/health".into()),
        tcp: None,
        interval_seconds: Some(1),
        timeout_seconds: None,
        expect_json: None,
    });
    a.api
        .register(SERVICE, "checked", &spec)
        .await
        .expect("register via replica A");
    eventually(DEADLINE, "the first check", || async {
        (health.hits() > 0).then_some(())
    })
    .await;

    // On purpose: half an interval, so that the window does not start right after a
    // check (a check period a little over 1 s would then put the 6th check just past a
    // window of 6 s), then the window in which the checks are counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = Duration::from_secs(6);
    let (first, started) = (health.hits(), Instant::now());
    tokio::time::sleep(window).await;
    let (hits, measured) = (health.hits() - first, started.elapsed());
    println!(
        "{hits} checks in {measured:?} with three replicas (interval 1 s; run by each replica \
         it would be about {}); ms between checks: {:?}",
        3 * window.as_secs(),
        health.gaps_ms(first.saturating_sub(1))
    );
    let whole = usize::try_from(window.as_secs()).expect("small");
    assert!(
        (whole - 1..=whole + 2).contains(&hits),
        "{hits} checks in {measured:?}: one replica per interval should give about {whole}"
    );

    a.stop().await;
    b.stop().await;
    let (before, stopped) = (health.hits(), Instant::now());
    eventually(
        Duration::from_secs(5),
        "three checks run by C alone",
        || async { (health.hits() >= before + 3).then_some(()) },
    )
    .await;
    println!(
        "after A and B stopped, C ran three checks within {:?}",
        stopped.elapsed()
    );
    let on_c = c
        .api
        .service(SERVICE, None)
        .await
        .expect("lookup on C")
        .instances;
    assert_eq!(on_c.len(), 1, "{on_c:?}");
    assert_eq!(on_c[0].status, Status::Passing, "{:?}", on_c[0]);
    c.stop().await;
}

// ---------------------------------------------------------------------------------------
// Background load for tests 2 and 3.

/// What the background calls saw.
#[derive(Default)]
struct Tally {
    lookups: AtomicUsize,
    writes: AtomicUsize,
    slowest_ms: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    fn succeeded(&self) -> usize {
        self.lookups() + self.writes.load(Ordering::SeqCst)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("tally lock").clone()
    }

    fn record(
        &self,
        what: &str,
        origin: Instant,
        sent: Instant,
        registry: &str,
        result: Result<(), ClientError>,
    ) {
        let took = sent.elapsed();
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.slowest_ms.fetch_max(took_ms, Ordering::SeqCst);
        match result {
            Ok(()) if what == "lookup" => {
                self.lookups.fetch_add(1, Ordering::SeqCst);
            }
            Ok(()) => {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => self.failures.lock().expect("tally lock").push(format!(
                "{what} sent at +{:?} (preferred {registry}) failed after {took:?}: {error}",
                sent - origin
            )),
        }
    }
}

/// Steady calls through one `RegistryApi` until stopped: ~20 lookups a second and, with
/// `writes`, a registration or a heartbeat every 100 ms. Every failure is kept.
struct Load {
    origin: Instant,
    tally: Arc<Tally>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(api: &RegistryApi, writes: bool) -> Self {
        let origin = Instant::now();
        let tally = Arc::new(Tally::default());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(lookups(
            api.clone(),
            tally.clone(),
            origin,
            stopped.clone(),
        ))];
        if writes {
            tasks.push(tokio::spawn(registrations(
                api.clone(),
                tally.clone(),
                origin,
                stopped,
            )));
        }
        Self {
            origin,
            tally,
            stop,
            tasks,
        }
    }

    /// Waits until `more` calls more than now have succeeded.
    async fn wait_for_calls(&self, more: usize) {
        let target = self.tally.succeeded() + more;
        eventually(DEADLINE, &format!("{more} successful calls"), || async {
            (self.tally.succeeded() >= target).then_some(())
        })
        .await;
    }

    async fn stop(self) -> Arc<Tally> {
        self.stop.send_replace(true);
        for task in self.tasks {
            task.await.expect("load task");
        }
        let tally = self.tally;
        println!(
            "load over {:?}: {} lookups and {} writes answered, slowest call {} ms, {} failed",
            self.origin.elapsed(),
            tally.lookups(),
            tally.writes.load(Ordering::SeqCst),
            tally.slowest_ms.load(Ordering::SeqCst),
            tally.failures().len()
        );
        tally
    }
}

/// Waits for the next tick, or answers false once the load is stopped.
async fn next_tick(ticks: &mut tokio::time::Interval, stop: &mut watch::Receiver<bool>) -> bool {
    let ticked = tokio::select! {
        _ = ticks.tick() => true,
        _ = stop.wait_for(|stopped| *stopped) => false,
    };
    ticked && !*stop.borrow()
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

async fn lookups(
    api: RegistryApi,
    tally: Arc<Tally>,
    origin: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = ticker(LOOKUP_EVERY);
    while next_tick(&mut ticks, &mut stop).await {
        let (sent, registry) = (Instant::now(), api.base_url().to_string());
        let result = api.service(SERVICE, None).await.map(drop);
        tally.record("lookup", origin, sent, &registry, result);
    }
}

/// Registers `load-0` .. `load-3` in turn, each followed by a heartbeat on it.
async fn registrations(
    api: RegistryApi,
    tally: Arc<Tally>,
    origin: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = ticker(WRITE_EVERY);
    let spec = spec(30);
    let mut n = 0_usize;
    while next_tick(&mut ticks, &mut stop).await {
        let id = format!("load-{}", (n / 2) % 4);
        let (sent, registry) = (Instant::now(), api.base_url().to_string());
        let (what, result) = if n.is_multiple_of(2) {
            (
                "registration",
                api.register(SERVICE, &id, &spec).await.map(drop),
            )
        } else {
            ("heartbeat", api.heartbeat(SERVICE, &id).await.map(drop))
        };
        tally.record(what, origin, sent, &registry, result);
        n += 1;
    }
}

// ---------------------------------------------------------------------------------------
// 2 and 3. Real replicas (the `registry` binary) killed and restarted under load.

/// Starts three replicas of the real binary on `database_url` and waits until each is
/// ready.
async fn three_processes(database_url: &str) -> Vec<RegistryProcess> {
    let (a, b, c) = tokio::join!(
        RegistryProcess::start(database_url, &[]),
        RegistryProcess::start(database_url, &[]),
        RegistryProcess::start(database_url, &[]),
    );
    let replicas = vec![a, b, c];
    for replica in &replicas {
        wait_ready(&replica.base_url).await;
    }
    replicas
}

/// One client over every replica, in order.
fn api_over(replicas: &[RegistryProcess]) -> RegistryApi {
    let urls: Vec<&str> = replicas.iter().map(|r| r.base_url.as_str()).collect();
    RegistryApi::new(&urls.join(",")).expect("replica URLs")
}

/// Polls `GET /readyz` until it answers 200.
async fn wait_ready(base_url: &str) {
    let http = reqwest::Client::new();
    let url = format!("{base_url}/readyz");
    eventually(DEADLINE, &format!("{url} to answer 200"), || async {
        let response = http.get(&url).send().await.ok()?;
        (response.status() == reqwest::StatusCode::OK).then_some(())
    })
    .await;
}

/// SIGKILL gives the replica no chance to finish anything: calls in flight and pooled
/// connections die with it, and the client must fail over without a failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_sigkilled_under_steady_calls_costs_no_call() {
    let url = Backend::Postgres.fresh_url().await;
    let mut replicas = three_processes(&url).await;
    let api = api_over(&replicas);
    let load = Load::start(&api, true);
    load.wait_for_calls(40).await;

    // The preferred replica is the one every call goes to first: the worst to lose.
    let preferred = api.base_url().clone();
    let victim = replicas
        .iter()
        .position(|r| format!("{}/", r.base_url) == preferred.as_str())
        .expect("the preferred URL is one of the replicas");
    let victim = replicas.remove(victim);
    let before = load.tally.succeeded();
    let killed_at = load.origin.elapsed();
    victim.kill().await;
    println!("SIGKILLed the preferred replica {preferred} at +{killed_at:?}");

    // On purpose: calls must go on for a while after the kill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = load.stop().await;
    let after = tally.succeeded() - before;
    let failures = tally.failures();
    assert!(
        failures.is_empty(),
        "{} call(s) failed around the SIGKILL at +{killed_at:?}:\n  {}",
        failures.len(),
        lines(&failures)
    );
    assert!(
        after >= 40,
        "only {after} calls answered in the 3 s after the kill"
    );
    assert_ne!(api.base_url(), &preferred, "the client moved on");
}

/// The way a Deployment rolls: each replica in turn gets SIGTERM (graceful: it finishes
/// requests in flight and writes its queued heartbeats), is started again on the same
/// port, and must answer `/readyz` before the next one goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_costs_no_lookup_and_lapses_no_lease() {
    let ttl = 2;
    let url = Backend::Postgres.fresh_url().await;
    let mut replicas = three_processes(&url).await;
    let api = api_over(&replicas);

    let registrations: Vec<Registration> = (0..10)
        .map(|i| {
            Registration::start(
                api.clone(),
                SERVICE,
                format!("i-{i}"),
                spec(ttl),
                RegistrationOptions::default(),
            )
        })
        .collect();
    for registration in &registrations {
        assert!(
            registration.wait_registered(DEADLINE).await,
            "{:?}",
            registration.state()
        );
    }
    // Every failed registration or heartbeat call, as the handles publish them.
    let retries = Arc::new(Mutex::new(Vec::new()));
    let watchers: Vec<JoinHandle<()>> = registrations
        .iter()
        .enumerate()
        .map(|(i, registration)| {
            let mut states = registration.subscribe();
            let retries = retries.clone();
            tokio::spawn(async move {
                while states.changed().await.is_ok() {
                    if let RegistrationState::Retrying { error, .. } = &*states.borrow_and_update()
                    {
                        retries
                            .lock()
                            .expect("retries lock")
                            .push(format!("i-{i}: {error}"));
                    }
                }
            })
        })
        .collect();
    let load = Load::start(&api, false);
    load.wait_for_calls(20).await;

    for slot in 0..replicas.len() {
        let old = replicas.remove(slot);
        let addr = old.addr;
        let began = Instant::now();
        let exit = old.terminate().await;
        let stopped = began.elapsed();
        assert!(
            exit.success(),
            "replica {addr} exited with {exit} after SIGTERM"
        );
        let new = RegistryProcess::start(&url, &[("REGISTRY_ADDR", &addr.to_string())]).await;
        assert_eq!(new.addr, addr, "restarted on the same port");
        wait_ready(&new.base_url).await;
        println!(
            "replica {addr}: stopped {stopped:?} after SIGTERM, ready again {:?} after it",
            began.elapsed()
        );
        replicas.insert(slot, new);
        // Clients use the set with the restarted replica before the next one goes.
        load.wait_for_calls(10).await;
    }
    // On purpose: one lease length and more, so that a lease left to lapse during the
    // last restart is expired (and recorded) before the history is read.
    tokio::time::sleep(Duration::from_secs(u64::from(ttl) + 1)).await;
    let tally = load.stop().await;
    let failures = tally.failures();
    assert!(
        failures.is_empty(),
        "{} lookup(s) failed during the rolling restart:\n  {}",
        failures.len(),
        lines(&failures)
    );

    let history = replicas[0]
        .api
        .history(SERVICE, None, None, None)
        .await
        .expect("history");
    let lapsed: Vec<String> = history
        .events
        .iter()
        .filter(|e| e.reason == Reason::LeaseExpired)
        .map(|e| format!("{} at {} (index {})", e.instance, e.at, e.index))
        .collect();
    assert!(
        lapsed.is_empty(),
        "leases lapsed during the rolling restart:\n  {}",
        lines(&lapsed)
    );
    for replica in &replicas {
        let instances = replica
            .api
            .service(SERVICE, None)
            .await
            .expect("lookup")
            .instances;
        assert_eq!(instances.len(), 10, "on {}", replica.base_url);
        assert!(
            instances.iter().all(|i| i.status == Status::Passing),
            "on {}: {instances:?}",
            replica.base_url
        );
    }
    for watcher in watchers {
        watcher.abort();
    }
    let retries = retries.lock().expect("retries lock").clone();
    assert!(
        retries.is_empty(),
        "registration handles saw failed calls although another replica was up:\n  {}",
        lines(&retries)
    );
    drop(registrations);
}

// ---------------------------------------------------------------------------------------
// 4 and 5. Postgres goes away under the replicas.

/// How long the database stays away.
const OUTAGE: Duration = Duration::from_secs(30);
/// Longest a replica may take to be ready again once the database is back.
const RECOVERY: Duration = Duration::from_secs(5);

/// One answer seen by the probes: when it was sent, by which replica, to what, and the
/// status (or the transport error).
#[derive(Debug, Clone)]
struct Answer {
    sent: Duration,
    answered: Duration,
    replica: String,
    route: &'static str,
    status: Result<u16, String>,
}

/// Polls `route` on `base_url` until stopped (one call at a time), keeping every answer.
fn probe(
    base_url: String,
    route: &'static str,
    every: Duration,
    origin: Instant,
    answers: Arc<Mutex<Vec<Answer>>>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        let url = format!("{base_url}{route}");
        let mut ticks = ticker(every);
        while next_tick(&mut ticks, &mut stop).await {
            let sent = origin.elapsed();
            let status = http
                .get(&url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string());
            answers.lock().expect("answers lock").push(Answer {
                sent,
                answered: origin.elapsed(),
                replica: base_url.clone(),
                route,
                status,
            });
        }
    })
}

/// Two replicas reach Postgres through a [`TcpProxy`] that the test cuts for 5 s, which
/// refuses connections as a stopped Postgres would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_going_away_costs_writes_but_not_lookups_nor_leases() {
    let ttl = 3;
    let url = Backend::Postgres.fresh_url().await;
    let postgres = postgres_addr(&url).await;
    let proxy = TcpProxy::start().await;
    proxy.set_target(postgres);
    let proxied = through(&url, &proxy);
    let a = TestRegistry::start_on(proxied.clone(), |_| {}).await;
    let b = TestRegistry::start_on(proxied, |_| {}).await;
    let replicas = [&a, &b];
    let api = RegistryApi::new(&format!("{},{}", a.base_url, b.base_url)).expect("api");

    let registrations: Vec<Registration> = (0..3)
        .map(|i| {
            Registration::start(
                api.clone(),
                SERVICE,
                format!("i-{i}"),
                spec(ttl),
                RegistrationOptions::default(),
            )
        })
        .collect();
    for registration in &registrations {
        assert!(registration.wait_registered(DEADLINE).await);
    }
    for replica in replicas {
        eventually(
            DEADLINE,
            "three passing instances on each replica",
            || async {
                let found = replica.api.service(SERVICE, None).await.ok()?.instances;
                (found.len() == 3 && found.iter().all(|i| i.status == Status::Passing))
                    .then_some(())
            },
        )
        .await;
    }
    // What the handles' calls answered, failures only (a 500 would show here too).
    let retries = Arc::new(Mutex::new(Vec::new()));
    let watchers: Vec<JoinHandle<()>> = registrations
        .iter()
        .map(|registration| {
            let mut states = registration.subscribe();
            let retries = retries.clone();
            tokio::spawn(async move {
                while states.changed().await.is_ok() {
                    if let RegistrationState::Retrying { error, .. } = &*states.borrow_and_update()
                    {
                        retries.lock().expect("retries lock").push(error.clone());
                    }
                }
            })
        })
        .collect();

    let origin = Instant::now();
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let (stop, stopped) = watch::channel(false);
    let mut probes = Vec::new();
    for replica in replicas {
        for (route, every) in [
            ("/v1/services/s", LOOKUP_EVERY),
            ("/readyz", Duration::from_millis(200)),
        ] {
            probes.push(probe(
                replica.base_url.clone(),
                route,
                every,
                origin,
                answers.clone(),
                stopped.clone(),
            ));
        }
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");

    proxy.cut().await;
    let cut_at = origin.elapsed();
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "the cut proxy refuses connections, as a stopped Postgres would"
    );
    // Asked while the database is away, answered (the pool gives up after its acquire
    // timeout) before it comes back.
    let readyz = |base_url: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base_url}/readyz"))
                .send()
                .await
                .expect("readyz answers")
                .status()
        }
    };
    let put = async {
        http.put(a.url("/v1/services/s/instances/during-outage"))
            .json(&spec(ttl))
            .send()
            .await
            .expect("the registration answers")
    };
    let (ready_a, ready_b, refused) =
        tokio::join!(readyz(a.base_url.clone()), readyz(b.base_url.clone()), put);
    let answered_within = origin.elapsed() - cut_at;
    println!(
        "during the outage: readyz {ready_a} / {ready_b}, PUT {} (all within {answered_within:?} of the cut)",
        refused.status()
    );
    assert_eq!(
        ready_a,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "A's /readyz"
    );
    assert_eq!(
        ready_b,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "B's /readyz"
    );
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        refused
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .is_some(),
        "a 503 carries Retry-After: {:?}",
        refused.headers()
    );
    let body: ErrorBody = refused.json().await.expect("an error body");
    assert_eq!(body.error.code, ErrorCode::Unavailable, "{body:?}");
    assert!(
        answered_within < OUTAGE,
        "the 503s took {answered_within:?}, longer than the outage itself"
    );

    // On purpose: the outage lasts its full length.
    tokio::time::sleep(OUTAGE.saturating_sub(origin.elapsed() - cut_at)).await;
    proxy.set_target(postgres);
    let restored_at = origin.elapsed();
    for replica in replicas {
        wait_ready(&replica.base_url).await;
    }
    let recovered_in = origin.elapsed() - restored_at;
    println!(
        "database away for {:?}; both replicas ready again {recovered_in:?} after it came back",
        restored_at - cut_at,
    );
    assert!(
        recovered_in <= RECOVERY,
        "the replicas took {recovered_in:?} to be ready again (at most {RECOVERY:?})"
    );
    // On purpose: one lease length and more after the return, so that a lease the outage
    // left to lapse is expired (and recorded) before the history is read.
    tokio::time::sleep(Duration::from_secs(u64::from(ttl) + 1)).await;
    stop.send_replace(true);
    for probe in probes {
        probe.await.expect("probe");
    }
    for watcher in watchers {
        watcher.abort();
    }

    let answers = answers.lock().expect("answers lock").clone();
    let errors: Vec<String> = answers
        .iter()
        .filter(|a| a.status.as_ref().is_ok_and(|s| *s >= 500 && *s != 503) || a.status.is_err())
        .map(|a| format!("{a:?}"))
        .collect();
    assert!(
        errors.is_empty(),
        "answers other than 2xx/503:\n  {}",
        lines(&errors)
    );
    let lookups_failed: Vec<String> = answers
        .iter()
        .filter(|a| a.route != "/readyz" && a.status != Ok(200))
        .map(|a| format!("{a:?}"))
        .collect();
    assert!(
        lookups_failed.is_empty(),
        "lookups must be served from the view:\n  {}",
        lines(&lookups_failed)
    );
    for replica in replicas {
        let during = answers
            .iter()
            .filter(|a| a.replica == replica.base_url && a.route != "/readyz")
            .filter(|a| a.sent >= cut_at && a.answered < restored_at)
            .count();
        assert!(
            during >= 20,
            "{}: only {during} lookups answered during the outage",
            replica.base_url
        );
        let readyz_during: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.replica == replica.base_url && a.route == "/readyz")
            .filter(|a| a.sent >= cut_at && a.answered < restored_at)
            .collect();
        assert!(
            readyz_during.iter().all(|a| a.status == Ok(503)),
            "{}: /readyz during the outage: {readyz_during:?}",
            replica.base_url
        );
    }
    let retries = retries.lock().expect("retries lock").clone();
    println!(
        "the registration handles retried {} time(s) during the outage",
        retries.len()
    );
    let internal: Vec<&String> = retries.iter().filter(|e| e.contains("HTTP 500")).collect();
    assert!(
        internal.is_empty(),
        "500s answered to the handles: {internal:?}"
    );

    let history = a
        .api
        .history(SERVICE, None, None, None)
        .await
        .expect("history");
    let lapsed: Vec<String> = history
        .events
        .iter()
        .filter(|e| e.reason == Reason::LeaseExpired)
        .map(|e| format!("{} at {} (index {})", e.instance, e.at, e.index))
        .collect();
    assert!(
        lapsed.is_empty(),
        "leases lapsed because of the database outage:\n  {}",
        lines(&lapsed)
    );
    for replica in replicas {
        let instances = replica
            .api
            .service(SERVICE, None)
            .await
            .expect("lookup")
            .instances;
        assert!(
            instances.len() == 3 && instances.iter().all(|i| i.status == Status::Passing),
            "on {}: {instances:?}",
            replica.base_url
        );
    }
    drop(registrations);
    a.stop().await;
    b.stop().await;
}

/// No mass expiry after our own outage (docs/operations.md, The outage grace): when the
/// database comes back at R, every lease deadline becomes max(deadline, R + ttl). An
/// instance whose lease ran out during the outage and whose client says nothing until just
/// before R + ttl must still be passing then, with no `lease_expired` in its history.
///
/// The outage lasts 4 s on purpose: a sweep that finds the database gone waits for the
/// pool's 3 s acquire timeout, so the next sweep starts about 3 s into the outage and is
/// still waiting, about 1 s later, when the database comes back; that is the sweep that
/// notices the return.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_lease_gets_one_full_ttl_after_the_database_comes_back() {
    let ttl = 3;
    let url = Backend::Postgres.fresh_url().await;
    let postgres = postgres_addr(&url).await;
    let proxy = TcpProxy::start().await;
    proxy.set_target(postgres);
    let a = TestRegistry::start_on(through(&url, &proxy), |_| {}).await;
    a.api
        .register(SERVICE, "quiet", &spec(ttl))
        .await
        .expect("register");

    proxy.cut().await;
    let cut = Instant::now();
    // On purpose: the outage (longer than the lease, which runs out during it).
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set_target(postgres);
    let back = Instant::now();
    wait_ready(&a.base_url).await;
    // On purpose: the client stays quiet until 300 ms before R + ttl.
    let quiet_until = Duration::from_secs(u64::from(ttl)) - Duration::from_millis(300);
    tokio::time::sleep(quiet_until.saturating_sub(back.elapsed())).await;
    let beat = a.api.heartbeat(SERVICE, "quiet").await.expect("heartbeat");
    println!(
        "database away {:?}; heartbeat {:?} after it came back answered {:?}",
        back - cut,
        back.elapsed(),
        beat.status
    );
    let history = a
        .api
        .history(SERVICE, Some("quiet"), None, None)
        .await
        .expect("history");
    let shape: Vec<String> = history
        .events
        .iter()
        .map(|e| format!("{:?} at {}", e.reason, e.at))
        .collect();
    assert_eq!(
        history.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        [Reason::Registered],
        "the lease must last until R + ttl after the outage; history:\n  {}",
        lines(&shape)
    );
    assert_eq!(beat.status, Status::Passing);
    a.stop().await;
}

/// One replica cut off from Postgres (a network partition) while the other still reaches
/// it: the clients of the cut-off one must be handed over to the other (503, failover)
/// before their leases, which only the database keeps, run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_from_postgres_hands_its_clients_over_without_a_lapse() {
    let ttl = 3;
    let url = Backend::Postgres.fresh_url().await;
    let postgres = postgres_addr(&url).await;
    let proxy = TcpProxy::start().await;
    proxy.set_target(postgres);
    let a = TestRegistry::start_on(through(&url, &proxy), |_| {}).await;
    let b = TestRegistry::start_on(url, |_| {}).await;
    // A first: the clients use the replica about to be cut off.
    let api = RegistryApi::new(&format!("{},{}", a.base_url, b.base_url)).expect("api");
    let registrations: Vec<Registration> = (0..3)
        .map(|i| {
            Registration::start(
                api.clone(),
                SERVICE,
                format!("i-{i}"),
                spec(ttl),
                RegistrationOptions::default(),
            )
        })
        .collect();
    for registration in &registrations {
        assert!(registration.wait_registered(DEADLINE).await);
    }
    proxy.cut().await;
    let cut = Instant::now();
    // What A answers a heartbeat it cannot write, half a second into the partition.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let answer = a.api.heartbeat(SERVICE, "i-0").await;
    println!(
        "A ({}) answered a heartbeat {:?} into the partition, after {:?}: {answer:?}",
        a.base_url,
        sent - cut,
        sent.elapsed()
    );
    // On purpose: two lease lengths of partition.
    tokio::time::sleep(Duration::from_secs(2 * u64::from(ttl)).saturating_sub(cut.elapsed())).await;
    println!(
        "A cut off from Postgres for {:?}; the clients now prefer {} (B is {})",
        cut.elapsed(),
        api.base_url(),
        b.base_url
    );
    let history = b
        .api
        .history(SERVICE, None, None, None)
        .await
        .expect("history");
    let shape: Vec<String> = history
        .events
        .iter()
        .map(|e| format!("{} {:?} at {}", e.instance, e.reason, e.at))
        .collect();
    assert!(
        history
            .events
            .iter()
            .all(|e| e.reason != Reason::LeaseExpired),
        "leases lapsed while their clients heartbeat every second:\n  {}",
        lines(&shape)
    );
    drop(registrations);
    proxy.set_target(postgres);
}
