//! Storage: one `Store` trait with a Postgres and an embedded SQLite implementation.
//!
//! The store is the truth. Every change runs in a transaction that locks the instance,
//! applies a pure transition from [`crate::lifecycle`], writes the record and appends the
//! event with the next global index; changes queued together, or handed over together by
//! background work ([`Store::apply_group`]), share one transaction ([`group_commit`]).
//! Commits happen in index order (the index counter row is locked until commit), so a
//! reader that follows events by index never skips one.

mod group_commit;
pub(crate) mod pg_hosts;
mod postgres;
mod sqlite;
#[cfg(test)]
pub mod test_store;
mod timed;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use registry_api::{Event, Instance, InstanceId, ServiceName};

use crate::lifecycle::Mutation;
use crate::record::InstanceRecord;
use crate::self_preservation::{Mode, StoredSurvey};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use timed::Timed;

/// Which instance: its service and its id, both checked at the edge.
pub type InstanceKey = (ServiceName, InstanceId);

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached now; the caller may retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let unavailable = match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // Postgres: connection exceptions (08xxx), shutting down (57P0x), a read-only
            // server (25006: a standby, or a primary demoted by a failover, pg_hosts), and
            // SQLite: busy/locked (5, 6), also as extended codes (primary code in the low byte).
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                let sqlite_primary = code.parse::<i64>().ok().map(|c| c & 0xff);
                code.starts_with("08")
                    || code.starts_with("57P0")
                    || code == "25006"
                    || matches!(sqlite_primary, Some(5 | 6))
            }),
            _ => false,
        };
        if unavailable {
            Self::Unavailable(error)
        } else {
            Self::Database(error)
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        Self::Corrupt(error.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A transition to apply under the instance's lock: receives the current record (if any).
/// `Fn`, not `FnOnce`: a change whose group failed is tried again alone.
pub type Transition = Box<dyn Fn(Option<&InstanceRecord>) -> Mutation + Send + Sync>;

/// What the writer's view shows of an instance when it asks for a change ([`Store::apply`]):
/// a hint that spares Postgres reading a row the view has never heard of, which is what
/// most registrations are. It never decides a result: a change planned on a row taken to
/// be absent writes only if the row is still absent, and is planned again from the row
/// otherwise (or when it would write nothing, such as a removal answered "unknown").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The view shows no such instance.
    Absent,
    /// The view shows the instance, or the caller has no view: the row is read.
    Anything,
}

/// One change of [`Store::apply_group`]: the instance, when, and its transition.
pub struct InstanceChange {
    pub service: ServiceName,
    pub id: InstanceId,
    pub now: DateTime<Utc>,
    pub transition: Transition,
}

/// The result of [`Store::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Whether the instance existed before.
    pub existed: bool,
    /// The record after the change (`None` if removed or never existed).
    pub record: Option<InstanceRecord>,
    /// The event appended, if the change appended one.
    pub event: Option<Event>,
    /// Every event the change's transaction appended, `event` among them, in index order
    /// (changes written as a group share one transaction), so that this process's view
    /// can take them without reading them back.
    pub committed: Arc<[Event]>,
}

/// The whole current state, consistent with `index`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub index: u64,
    pub records: Vec<InstanceRecord>,
    /// Each service's latest event index (also for services with no instance left).
    pub service_indexes: Vec<(String, u64)>,
}

/// Where kept history begins: events up to `index` (and before `at`) may be pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryStart {
    pub index: u64,
    pub at: DateTime<Utc>,
}

