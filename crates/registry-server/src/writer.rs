//! The one write path. Every change to an instance (an HTTP write, a check result, a
//! lease expiry or reap, a heartbeat replayed after its batch) goes through
//! [`Writer::change`], or [`Writer::change_group`] for background work with many at once:
//! the store applies it in a transaction and this process's view shows it before the
//! writer goes on, so a writer always reads its own write. Heartbeats
//! on live leases take the short way: queued in memory and written in batches
//! ([`crate::heartbeats`]); those a batch could not apply come back here.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use registry_api::{HeartbeatResponse, InstanceId, ServiceName};

use crate::clock::Clock;
use crate::heartbeats::{Flush, Heartbeats};
use crate::lifecycle::{self, Mutation};
use crate::store::{Applied, Expect, InstanceChange, Store, StoreResult, Transition};
use crate::view::View;

/// What every API answers (in its own shape, with 503) to a renewal refused because the
/// database is unreachable.
pub const UNREACHABLE: &str = "the registry's database is unreachable; retry on another replica";

/// What a renewal came to ([`Writer::renew`]).
pub enum Renewal {
    /// The database has not been reached for a while: refused, nothing written.
    Unreachable,
    /// A live lease, renewed in memory: the answer.
    Queued(HeartbeatResponse),
    /// Written through the full transition.
    Written(Box<Applied>),
}

/// Owns the store, the view and the heartbeat queue for every writer of this process.
pub struct Writer {
    store: Arc<dyn Store>,
    view: Arc<View>,
    heartbeats: Heartbeats,
    clock: Clock,
}

impl Writer {
    pub fn new(store: Arc<dyn Store>, view: Arc<View>, clock: Clock) -> Self {
        Self {
            heartbeats: Heartbeats::new(store.clone(), view.clone()),
            store,
            view,
            clock,
        }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// This process's view, for what it shows beside the instances.
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    /// Applies a change made at `now` to one instance and shows it in the view. The
    /// change is durable once this answers `Ok`; a view that cannot catch up now is
    /// brought up to date by replication in the background.
    #[tracing::instrument(name = "store change", skip(self, now, transition))]
    pub async fn change(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        now: DateTime<Utc>,
        transition: Transition,
    ) -> StoreResult<Applied> {
        let _writing = self.view.writing();
        // A hint only: the store plans on the row when it turns out to exist.
        let known = self
            .view
            .read_instance(service.as_str(), id.as_str(), |_| ())
            .is_some();
        let expect = if known {
            Expect::Anything
        } else {
            Expect::Absent
        };
        let applied = self
            .store
            .apply(service, id, now, expect, transition)
            .await?;
        if let Err(error) = self.view.show_write(&applied, self.store.as_ref()).await {
            tracing::warn!(%error, "view catch-up after a write failed; retried in the background");
        }
        Ok(applied)
    }

    /// Applies many changes in one transaction ([`Store::apply_group`]) and shows them in
    /// the view, as [`Self::change`] does one: each change's result, in order.
    pub async fn change_group(&self, changes: Vec<InstanceChange>) -> Vec<StoreResult<Applied>> {
        let _writing = self.view.writing();
        let results = self.store.apply_group(changes).await;
        // The first change with an event shows every event of the transaction; the
        // others find the view holding theirs already.
        for applied in results.iter().flatten() {
            if let Err(error) = self.view.show_write(applied, self.store.as_ref()).await {
                tracing::warn!(%error, "view catch-up after a write failed; retried in the background");
                break;
            }
        }
        results
    }

    /// A renewal of a lease, as every API takes one (v1's heartbeat, Consul's TTL check
    /// report, Eureka's renew): refused at once while the database is unreachable, so that
    /// the client retries on another replica before its lease runs out; with `may_queue`,
    /// a live lease is renewed in memory and written with others ([`crate::heartbeats`]);
    /// anything else is written through `full` now.
    pub async fn renew(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        now: DateTime<Utc>,
        may_queue: bool,
        full: Transition,
    ) -> StoreResult<Renewal> {
        crate::metrics::heartbeat();
        if self.database_unreachable() {
            return Ok(Renewal::Unreachable);
        }
        if may_queue && let Some(renewed) = self.queue_heartbeat(service, id, now) {
            return Ok(Renewal::Queued(renewed));
        }
        Ok(Renewal::Written(Box::new(
            self.change(service, id, now, full).await?,
        )))
    }

    /// A heartbeat received at `now` on a lease the view knows to be live: queued, shown
    /// and answered at once. `None`: it must take the full path ([`Self::change`]).
    pub fn queue_heartbeat(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        now: DateTime<Utc>,
    ) -> Option<HeartbeatResponse> {
        self.heartbeats.try_queue(service, id, now)
    }

    /// Writes the queued heartbeats `which` names, then replays those the store did not
    /// apply (their lease lapsed meanwhile, so the revival appends an event) through
    /// [`Self::change`]. What could not be written stays queued for the next flush.
    pub async fn flush_heartbeats(&self, which: Flush) -> StoreResult<()> {
        let due_by = self.clock.now();
        let mut left = self
            .heartbeats
            .write_batch(which, due_by)
            .await?
            .into_iter();
        while let Some(heartbeat) = left.next() {
            // Dated now, not when received: a revival must not come before the expiry it
            // undoes.
            let now = self.clock.now().max(heartbeat.at);
            let replayed = self
                .change(
                    &heartbeat.service,
                    &heartbeat.id,
                    now,
                    Box::new(move |old| {
                        old.map_or(Mutation::Unchanged, |o| lifecycle::heartbeat(o, now))
                    }),
                )
                .await;
            if let Err(error) = replayed {
                self.heartbeats
                    .keep(std::iter::once(heartbeat).chain(left).collect());
                return Err(error);
            }
        }
        Ok(())
    }

    /// How many instances have a heartbeat waiting to be written.
    pub fn queued_heartbeats(&self) -> usize {
        self.heartbeats.queued()
    }

    /// Whether the database has not been reached for a while
    /// ([`crate::heartbeats::UNREACHABLE_AFTER`]): writers answer 503 at once.
    pub fn database_unreachable(&self) -> bool {
        self.heartbeats.database_unreachable()
    }
}
