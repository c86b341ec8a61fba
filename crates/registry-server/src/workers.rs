//! Background work: lease expiry and reaping, active checks and history pruning (the
//! view's catch-up with other replicas is [`crate::replication`]). Each is a loop that
//! ends at shutdown and survives store outages (it logs, waits for the next tick and
//! tries again).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use registry_api::{Check, SelfPreservation, Status};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::check_targets::AllowedNetworks;
use crate::config::Settings;
use crate::heartbeats::{EXPIRY_GRACE, FLUSH_EVERY, Flush};
use crate::lifecycle::{self, CheckOutcome, Mutation};
use crate::self_preservation::{self, Decision, LeaseSurvey};
use crate::store::{InstanceChange, InstanceKey, StoreError, StoreResult, Transition, stored_key};
use crate::writer::Writer;

/// How often leases, reaping and due checks are looked at.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How often this process records that the registry is alive (its own task, so a long
/// sweep never looks like an outage).
const ALIVE_EVERY: Duration = Duration::from_millis(500);
/// A registry that recorded no sign of life for this long was down: leases get a fresh TTL.
const OUTAGE_AFTER: Duration = Duration::from_secs(3);
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Most events one pruning statement looks at (each commits on its own).
const PRUNE_BATCH: u32 = 10_000;
/// Most instances handled per sweep; the rest wait for the next one.
const SWEEP_BATCH: u32 = 10_000;
/// Most changes of a sweep written in one transaction ([`Writer::change_group`]): a
/// transaction per lapse (or per group of 64) made a lost zone's lapses take minutes;
/// a thousand at once take a fraction of a second and hold their instances' locks only
/// that long.
const SWEEP_GROUP: usize = 1_000;
/// Groups of a sweep written at once: one waits for its commit's flush while the other's
/// rows are locked and written (Postgres takes the index row last, so they still commit
/// in index order).
const SWEEP_GROUPS_IN_FLIGHT: usize = 2;
/// Most checks running at once.
const MAX_CONCURRENT_CHECKS: usize = 256;
/// Most bytes of a check answer read (to compare `expect_json`).
const MAX_CHECK_BODY: usize = 64 * 1024;

/// Everything the workers share.
#[derive(Clone)]
pub struct Workers {
    pub writer: Arc<Writer>,
    pub settings: Arc<Settings>,
    pub shutdown: CancellationToken,
    /// Built at start-up ([`CheckClient::new`]).
    pub check_client: CheckClient,
    /// Set when this process could not reach its database, until it records life again.
    pub database_failed: Arc<AtomicBool>,
}

impl Workers {
    /// Starts every loop; they stop when `shutdown` is cancelled.
    pub fn spawn(self) -> Vec<tokio::task::JoinHandle<()>> {
        let checker = Checker::new(self.clone());
        vec![
            tokio::spawn(
                self.clone()
                    .every(SWEEP_EVERY, "lease sweep", |w| async move {
                        w.sweep_leases().await
                    }),
            ),
            tokio::spawn(
                self.clone()
                    .every(ALIVE_EVERY, "liveness record", |w| async move {
                        w.mark_alive().await.map(|_| ())
                    }),
            ),
            tokio::spawn(
                self.clone()
                    .every(FLUSH_EVERY, "heartbeat flush", |w| async move {
                        w.writer.flush_heartbeats(Flush::Due).await
                    }),
            ),
            tokio::spawn(
                self.clone()
                    .every(SWEEP_EVERY, "check scheduling", move |_| {
                        let checker = checker.clone();
                        async move { checker.start_due().await }
                    }),
            ),
            tokio::spawn(self.every(PRUNE_EVERY, "history pruning", |w| async move {
                w.prune().await
            })),
        ]
    }