/// The lease sweep, claimed by one replica until dropped ([`Store::claim_sweep`]).
pub struct SweepClaim(#[allow(dead_code)] Box<dyn Send>);

impl SweepClaim {
    /// A claim that lasts as long as `held` (dropping it ends the claim).
    pub(crate) fn held_by(held: impl Send + 'static) -> Self {
        Self(Box::new(held))
    }
}

/// A due check, claimed by this caller for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedCheck {
    pub record: InstanceRecord,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies the embedded migrations (safe when several processes start at once).
    async fn migrate(&self) -> StoreResult<()>;

    /// Cheap round trip for readiness.
    async fn ping(&self) -> StoreResult<()>;

    /// Runs `transition` on the instance `(service, id)` atomically at time `now`: loads
    /// it under a lock, writes what the transition asks, appends the event with the next
    /// index. Commits before returning: an `Ok` is durable. `expect` is a hint only
    /// ([`Expect`]).
    async fn apply(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        now: DateTime<Utc>,
        expect: Expect,
        transition: Transition,
    ) -> StoreResult<Applied>;

    /// Runs the transitions of `changes` as [`Self::apply`] runs one, all in one
    /// transaction of their own, in order (a later change of an instance sees the result
    /// of an earlier one), and answers each change's result in order; a change that cannot
    /// be written fails alone. For background work with thousands of changes at once (a
    /// mass lapse): queued, they would be written in groups of at most 64 and pay a
    /// commit each; the caller chooses how many share one transaction, which holds the
    /// locks of all its instances until it commits.
    async fn apply_group(&self, changes: Vec<InstanceChange>) -> Vec<StoreResult<Applied>>;

    /// Every instance and the index they are consistent with.
    async fn snapshot(&self) -> StoreResult<Snapshot>;

    /// The latest index (0 when nothing ever happened).
    async fn current_index(&self) -> StoreResult<u64>;

    /// Events with index greater than `after`, oldest first, at most `limit`, optionally of
    /// one service.
    async fn events_after(
        &self,
        after: u64,
        service: Option<&ServiceName>,
        limit: u32,
    ) -> StoreResult<Vec<Event>>;

    /// Events of `service` (and `instance`) with `since <= at < until`, oldest first.
    async fn history(
        &self,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: u32,
    ) -> StoreResult<Vec<Event>>;

    /// The instances that existed at `at` (as their latest event before it shows them),
    /// of every service or only of `services`, and the index of that moment. Only the
    /// named services' events are read, so one service or a page of them at a past moment
    /// costs their history, not the whole one. The caller refuses moments before
    /// [`Self::history_start`].
    async fn state_at(
        &self,
        at: DateTime<Utc>,
        services: Option<&[String]>,
    ) -> StoreResult<(u64, Vec<Instance>)>;

    /// Up to `limit` names of services that had an event by `at` in the kept history, in
    /// name order, after `after` and containing `containing` when given: the candidates
    /// of a page of that moment (each read with [`Self::state_at`]).
    async fn service_names(
        &self,
        at: DateTime<Utc>,
        after: Option<&str>,
        containing: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>>;

    /// Where kept history begins.
    async fn history_start(&self) -> StoreResult<HistoryStart>;

    /// The database's epoch: a random id made when the database was first initialised,
    /// the same for every replica on it and different for any other database (a fresh
    /// one after a loss). Read once at start-up.
    async fn epoch(&self) -> StoreResult<String>;

    /// How many times this store found the database on another history than before: a
    /// failover to a standby that had not received every write, or a restore (Postgres's
    /// timeline changed). A view that followed the earlier history must be loaded again.
    fn history_changes(&self) -> u64 {
        0
    }

    /// Deletes history before `before`, keeping each live instance's latest event so that
    /// `state_at` still sees it. Returns how many events were deleted. The start of the
    /// history moves first and the events to keep are read once; then each statement
    /// deletes among no more than `batch` events and commits on its own, so that pruning a
    /// long history never holds locks (SQLite's one writer) for long.
    async fn prune_history(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<u64>;

    /// Records that the registry is alive at `now`. If nobody recorded that within
    /// `max_gap`, the registry was down: leases then expire no earlier than `now + ttl`
    /// (docs/operations.md, The outage grace). Returns true when such a recovery was recorded.
    async fn mark_alive(&self, now: DateTime<Utc>, max_gap: chrono::Duration) -> StoreResult<bool>;

    /// Instances whose lease deadline has passed at `now` and whose grace after the last
    /// recovery is over, at most `limit`.
    async fn expired_leases(&self, now: DateTime<Utc>, limit: u32)
    -> StoreResult<Vec<InstanceKey>>;

    /// Claims the lease sweep (lapses and reaping) for the caller until the claim is
    /// dropped; `None` while another replica holds it. Replicas that swept at once each
    /// read and planned the same due leases, and the slower one then found every one of
    /// them changed: at a mass lapse, twice the work for nothing.
    async fn claim_sweep(&self) -> StoreResult<Option<SweepClaim>>;

    /// Instances critical at `now` for at least their own reaping time, else `after` (the
    /// registry's; zero = never), at most `limit`. After a recovery (see
    /// [`Self::mark_alive`]) the critical time counts from the recovery: the registry's own
    /// outage is not the instances' fault.
    async fn reapable(
        &self,
        now: DateTime<Utc>,
        after: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<InstanceKey>>;

    /// The self-preservation mode and, with `count_silent`, the running leases (those
    /// whose lapse is not held) that are silent at `now`, counted before any lapse is
    /// applied (docs/operations.md, Self-preservation). A lease is silent when its last
    /// sign of life is older than half its TTL; the end of an outage grace counts as one
    /// (see [`Self::mark_alive`]). The live and the held leases are not counted here: the
    /// view keeps their counts ([`crate::tally::Leases`]).
    async fn lease_survey(
        &self,
        now: DateTime<Utc>,
        count_silent: bool,
    ) -> StoreResult<StoredSurvey>;

    /// Switches the mode from `from` to `to`, only if it still is `from` (replicas decide
    /// at once; one wins), and records when it went on or off. Its end is recorded as a
    /// recovery (see [`Self::mark_alive`]): the registry could not see the instances, so
    /// every lease gets one full TTL from then. True when this call switched it.
    async fn switch_self_preservation(
        &self,
        from: Mode,
        to: Mode,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Instances whose lapse is held and whose grace after the last recovery is over at
    /// `now`, earliest deadline first, at most `limit`.
    async fn held_leases(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<InstanceKey>>;

    /// When the self-preservation on at `at` began; `None` if it was off then.
    async fn self_preservation_at(&self, at: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>>;

    /// Claims checks due at `now` (at most `limit`): each is pushed one interval ahead in
    /// the same statement, so no other caller runs it in this interval.
    async fn claim_due_checks(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedCheck>>;

    /// Renews the leases of several instances at once (coalesced heartbeats): for each
    /// instance whose lease has not lapsed, `last_heartbeat_at` becomes its `at` and the
    /// lease runs to `at + ttl` (an instance with `ttl_seconds` 0 has no lease: only
    /// `last_heartbeat_at` moves). Appends no event (a renewal changes no status). When an
    /// instance appears more than once, its latest `at` counts; a heartbeat older than the
    /// lease already stored does not move it back (it is superseded, so applied). Answers
    /// the heartbeats it did not apply (unknown instance, or lapsed lease: those need the
    /// full heartbeat transition, which revives with an event), one per instance.
    async fn renew_leases(&self, heartbeats: &[Heartbeat]) -> StoreResult<Vec<Heartbeat>> {
        // One transaction per heartbeat; stores override this with one statement.
        let mut not_applied = Vec::new();
        for heartbeat in latest_per_instance(heartbeats) {
            let at = heartbeat.at;
            let applied = self
                .apply(
                    &heartbeat.service,
                    &heartbeat.id,
                    at,
                    Expect::Anything,
                    Box::new(move |old| match old {
                        Some(o) if o.lease_deadline().is_some_and(|d| renewed_until(o, at) < d) => {
                            Mutation::Unchanged
                        }
                        Some(o) if o.lease_deadline().is_some() || o.ttl_seconds == 0 => {
                            crate::lifecycle::heartbeat(o, at)
                        }
                        _ => Mutation::Unchanged,
                    }),
                )
                .await?;
            let renewed = applied.event.is_none()
                && applied
                    .record
                    .is_some_and(|r| r.lease_deadline().is_some() || r.ttl_seconds == 0);
            if !renewed {
                not_applied.push(heartbeat);
            }
        }
        Ok(not_applied)
    }

    /// Notifications of new events written by any process sharing the database, so each
    /// replica's view follows the others quickly. `None` when the store has no such feed
    /// (embedded SQLite serves one process).
    async fn change_feed(&self) -> StoreResult<Option<Box<dyn ChangeFeed>>> {
        Ok(None)
    }
}

/// One heartbeat received at `at`, waiting to be written with others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub service: ServiceName,
    pub id: InstanceId,
    pub at: DateTime<Utc>,
}

fn renewed_until(record: &InstanceRecord, at: DateTime<Utc>) -> DateTime<Utc> {
    at + chrono::Duration::seconds(i64::from(record.ttl_seconds))
}

/// The batch a store renews in one statement: one heartbeat per instance (the latest `at`
/// wins; an older one is superseded, not "not applied"), in key order so that row locks
/// are always taken in the same order.
pub(crate) fn latest_per_instance(heartbeats: &[Heartbeat]) -> Vec<Heartbeat> {
    let mut latest: std::collections::BTreeMap<(&ServiceName, &InstanceId), &Heartbeat> =
        std::collections::BTreeMap::new();
    for heartbeat in heartbeats {
        latest
            .entry((&heartbeat.service, &heartbeat.id))
            .and_modify(|kept| {
                if heartbeat.at > kept.at {
                    *kept = heartbeat;
                }
            })
            .or_insert(heartbeat);
    }
    latest.into_values().cloned().collect()
}

/// The heartbeats of `batch` whose instance is not among the `renewed` keys.
pub(crate) fn not_renewed(batch: Vec<Heartbeat>, renewed: &[InstanceKey]) -> Vec<Heartbeat> {
    let renewed: std::collections::HashSet<(&ServiceName, &InstanceId)> =
        renewed.iter().map(|(service, id)| (service, id)).collect();
    batch
        .into_iter()
        .filter(|h| !renewed.contains(&(&h.service, &h.id)))
        .collect()
}

/// What a change feed announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// New events were committed, up to this index (0 when the notification does not say).
    Events(u64),
    /// Leases renewed by [`Store::renew_leases`] (which appends no event): each renewed
    /// instance with the heartbeat time now stored as its `last_heartbeat_at`.
    Leases(Vec<Heartbeat>),
}

/// A stream of "something was committed" notifications.
#[async_trait]
pub trait ChangeFeed: Send {
    /// Waits for the next notification. An error means the feed broke: the caller catches
    /// up by index and asks for a new feed.
    async fn next(&mut self) -> StoreResult<Notification>;
}

/// Postgres limits a notification's payload to 8000 bytes; chunks stay well below.
const LEASE_PAYLOAD_BYTES: usize = 7_000;

/// The payloads announcing `renewed` leases: JSON arrays of `[service, id, at_ms]`, each
/// below [`LEASE_PAYLOAD_BYTES`] (one entry is at most a few hundred bytes: names and ids
/// are short).
pub(crate) fn lease_payloads(renewed: &[Heartbeat]) -> StoreResult<Vec<String>> {
    let mut payloads = Vec::new();
    let mut entries: Vec<String> = Vec::new();
    let mut bytes = 2;
    for heartbeat in renewed {
        let entry =
            serde_json::to_string(&(&heartbeat.service, &heartbeat.id, millis(heartbeat.at)))?;
        if !entries.is_empty() && bytes + entry.len() + 1 > LEASE_PAYLOAD_BYTES {
            payloads.push(format!("[{}]", entries.join(",")));
            entries.clear();
            bytes = 2;
        }
        bytes += entry.len() + 1;
        entries.push(entry);
    }
    if !entries.is_empty() {
        payloads.push(format!("[{}]", entries.join(",")));
    }
    Ok(payloads)
}

/// Reads a payload written by [`lease_payloads`].
pub(crate) fn parse_lease_payload(payload: &str) -> StoreResult<Vec<Heartbeat>> {
    let entries: Vec<(ServiceName, InstanceId, i64)> = serde_json::from_str(payload)?;
    entries
        .into_iter()
        .map(|(service, id, at_ms)| {
            Ok(Heartbeat {
                service,
                id,
                at: from_millis(at_ms)?,
            })
        })
        .collect()
}

// Helpers both stores share.

/// The row is keyed by the arguments of `apply` but described by the record: a transition
/// returning another instance's record is a bug that must not overwrite that instance.
pub(crate) fn ensure_key(
    record: &InstanceRecord,
    service: &ServiceName,
    id: &InstanceId,
) -> StoreResult<()> {
    if record.service == service.as_str() && record.id == id.as_str() {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "transition on {service}/{id} returned the record of {}/{}",
            record.service, record.id
        )))
    }
}

/// An instance's key as the store or the view holds it (text), checked as the edge
/// checks it: anything else is corrupt data.
pub(crate) fn stored_key(service: String, id: String) -> StoreResult<InstanceKey> {
    let corrupt =
        |error: String| StoreError::Corrupt(format!("stored key {service}/{id}: {error}"));
    let name = ServiceName::parse(&service).map_err(corrupt)?;
    let id = InstanceId::parse(&id).map_err(corrupt)?;
    Ok((name, id))
}

/// [`stored_key`] of each `(service, id)` row.
pub(crate) fn stored_keys(rows: Vec<(String, String)>) -> StoreResult<Vec<InstanceKey>> {
    rows.into_iter()
        .map(|(service, id)| stored_key(service, id))
        .collect()
}

/// A stored instance: its record's JSON and its `lease_deadline_ms` column. A renewal
/// (`renew_leases`) moves only that column of a running lease and leaves the JSON as the
/// last full write left it, so that a flush rewrites no record: when the column is later
/// than the record's lease, the lease runs to it and the last heartbeat was one TTL
/// before.
pub(crate) fn parse_record(
    json: &str,
    lease_deadline_ms: Option<i64>,
) -> StoreResult<InstanceRecord> {
    let mut record: InstanceRecord = serde_json::from_str(json)?;
    if let (Some(deadline_ms), Some(lease)) = (lease_deadline_ms, record.lease_deadline()) {
        let renewed = from_millis(deadline_ms)?;
        if renewed > lease {
            record.lease_expires_at = Some(renewed);
            record.last_heartbeat_at =
                renewed - chrono::Duration::seconds(i64::from(record.ttl_seconds));
        }
    }
    Ok(record)
}

pub(crate) fn parse_events(rows: &[String]) -> StoreResult<Vec<Event>> {
    rows.iter()
        .map(|row| serde_json::from_str(row).map_err(StoreError::from))
        .collect()
}

pub(crate) fn to_index(value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("index {value}")))
}

