//! One store for the unit tests that need to see or steer what the registry asks of its
//! store: an SQLite store underneath, writes that fail on demand as in a database outage,
//! scripted change feeds, counted calls, and reads that can be held before they answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use registry_api::{Event, Instance, InstanceId, ServiceName};
use tokio::sync::{Semaphore, mpsc};

use crate::self_preservation::{Mode, StoredSurvey};

use super::{
    Applied, ChangeFeed, ClaimedCheck, Expect, Heartbeat, HistoryStart, InstanceChange,
    InstanceKey, Notification, Snapshot, SqliteStore, Store, StoreError, StoreResult, SweepClaim,
    Transition,
};

pub struct TestStore {
    inner: SqliteStore,
    /// While set, writes (`apply`, `renew_leases`) fail as in a database outage.
    pub down: AtomicBool,
    /// Without a change feed, as a store that cannot announce changes.
    pub feedless: bool,
    /// When set, each `events_after` waits for a permit after reading, before answering.
    pub gate: Option<Arc<Semaphore>>,
    /// When set, each `renew_leases` waits for a permit before writing.
    renewal_gate: std::sync::OnceLock<Arc<Semaphore>>,
    feeds: Mutex<VecDeque<StoreResult<Box<dyn ChangeFeed>>>>,
    subscriptions: AtomicUsize,
    reads: AtomicUsize,
    renewals: AtomicUsize,
}

impl TestStore {
    pub async fn new() -> Self {
        let inner = SqliteStore::connect(&crate::testing::fresh_sqlite_url())
            .await
            .expect("sqlite");
        inner.migrate().await.expect("migrate");
        Self {
            inner,
            down: AtomicBool::new(false),
            feedless: false,
            gate: None,
            renewal_gate: std::sync::OnceLock::new(),
            feeds: Mutex::new(VecDeque::new()),
            subscriptions: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            renewals: AtomicUsize::new(0),
        }
    }

    /// Scripts the next subscription to succeed; answers the feed's sender (dropping it
    /// breaks the feed). With nothing scripted, a subscription fails.
    pub fn offer_feed(&self) -> mpsc::UnboundedSender<u64> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.feeds
            .lock()
            .expect("feeds")
            .push_back(Ok(Box::new(ScriptedFeed(receiver))));
        sender
    }

    /// Scripts the next subscription to fail.
    pub fn refuse_feed(&self) {
        self.feeds
            .lock()
            .expect("feeds")
            .push_back(Err(unavailable()));
    }

    /// Holds every `renew_leases` until the answered semaphore gives it a permit.
    pub fn hold_renewals(&self) -> Arc<Semaphore> {
        self.renewal_gate
            .get_or_init(|| Arc::new(Semaphore::new(0)))
            .clone()
    }

    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::SeqCst)
    }

    /// `events_after` calls that have read (counted before the gate).
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    pub fn renewals(&self) -> usize {
        self.renewals.load(Ordering::SeqCst)
    }

    /// Registers an instance of `sum` behind any view's back, as another replica would;
    /// answers the event's index.
    pub async fn write(&self, id: &str) -> u64 {
        let applied = crate::testing::register_in(&self.inner, id).await;
        applied.event.expect("an event").index
    }

    fn writable(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(unavailable())
        } else {
            Ok(())
        }
    }
}

fn unavailable() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolTimedOut)
}

/// A feed fed by the test; dropping the sender breaks it.
struct ScriptedFeed(mpsc::UnboundedReceiver<u64>);

#[async_trait]
impl ChangeFeed for ScriptedFeed {
    async fn next(&mut self) -> StoreResult<Notification> {
        self.0
            .recv()
            .await
            .map(Notification::Events)
            .ok_or_else(unavailable)
    }
}

#[async_trait]
impl Store for TestStore {
    async fn migrate(&self) -> StoreResult<()> {
        self.inner.migrate().await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn apply(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        now: DateTime<Utc>,
        expect: Expect,
        transition: Transition,
    ) -> StoreResult<Applied> {
        self.writable()?;
        self.inner.apply(service, id, now, expect, transition).await
    }
    async fn apply_group(&self, changes: Vec<InstanceChange>) -> Vec<StoreResult<Applied>> {
        if self.writable().is_err() {
            return changes.iter().map(|_| Err(unavailable())).collect();
        }
        self.inner.apply_group(changes).await
    }
    async fn snapshot(&self) -> StoreResult<Snapshot> {
        self.inner.snapshot().await
    }
    async fn current_index(&self) -> StoreResult<u64> {
        self.inner.current_index().await
    }
    async fn events_after(
        &self,
        after: u64,
        service: Option<&ServiceName>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let events = self.inner.events_after(after, service, limit).await;
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate").forget();
        }
        events
    }
    async fn history(
        &self,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        self.inner
            .history(service, instance, since, until, limit)
            .await
    }
    async fn state_at(
        &self,
        at: DateTime<Utc>,
        services: Option<&[String]>,
    ) -> StoreResult<(u64, Vec<Instance>)> {
        self.inner.state_at(at, services).await
    }
    async fn service_names(
        &self,
        at: DateTime<Utc>,
        after: Option<&str>,
        containing: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        self.inner.service_names(at, after, containing, limit).await
    }
    async fn history_start(&self) -> StoreResult<HistoryStart> {
        self.inner.history_start().await
    }
    async fn epoch(&self) -> StoreResult<String> {
        self.inner.epoch().await
    }
    fn history_changes(&self) -> u64 {
        self.inner.history_changes()
    }
    async fn prune_history(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<u64> {
        self.inner.prune_history(before, batch).await
    }
    async fn mark_alive(&self, now: DateTime<Utc>, max_gap: chrono::Duration) -> StoreResult<bool> {
        self.inner.mark_alive(now, max_gap).await
    }
    async fn expired_leases(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<InstanceKey>> {
        self.inner.expired_leases(now, limit).await
    }
    async fn claim_sweep(&self) -> StoreResult<Option<SweepClaim>> {
        self.inner.claim_sweep().await
    }
    async fn reapable(
        &self,
        now: DateTime<Utc>,
        after: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<InstanceKey>> {
        self.inner.reapable(now, after, limit).await
    }
    async fn lease_survey(
        &self,
        now: DateTime<Utc>,
        count_silent: bool,
    ) -> StoreResult<StoredSurvey> {
        self.inner.lease_survey(now, count_silent).await
    }
    async fn switch_self_preservation(
        &self,
        from: Mode,
        to: Mode,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.writable()?;
        self.inner.switch_self_preservation(from, to, at).await
    }
    async fn held_leases(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<InstanceKey>> {
        self.inner.held_leases(now, limit).await
    }
    async fn self_preservation_at(&self, at: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>> {
        self.inner.self_preservation_at(at).await
    }
    async fn claim_due_checks(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedCheck>> {
        self.inner.claim_due_checks(now, limit).await
    }
    async fn renew_leases(&self, heartbeats: &[Heartbeat]) -> StoreResult<Vec<Heartbeat>> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = self.renewal_gate.get() {
            gate.acquire().await.expect("gate").forget();
        }
        self.writable()?;
        self.inner.renew_leases(heartbeats).await
    }
    async fn change_feed(&self) -> StoreResult<Option<Box<dyn ChangeFeed>>> {
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        if self.feedless {
            return Ok(None);
        }
        let next = self.feeds.lock().expect("feeds").pop_front();
        next.unwrap_or_else(|| Err(unavailable())).map(Some)
    }
}