    async fn every<F, Fut>(self, period: Duration, what: &'static str, work: F)
    where
        F: Fn(Self) -> Fut,
        Fut: std::future::Future<Output = StoreResult<()>>,
    {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            // Work waiting on the database stops at shutdown too: a database that holds
            // every commit must not hold the registry's stop.
            let outcome = tokio::select! {
                outcome = work(self.clone()) => outcome,
                () = self.shutdown.cancelled() => return,
            };
            match outcome {
                Ok(()) if failing => {
                    tracing::info!(what, "recovered");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    tracing::warn!(what, %error, "failed; retrying every tick");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// Records that the registry is alive (answers the time recorded). If nobody did for
    /// [`OUTAGE_AFTER`], or this process could not reach the database since it last did,
    /// the registry or its database was down (heartbeats were refused meanwhile, however
    /// short that was), and the store gives every lease one full TTL from now
    /// (docs/operations.md, The outage grace).
    async fn mark_alive(&self) -> StoreResult<chrono::DateTime<chrono::Utc>> {
        // The time is read once the database answers: a call that waited for it through
        // an outage (up to the pool's acquire timeout) must date the return when it
        // happened, or leases get back less than the full TTL promised.
        let store = self.writer.store();
        self.noting_outage(store.ping().await)?;
        let now = self.settings.clock.now();
        let max_gap = match self.database_failed.swap(false, Ordering::Relaxed) {
            true => chrono::Duration::zero(),
            false => chrono::Duration::from_std(OUTAGE_AFTER).unwrap_or(chrono::Duration::MAX),
        };
        let recovered = store.mark_alive(now, max_gap).await;
        if self.noting_outage(recovered)? {
            tracing::info!("the registry or its database was down: every lease gets one full TTL");
        }
        Ok(now)
    }

    /// Passes `outcome` on, remembering an unreachable database.
    fn noting_outage<T>(&self, outcome: StoreResult<T>) -> StoreResult<T> {
        if let Err(StoreError::Unavailable(_)) = &outcome {
            self.database_failed.store(true, Ordering::Relaxed);
        }
        outcome
    }

    /// Expires lapsed leases and reaps instances critical for too long.
    async fn sweep_leases(&self) -> StoreResult<()> {
        // The time is read once the database answers: a sweep that waited for it through
        // an outage (up to the pool's acquire timeout) must date the return when it
        // happened, or leases get back less than the full TTL `mark_alive` promises.
        // The sweep records life itself too, so that after an outage the recovery is
        // recorded before any lease is looked at.
        let now = self.mark_alive().await?;
        // Heartbeats due here are written first (those not yet due renew leases that run
        // three quarters of a TTL longer); those queued on another replica are written
        // within the grace (crate::heartbeats), so only leases past it expire.
        self.writer.flush_heartbeats(Flush::Due).await?;
        let cutoff = now - chrono::Duration::from_std(EXPIRY_GRACE).unwrap_or_default();
        let store = self.writer.store();
        // One replica at a time decides the mode, applies the lapses and reaps; the others
        // show the mode it decided.
        let claim = store.claim_sweep().await?;
        // Decided before any lapse is applied (docs/operations.md, Self-preservation).
        let holding = self.self_preservation(now, claim.is_some()).await?;
        if claim.is_none() {
            return Ok(());
        }
        if holding {
            let due = store.expired_leases(cutoff, SWEEP_BATCH).await?;
            let held = self
                .change_all(due, now, || {
                    Box::new(move |old| match old {
                        Some(o) if o.lease_deadline().is_some_and(|d| d <= cutoff) => {
                            lifecycle::hold_lease(o, now)
                        }
                        _ => Mutation::Unchanged,
                    })
                })
                .await?;
            for _ in 0..held {
                crate::metrics::lapse_held();
            }
        } else {
            // Lapses held while it lasted apply once the grace after its end is over too
            // (an instance whose heartbeats return renews its lease meanwhile).
            let mut lapsed = store.held_leases(cutoff, SWEEP_BATCH).await?;
            lapsed.extend(store.expired_leases(cutoff, SWEEP_BATCH).await?);
            self.change_all(lapsed, now, || {
                Box::new(move |old| match old {
                    Some(o) if o.lease_ran_out(cutoff) => lifecycle::expire_lease(o, now),
                    _ => Mutation::Unchanged,
                })
            })
            .await?;
        }
        let after = self.settings.deregister_critical_after;
        let reapable = store.reapable(now, after, SWEEP_BATCH).await?;
        let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        self.change_all(reapable, now, || {
            Box::new(move |old| old.map_or(Mutation::Unchanged, |o| lifecycle::reap(o, now, after)))
        })
        .await?;
        Ok(())
    }

    /// Applies the change `transition` makes to each of `keys`, [`SWEEP_GROUP`] of them
    /// per transaction and [`SWEEP_GROUPS_IN_FLIGHT`] transactions at once, each group
    /// shown in the view as it commits. Answers how many made an event; a failure ends the
    /// sweep (the rest wait for the next one).
    async fn change_all(
        &self,
        keys: Vec<InstanceKey>,
        now: chrono::DateTime<chrono::Utc>,
        transition: impl Fn() -> Transition,
    ) -> StoreResult<usize> {
        // Each group's write, to be started in order as the stream is polled.
        let writes: Vec<_> = keys
            .chunks(SWEEP_GROUP)
            .map(|group| {
                let changes = group
                    .iter()
                    .map(|(service, id)| InstanceChange {
                        service: service.clone(),
                        id: id.clone(),
                        now,
                        transition: transition(),
                    })
                    .collect();
                self.writer.change_group(changes)
            })
            .collect();
        let mut written = futures::stream::iter(writes).buffered(SWEEP_GROUPS_IN_FLIGHT);
        let mut made = 0;
        while let Some(results) = written.next().await {
            for applied in results {
                made += usize::from(applied?.event.is_some());
            }
        }
        Ok(made)
    }

    /// Reads the mode and, when `deciding`, the silent leases from the database, switches
    /// the mode as the rule decides ([`self_preservation::decide`]), shows it in the view
    /// and logs when it changes. Answers whether lapses are held now.
    async fn self_preservation(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        deciding: bool,
    ) -> StoreResult<bool> {
        let store = self.writer.store();
        let limits = &self.settings.self_preservation;
        let stored = store
            .lease_survey(now, deciding && limits.weighs_silence())
            .await?;
        let survey = LeaseSurvey::new(stored, self.writer.view().leases());
        let decision = if deciding {
            self_preservation::decide(&survey, limits, now)
        } else {
            Decision::Keep
        };
        let mut mode = survey.mode;
        if decision != Decision::Keep {
            let wanted = decision.apply(mode, now);
            mode = if store.switch_self_preservation(mode, wanted, now).await? {
                wanted
            } else {
                // Another replica switched it first: take what it decided.
                store.lease_survey(now, false).await?.mode
            };
        }
        let shown = SelfPreservation {
            active: mode.active(),
            since: mode.since,
            held: survey.held,
        };
        let before = self.writer.view().set_self_preservation(shown);
        let (silent, leased) = (survey.silent, survey.leased);
        match (before.active, mode.active()) {
            (false, true) if !deciding => tracing::warn!(
                "self-preservation began, as the replica sweeping the leases found: lease lapses are held"
            ),
            (true, false) if !deciding => {
                tracing::warn!("self-preservation ended, as the replica sweeping the leases found")
            }
            (false, true) => tracing::warn!(
                silent,
                leased,
                threshold = limits.threshold,
                "self-preservation: more than the threshold of the leases went silent at once; the registry suspects its own network and holds lease lapses"
            ),
            (true, false) if decision == Decision::GiveUp => tracing::warn!(
                silent,
                leased,
                max = ?limits.max,
                "self-preservation ended at its maximum: every lease gets one full TTL, then the held lapses apply"
            ),
            (true, false) => tracing::warn!(
                silent,
                leased,
                held = survey.held,
                "self-preservation ended: the heartbeats came back; every lease gets one full TTL, then lapses still due apply"
            ),
            _ => {}
        }
        Ok(mode.active())
    }

    async fn prune(&self) -> StoreResult<()> {
        let retention = chrono::Duration::from_std(self.settings.history_retention)
            .unwrap_or(chrono::Duration::MAX);
        let before = self.settings.clock.now() - retention;
        let pruned = self
            .writer
            .store()
            .prune_history(before, PRUNE_BATCH)
            .await?;
        if pruned > 0 {
            tracing::info!(pruned, "pruned history older than the retention");
        }
        Ok(())
    }
}

/// Runs active checks: claims due ones from the store (so one replica runs each) and
/// never runs two checks of one instance at once.
#[derive(Clone)]
struct Checker {
    workers: Workers,
    client: CheckClient,
    in_flight: Arc<Mutex<HashSet<InstanceKey>>>,
    slots: Arc<Semaphore>,
}

/// The HTTP client of active checks: no redirects (they could lead a check away from
/// the instance's own host), no proxy, and, when `allowed` is restricted, a resolver that
/// refuses other networks. Built at start-up: a registry that cannot build it must not
/// start (a default client would follow redirects, honour proxy variables and connect
/// anywhere).
#[derive(Clone)]
pub struct CheckClient {
    http: reqwest::Client,
    /// The networks checks may reach, which the client's resolver and the checker's own
    /// address checks both hold to.
    allowed: AllowedNetworks,
}

impl CheckClient {
    pub fn new(allowed: AllowedNetworks) -> Result<Self, reqwest::Error> {
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent("central-registry-check");
        if allowed.is_restricted() {
            http = http.dns_resolver(allowed.clone());
        }
        Ok(Self {
            http: http.build()?,
            allowed,
        })
    }
}

impl Checker {
    fn new(workers: Workers) -> Self {
        Self {
            client: workers.check_client.clone(),
            workers,
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS)),
        }
    }

    async fn start_due(&self) -> StoreResult<()> {
        let now = self.workers.settings.clock.now();
        let available = u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX);
        if available == 0 {
            return Ok(());
        }
        let claimed = self
            .workers
            .writer
            .store()
            .claim_due_checks(now, available)
            .await?;
        for claimed in claimed {
            let record = claimed.record;
            let Some(check) = record.check.clone() else {
                continue;
            };
            let key = stored_key(record.service.clone(), record.id.clone())?;
            let fresh = self
                .in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key.clone());
            if !fresh {
                continue;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                self.finish(&key);
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let outcome = this.probe(&record.url, &check).await;
                crate::metrics::check_result(outcome.status);
                if let Err(error) = this.report(&key, &check, outcome).await {
                    tracing::warn!(service = %key.0, instance = %key.1, %error, "could not record a check result");
                }
                this.finish(&key);
                drop(permit);
            });
        }
        Ok(())
    }

    fn finish(&self, key: &InstanceKey) {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    async fn report(
        &self,
        key: &InstanceKey,
        check: &Check,
        outcome: CheckOutcome,
    ) -> StoreResult<()> {
        let now = self.workers.settings.clock.now();
        let check = check.clone();
        self.workers
            .writer
            .change(
                &key.0,
                &key.1,
                now,
                Box::new(move |old| {
                    old.map_or(Mutation::Unchanged, |o| {
                        lifecycle::record_check(o, &check, &outcome, now)
                    })
                }),
            )
            .await
            .map(|_| ())
    }

    /// One check: GET the check URL within its timeout; 2xx passes (and, with
    /// `expect_json`, only with the expected fields), 429 warns, anything else fails.
    #[tracing::instrument(name = "active check", skip_all, fields(otel.kind = "client", instance_url))]
    async fn probe(&self, instance_url: &str, check: &Check) -> CheckOutcome {
        let critical = |detail: String| CheckOutcome {
            status: Status::Critical,
            detail,
        };
        if let Some(address) = &check.tcp {
            return self.probe_tcp(address, check.timeout_seconds).await;
        }
        let Some(target) = check.target(instance_url) else {
            return critical("check path leaves the instance's own host".into());
        };
        if let Err(refused) = self.client.allowed.check_address(&target) {
            return critical(refused);
        }
        let timeout = Duration::from_secs(u64::from(check.timeout_seconds));
        let attempt = async {
            let response = self.client.http.get(target).send().await?;
            let status = response.status();
            let body = if status.is_success() && check.expect_json.is_some() {
                Some(read_capped(response).await?)
            } else {
                None
            };
            Ok::<_, reqwest::Error>((status, body))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => critical(format!("timed out after {}s", check.timeout_seconds)),
            Ok(Err(error)) => critical(format!("request failed: {}", error_chain(&error))),
            Ok(Ok((status, body))) => classify(status, body.as_deref(), check),
        }
    }

    /// A TCP check: passes when a connection to `address` opens within the timeout, to an
    /// address the allowed networks admit.
    async fn probe_tcp(&self, address: &str, timeout_seconds: u32) -> CheckOutcome {
        let outcome = |status, detail: String| CheckOutcome { status, detail };
        let timeout = Duration::from_secs(u64::from(timeout_seconds));
        let attempt = async {
            let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(address)
                .await
                .map_err(|e| format!("cannot resolve {address}: {e}"))?
                .collect();
            let allowed: Vec<_> = resolved
                .into_iter()
                .filter(|a| self.client.allowed.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{address} is outside the networks checks may reach"
                ));
            }
            tokio::net::TcpStream::connect(allowed.as_slice())
                .await
                .map_err(|e| format!("TCP connect failed: {e}"))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => outcome(
                Status::Critical,
                format!("timed out after {timeout_seconds}s"),
            ),
            Ok(Err(detail)) => outcome(Status::Critical, detail),
            Ok(Ok(_connection)) => outcome(Status::Passing, "TCP connect succeeded".into()),
        }
    }
}