/// An index as the `bigint` columns hold it.
pub(crate) fn index_column(index: u64) -> StoreResult<i64> {
    i64::try_from(index).map_err(|_| StoreError::Corrupt(format!("index {index}")))
}

/// `after` comes from callers (a client's `?index=`): one beyond any stored index simply
/// has nothing after it.
pub(crate) fn after_column(after: u64) -> i64 {
    i64::try_from(after).unwrap_or(i64::MAX)
}

pub(crate) fn missing_meta() -> StoreError {
    StoreError::Corrupt("the registry_meta row is missing".into())
}

/// [`Store::lease_survey`] in SQL both stores run (`$1` is `now` in milliseconds, `$2`
/// whether to count; SQLite reads them as named parameters numbered in order of first
/// use, so `$1` must come first). Running leases are those of passing or warning
/// instances with a deadline the sweep looks at (a held lease has none); the silent ones
/// are read through their index (`instances_silent_from`, on the lease's bucket: see the
/// `lease_bucket` migrations), so the count reads only them and the few about to fall
/// silent.
/// Without `$2` the count is skipped before any row is read (a parameter-only condition
/// is checked once).
pub(crate) const LEASE_SURVEY: &str = "SELECT m.self_preservation_since_ms, \
       m.self_preservation_armed, ( \
         SELECT COUNT(*) FROM instances i \
         WHERE i.lease_bucket_ms IS NOT NULL AND i.status IN ('passing', 'warning') \
           AND i.lease_bucket_ms - i.ttl_ms / 2 <= $1 \
           AND i.lease_deadline_ms - i.ttl_ms / 2 <= $1 \
           AND COALESCE(m.recovered_ms, 0) + i.ttl_ms / 2 <= $1 AND $2) \
     FROM registry_meta m WHERE m.id = 1";

