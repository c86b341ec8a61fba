//! A [`Store`] that times every call of the store it wraps into
//! `registry_db_query_duration_seconds` (by operation), so call sites do not time
//! themselves. [`crate::app::open_store`] wraps the store it opens.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use registry_api::{Event, Instance, InstanceId, ServiceName};

use super::{
    Applied, ChangeFeed, ClaimedCheck, Expect, Heartbeat, HistoryStart, InstanceChange,
    InstanceKey, Snapshot, Store, StoreResult, SweepClaim, Transition,
};
use crate::metrics::timed;
use crate::self_preservation::{Mode, StoredSurvey};

pub struct Timed<S>(pub S);

#[async_trait]
impl<S: Store> Store for Timed<S> {
    async fn migrate(&self) -> StoreResult<()> {
        timed("migrate", self.0.migrate()).await
    }

    async fn ping(&self) -> StoreResult<()> {
        timed("ping", self.0.ping()).await
    }

    async fn apply(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        now: DateTime<Utc>,
        expect: Expect,
        transition: Transition,
    ) -> StoreResult<Applied> {
        timed("apply", self.0.apply(service, id, now, expect, transition)).await
    }

    async fn apply_group(&self, changes: Vec<InstanceChange>) -> Vec<StoreResult<Applied>> {
        timed("apply_group", self.0.apply_group(changes)).await
    }

    async fn snapshot(&self) -> StoreResult<Snapshot> {
        timed("snapshot", self.0.snapshot()).await
    }

    async fn current_index(&self) -> StoreResult<u64> {
        timed("current_index", self.0.current_index()).await
    }

    async fn events_after(
        &self,
        after: u64,
        service: Option<&ServiceName>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        timed("events_after", self.0.events_after(after, service, limit)).await
    }

    async fn history(
        &self,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        timed(
            "history",
            self.0.history(service, instance, since, until, limit),
        )
        .await
    }

    async fn state_at(
        &self,
        at: DateTime<Utc>,
        services: Option<&[String]>,
    ) -> StoreResult<(u64, Vec<Instance>)> {
        timed("state_at", self.0.state_at(at, services)).await
    }

    async fn service_names(
        &self,
        at: DateTime<Utc>,
        after: Option<&str>,
        containing: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        timed(
            "service_names",
            self.0.service_names(at, after, containing, limit),
        )
        .await
    }

    async fn history_start(&self) -> StoreResult<HistoryStart> {
        timed("history_start", self.0.history_start()).await
    }

    async fn epoch(&self) -> StoreResult<String> {
        timed("epoch", self.0.epoch()).await
    }

    fn history_changes(&self) -> u64 {
        self.0.history_changes()
    }

    async fn prune_history(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<u64> {
        timed("prune_history", self.0.prune_history(before, batch)).await
    }

    async fn mark_alive(&self, now: DateTime<Utc>, max_gap: chrono::Duration) -> StoreResult<bool> {
        timed("mark_alive", self.0.mark_alive(now, max_gap)).await
    }

    async fn expired_leases(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<InstanceKey>> {
        timed("expired_leases", self.0.expired_leases(now, limit)).await
    }

    async fn claim_sweep(&self) -> StoreResult<Option<SweepClaim>> {
        timed("claim_sweep", self.0.claim_sweep()).await
    }

    async fn reapable(
        &self,
        now: DateTime<Utc>,
        after: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<InstanceKey>> {
        timed("reapable", self.0.reapable(now, after, limit)).await
    }

    async fn lease_survey(
        &self,
        now: DateTime<Utc>,
        count_silent: bool,
    ) -> StoreResult<StoredSurvey> {
        timed("lease_survey", self.0.lease_survey(now, count_silent)).await
    }

    async fn switch_self_preservation(
        &self,
        from: Mode,
        to: Mode,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        timed(
            "switch_self_preservation",
            self.0.switch_self_preservation(from, to, at),
        )
        .await
    }

    async fn held_leases(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<InstanceKey>> {
        timed("held_leases", self.0.held_leases(now, limit)).await
    }

    async fn self_preservation_at(&self, at: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>> {
        timed("self_preservation_at", self.0.self_preservation_at(at)).await
    }

    async fn claim_due_checks(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedCheck>> {
        timed("claim_due_checks", self.0.claim_due_checks(now, limit)).await
    }

    async fn renew_leases(&self, heartbeats: &[Heartbeat]) -> StoreResult<Vec<Heartbeat>> {
        timed("renew_leases", self.0.renew_leases(heartbeats)).await
    }

    async fn change_feed(&self) -> StoreResult<Option<Box<dyn ChangeFeed>>> {
        timed("change_feed", self.0.change_feed()).await
    }
}