fn classify(status: reqwest::StatusCode, body: Option<&[u8]>, check: &Check) -> CheckOutcome {
    let detail = format!("HTTP {}", status.as_u16());
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return CheckOutcome {
            status: Status::Warning,
            detail,
        };
    }
    if !status.is_success() {
        return CheckOutcome {
            status: Status::Critical,
            detail,
        };
    }
    if let Some(expected) = &check.expect_json {
        let matches = body
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .is_some_and(|value| {
                expected
                    .iter()
                    .all(|(k, v)| value.get(k).and_then(|x| x.as_str()) == Some(v.as_str()))
            });
        if !matches {
            return CheckOutcome {
                status: Status::Critical,
                detail: format!("{detail}, body is not the expected JSON"),
            };
        }
    }
    CheckOutcome {
        status: Status::Passing,
        detail,
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_CHECK_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_CHECK_BODY {
            break;
        }
    }
    Ok(body)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use registry_api::{InstanceId, InstanceSpec, ServiceName};

    use crate::config::Settings;
    use crate::store::Store;
    use crate::store::test_store::TestStore;
    use crate::view::View;

    /// A lost zone: more leases than a group holds lapse at once. One sweep applies them
    /// all, numbered without a gap, and this process's view shows them when it ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_sweep_lapses_more_leases_than_a_group_holds() {
        let store: Arc<dyn Store> = Arc::new(TestStore::new().await);
        let view = Arc::new(View::load(store.as_ref()).await.expect("view"));
        let mut settings = Settings::new("127.0.0.1:0".parse().expect("addr"), None);
        settings.self_preservation.threshold = 0.0;
        let clock = settings.clock.clone();
        let writer = Arc::new(Writer::new(
            Arc::clone(&store),
            Arc::clone(&view),
            clock.clone(),
        ));
        let workers = Workers {
            writer: Arc::clone(&writer),
            settings: Arc::new(settings),
            shutdown: CancellationToken::new(),
            check_client: CheckClient::new(AllowedNetworks::new(Vec::new())).expect("client"),
            database_failed: Arc::default(),
        };
        let count = SWEEP_GROUP * 2 + SWEEP_GROUP / 2;
        let now = clock.now();
        let registrations = (0..count)
            .map(|n| {
                let service = ServiceName::parse(&format!("svc-{}", n % 100)).expect("name");
                let id = InstanceId::parse(&format!("i-{n}")).expect("id");
                let spec = InstanceSpec::new("http://10.0.0.1:4040")
                    .validate(service.clone(), id.clone(), 1)
                    .expect("valid");
                InstanceChange {
                    service,
                    id,
                    now,
                    transition: Box::new(move |old| lifecycle::register(old, &spec, now)),
                }
            })
            .collect();
        for registered in writer.change_group(registrations).await {
            registered.expect("registered");
        }
        let registered = store.current_index().await.expect("index");
        // The first sign of life is a recovery: every lease runs one TTL from it.
        workers.mark_alive().await.expect("alive");
        clock.advance(Duration::from_secs(2));

        workers.sweep_leases().await.expect("sweep");

        let count = u64::try_from(count).expect("small");
        let events = store
            .events_after(registered, None, 10_000)
            .await
            .expect("events");
        assert_eq!(
            events.len(),
            usize::try_from(count).expect("small"),
            "all in one sweep"
        );
        assert!(
            events
                .iter()
                .zip(registered + 1..)
                .all(|(e, index)| e.index == index),
            "numbered without a gap"
        );
        assert!(events.iter().all(|e| e.to == Some(Status::Critical)));
        assert_eq!(view.index(), registered + count);
        assert_eq!(view.status_summary(clock.now()).instances.critical, count);
    }

    fn check(expect: Option<(&str, &str)>) -> Check {
        Check {
            http: Some("/status".into()),
            tcp: None,
            interval_seconds: 5,
            timeout_seconds: 2,
            expect_json: expect.map(|(k, v)| BTreeMap::from([(k.to_owned(), v.to_owned())])),
        }
    }

    #[test]
    fn the_check_client_builds_with_and_without_network_limits() {
        let allowed = AllowedNetworks::new(vec!["10.0.0.0/8".parse().expect("cidr")]);
        assert!(CheckClient::new(allowed).is_ok());
        assert!(CheckClient::new(AllowedNetworks::new(Vec::new())).is_ok());
    }

    #[test]
    fn classification_follows_the_status_rules() {
        let ok = reqwest::StatusCode::OK;
        assert_eq!(classify(ok, None, &check(None)).status, Status::Passing);
        assert_eq!(
            classify(reqwest::StatusCode::TOO_MANY_REQUESTS, None, &check(None)).status,
            Status::Warning
        );
        assert_eq!(
            classify(reqwest::StatusCode::SERVICE_UNAVAILABLE, None, &check(None)).status,
            Status::Critical
        );
        assert_eq!(
            classify(reqwest::StatusCode::MOVED_PERMANENTLY, None, &check(None)).status,
            Status::Critical
        );
    }

    #[test]
    fn expect_json_compares_fields_whatever_the_content_type() {
        let seed = check(Some(("status", "ok")));
        let ok = reqwest::StatusCode::OK;
        assert_eq!(
            classify(ok, Some(br#"{"status":"ok","x":1}"#), &seed).status,
            Status::Passing
        );
        assert_eq!(
            classify(ok, Some(br#"{"status":"down"}"#), &seed).status,
            Status::Critical
        );
        assert_eq!(
            classify(ok, Some(b"<html>ok</html>"), &seed).status,
            Status::Critical
        );
        assert_eq!(classify(ok, Some(b""), &seed).status, Status::Critical);
    }
}