/// [`Store::expired_leases`] in SQL both stores run: `$1` now, `$2` the limit. The bucket
/// finds the due leases and those about to be through its index (the `lease_bucket`
/// migrations); the deadline decides.
pub(crate) const EXPIRED_LEASES: &str = "SELECT i.service, i.id FROM instances i, registry_meta m \
     WHERE m.id = 1 AND i.lease_bucket_ms <= $1 AND i.lease_deadline_ms <= $1 \
     AND (m.recovered_ms IS NULL OR m.recovered_ms + i.ttl_ms <= $1) \
     ORDER BY i.lease_bucket_ms LIMIT $2";

/// [`Store::reapable`] in SQL both stores run: `$1` now, `$2` the registry's reaping time,
/// `$3` the limit (milliseconds).
pub(crate) const REAPABLE: &str = "SELECT service, id FROM instances \
     WHERE critical_since_ms <= $1 AND COALESCE(reap_after_ms, $2) > 0 \
     AND critical_since_ms + COALESCE(reap_after_ms, $2) <= $1 \
     AND COALESCE((SELECT recovered_ms FROM registry_meta WHERE id = 1), 0) \
       + COALESCE(reap_after_ms, $2) <= $1 \
     ORDER BY critical_since_ms LIMIT $3";

/// [`Store::prune_history`]'s kept events, in SQL both stores run: each instance's latest
/// event before `$1` unless it is the instance's removal (`state_at` needs it for every
/// later moment until the instance changes), in index order. Read once per pruning:
/// checking for each event whether a later one supersedes it cost far more.
pub(crate) const PRUNE_KEPT: &str = "SELECT e.idx FROM events e \
     JOIN (SELECT MAX(idx) AS idx FROM events WHERE at_ms < $1 \
           GROUP BY service, instance) latest ON e.idx = latest.idx \
     WHERE e.kind <> 'removed' ORDER BY e.idx";

/// [`Store::prune_history`]'s next batch, in SQL both stores run: its last index, the batch
/// being at most `$3` events after `$1` and none beyond `$2` (the last event to prune).
pub(crate) const PRUNE_BATCH_END: &str = "SELECT MAX(idx) FROM ( \
       SELECT idx FROM events WHERE idx > $1 AND idx <= $2 ORDER BY idx LIMIT $3) AS batch";

/// The events of `kept` (sorted) in the batch `after < idx <= end`.
pub(crate) fn kept_within(kept: &[i64], after: i64, end: i64) -> &[i64] {
    let from = kept.partition_point(|&idx| idx <= after);
    let to = kept.partition_point(|&idx| idx <= end);
    &kept[from..to]
}

/// A duration in the milliseconds of the stored columns.
pub(crate) fn duration_millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A row of [`LEASE_SURVEY`] as the survey.
pub(crate) fn lease_survey_of(
    (since_ms, armed, silent): (Option<i64>, bool, i64),
) -> StoreResult<StoredSurvey> {
    Ok(StoredSurvey {
        mode: Mode {
            since: since_ms.map(from_millis).transpose()?,
            armed,
        },
        silent_running: u64::try_from(silent)
            .map_err(|_| StoreError::Corrupt(format!("count {silent}")))?,
    })
}

/// sqlx logs every statement at debug level by default, and built each record (the
/// statement summarized and copied) although the log filter then dropped it at `info`:
/// 9,000 instructions of a registration's 257,600. Statements slower than a second are
/// still logged, as warnings.
pub(crate) fn quiet_statements<O: sqlx::ConnectOptions>(options: O) -> O {
    options.log_statements(log::LevelFilter::Off)
}

/// How far apart the clocks of the replicas that stamp events may be, in milliseconds:
/// an event stamped up to this much before another may follow it in index order. The
/// index of a past moment is the greatest among the events of this long before it.
pub(crate) const CLOCK_SKEW_MS: i64 = 10_000;

/// Milliseconds since the epoch, the time type of every stored column.
pub(crate) fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt(format!("time {ms}")))
}

/// The columns each store derives from a record to index it; derived in one place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IndexedColumns {
    pub status: &'static str,
    pub lease_deadline_ms: Option<i64>,
    pub ttl_ms: i64,
    pub critical_since_ms: Option<i64>,
    pub check_interval_ms: Option<i64>,
    pub held_deadline_ms: Option<i64>,
    pub reap_after_ms: Option<i64>,
}

impl IndexedColumns {
    pub fn of(record: &InstanceRecord) -> Self {
        Self {
            status: record.status.as_str(),
            lease_deadline_ms: record.lease_deadline().map(millis),
            ttl_ms: i64::from(record.ttl_seconds) * 1_000,
            critical_since_ms: record.critical_since().map(millis),
            check_interval_ms: record
                .check
                .as_ref()
                .map(|c| i64::from(c.interval_seconds) * 1_000),
            held_deadline_ms: record.held_lease_deadline().map(millis),
            reap_after_ms: record
                .deregister_critical_after
                .map(|secs| i64::try_from(secs.saturating_mul(1_000)).unwrap_or(i64::MAX)),
        }
    }
}

/// Builds the event a change appends.
pub(crate) fn make_event(
    index: u64,
    now: DateTime<Utc>,
    change: &crate::lifecycle::Change,
    snapshot: &InstanceRecord,
) -> Event {
    Event {
        index,
        at: now,
        service: snapshot.service.clone(),
        instance: snapshot.id.clone(),
        kind: change.kind,
        from: change.from,
        to: change.to,
        reason: change.reason,
        snapshot: snapshot.to_instance(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(service: &str, id: &str, at_ms: i64) -> Heartbeat {
        Heartbeat {
            service: ServiceName::parse(service).expect("name"),
            id: InstanceId::parse(id).expect("id"),
            at: DateTime::from_timestamp_millis(at_ms).expect("valid time"),
        }
    }

    #[test]
    fn a_batch_keeps_the_latest_heartbeat_per_instance_in_key_order() {
        let batch = latest_per_instance(&[
            beat("sum", "b", 5),
            beat("sum", "a", 7),
            beat("sum", "b", 9),
            beat("mult", "a", 1),
            beat("sum", "a", 3),
        ]);
        assert_eq!(
            batch,
            vec![
                beat("mult", "a", 1),
                beat("sum", "a", 7),
                beat("sum", "b", 9)
            ]
        );
        let renewed = stored_keys(vec![("sum".into(), "a".into())]).expect("keys");
        let left = not_renewed(batch, &renewed);
        assert_eq!(left, vec![beat("mult", "a", 1), beat("sum", "b", 9)]);
    }

    #[test]
    fn lease_payloads_round_trip_in_chunks_postgres_accepts() {
        let renewed: Vec<Heartbeat> = (0..500)
            .map(|n| {
                beat(
                    &"s".repeat(63),
                    &format!("instance-{n}"),
                    1_800_000_000_000 + n,
                )
            })
            .collect();
        let payloads = lease_payloads(&renewed).expect("payloads");
        assert!(payloads.len() > 1, "a large batch is split");
        let mut read = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= LEASE_PAYLOAD_BYTES, "{}", payload.len());
            read.extend(parse_lease_payload(payload).expect("parse"));
        }
        assert_eq!(read, renewed);
        assert!(lease_payloads(&[]).expect("payloads").is_empty());
    }
}
