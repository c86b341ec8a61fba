//! Postgres implementation of [`Store`]: the production store, shared by every replica.
//!
//! Several replicas write at once, so the ordering guarantees come from Postgres locks:
//! a transaction-scoped advisory lock on each instance's key (taken in one order, so that
//! it also covers instances that do not exist yet) serializes changes of one instance, the
//! rows are then locked for update against lease renewals, and the single `registry_meta`
//! row, locked by the index increment until commit, makes transactions commit in index
//! order. Locks are always taken in that order, so writers cannot deadlock. Changes are
//! written in groups ([`group_commit`]), each by one statement in a transaction of its own
//! (`registry_write_group`, migration 0008).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use registry_api::{Event, Instance, InstanceId, ServiceName};
use sqlx::Connection as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{Acquire, PgConnection};

use super::group_commit::{self, GroupCommit, GroupWriter, Key, Pending, Row, RowWrite};
use super::pg_hosts;
use super::{
    Applied, ClaimedCheck, Expect, HistoryStart, IndexedColumns, InstanceChange, InstanceKey,
    Notification, Snapshot, Store, StoreError, StoreResult, SweepClaim, Transition, after_column,
    from_millis, lease_payloads, millis, missing_meta, parse_events, parse_lease_payload,
    parse_record, stored_key, stored_keys, to_index,
};
use crate::self_preservation::{Mode, StoredSurvey};

/// Enough for the request handlers and the background sweeps of one replica without
/// exhausting the server's `max_connections` when several replicas run.
const MAX_CONNECTIONS: u32 = 10;

/// During a database outage callers should hear about it quickly (and answer 503) rather
/// than queue behind a pool that cannot connect.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A pooled connection idle for longer than this is checked (a round trip) before it is
/// handed out; one used more recently is not. sqlx checks every connection as it goes
/// back to the pool, and by default again as it comes out: a round trip in front of every
/// group of changes (registrations measured 6% faster without it: docs/performance.md).
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Whether a connection `age` old and idle for `idle_for` may be used: the pool's rule for
/// the connections it hands out, and [`PgGroupWriter`]'s for the one it keeps. One opened
/// before the pool last moved to another server is retired (`false`); one idle for longer
/// than [`CHECK_IDLE_AFTER`] is checked first (an error: it is broken).
async fn fit_for_use(
    conn: &mut PgConnection,
    moves: &pg_hosts::Moves,
    age: Duration,
    idle_for: Duration,
) -> sqlx::Result<bool> {
    if moves.opened_before_last_move(age) {
        return Ok(false);
    }
    if idle_for > CHECK_IDLE_AFTER {
        conn.ping().await?;
    }
    Ok(true)
}

/// A snapshot in which every committed index is visible together with all lower ones.
const BEGIN_CONSISTENT_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// The advisory lock of the lease sweep ([`Store::claim_sweep`]): a pair of 32-bit keys,
/// a space of its own apart from the 64-bit keys that lock instances
/// (`registry_write_group`).
const SWEEP_LOCK: (i32, i32) = (0x7265_6769, 1);
/// How long the sweep's claim may sit idle before Postgres ends it: longer than a sweep
/// takes (a batch of lapses at a million instances, about 1.5 s), short enough that the
/// sweep moves on soon when its replica is cut off (a lapse comes that much late).
const SWEEP_CLAIM_IDLE: Duration = Duration::from_secs(5);

/// The channel the `events` trigger (migration 0002) notifies with each new index.
const EVENTS_CHANNEL: &str = "registry_events";

/// The channel `renew_leases` notifies with the leases it renewed (it appends no event,
/// so the trigger on `events` says nothing of them).
const LEASES_CHANNEL: &str = "registry_leases";

/// The store backed by a Postgres database.
pub struct PostgresStore {
    pool: PgPool,
    /// Changes are written in groups (see [`group_commit`]).
    writes: GroupCommit,
    /// Keeps the pool on the server that accepts writes ([`pg_hosts`]); ends with the store.
    watch: tokio::task::JoinHandle<()>,
    history: Arc<pg_hosts::History>,
}

impl PostgresStore {
    /// Connects to the first host of `url` that accepts writes (one connection is opened
    /// now, so a wrong URL fails at start) and follows the writable host from then on.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let hosts = pg_hosts::Hosts::parse(url)?;
        let options = hosts.find_writable().await?;
        let moves = pg_hosts::Moves::new();
        let stale = moves.clone();
        let history = Arc::new(pg_hosts::History::default());
        let checked = history.clone();
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                let checked = checked.clone();
                Box::pin(async move { checked.check(conn).await })
            })
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let moves = stale.clone();
                Box::pin(async move { fit_for_use(conn, &moves, meta.age, meta.idle_for).await })
            })
            .connect_with(options)
            .await?;
        let writes = GroupCommit::start(PgGroupWriter {
            pool: pool.clone(),
            moves: moves.clone(),
            kept: std::sync::Mutex::new(None),
        });
        let watch = pg_hosts::watch(pool.clone(), hosts, moves);
        Ok(Self {
            pool,
            writes,
            watch,
            history,
        })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// `LISTEN registry_events, registry_leases` on a connection of its own (a pool of one, so
/// that it never takes a slot from the requests), named so that operators can tell it apart.
struct PgChangeFeed {
    listener: sqlx::postgres::PgListener,
}

impl PgChangeFeed {
    async fn subscribe(options: &PgConnectOptions) -> StoreResult<Self> {
        let options = options.clone().application_name("registry change feed");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options)
            .await?;
        let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
        // A lost connection must end the feed, not be replaced behind the caller's back:
        // notifications sent meanwhile are gone, and only the caller can catch up.
        listener.eager_reconnect(false);
        listener
            .listen_all([EVENTS_CHANNEL, LEASES_CHANNEL])
            .await?;
        Ok(Self { listener })
    }
}

#[async_trait]
impl super::ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> StoreResult<Notification> {
        match self.listener.try_recv().await? {
            Some(notification) if notification.channel() == LEASES_CHANNEL => {
                let renewed = parse_lease_payload(notification.payload()).unwrap_or_else(|error| {
                    tracing::warn!(%error, "ignoring a malformed lease notification");
                    Vec::new()
                });
                Ok(Notification::Leases(renewed))
            }
            Some(notification) => Ok(Notification::Events(
                notification.payload().parse().unwrap_or(0),
            )),
            None => Err(StoreError::Unavailable(sqlx::Error::Io(
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the change feed's connection was lost",
                ),
            ))),
        }
    }
}

/// Migration 2 was reworded in a comment only after it shipped; sqlx refuses a database
/// where an applied migration's text changed, so such a database takes the new checksum.
const REWORDED_MIGRATION: i64 = 2;

async fn accept_reworded_migration(
    pool: &PgPool,
    migrator: &sqlx::migrate::Migrator,
) -> StoreResult<()> {
    let applied: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let Some(migration) = migrator
        .iter()
        .find(|m| m.version == REWORDED_MIGRATION)
        .filter(|_| applied)
    else {
        return Ok(());
    };
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2")
        .bind(migration.checksum.as_ref())
        .bind(REWORDED_MIGRATION)
        .execute(pool)
        .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> StoreResult<()> {
        // The migrator holds an advisory lock while it runs: replicas starting together
        // wait for each other instead of applying a migration twice.
        let migrator = sqlx::migrate!("./migrations/postgres");
        accept_reworded_migration(&self.pool, &migrator).await?;
        migrator.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        match pg_hosts::read_write(&self.pool).await? {
            true => Ok(()),
            false => Err(pg_hosts::read_only_error()),
        }
    }

    fn history_changes(&self) -> u64 {
        self.history.changes()
    }

    async fn change_feed(&self) -> StoreResult<Option<Box<dyn super::ChangeFeed>>> {
        let feed = PgChangeFeed::subscribe(&self.pool.connect_options()).await?;
        Ok(Some(Box::new(feed)))
    }

    async fn apply(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        now: DateTime<Utc>,
        expect: Expect,
        transition: Transition,
    ) -> StoreResult<Applied> {
        self.writes
            .apply(service, id, now, expect, transition)
            .await
    }

    async fn apply_group(&self, changes: Vec<InstanceChange>) -> Vec<StoreResult<Applied>> {
        self.writes.apply_group(changes).await
    }

    async fn snapshot(&self) -> StoreResult<Snapshot> {
        let mut tx = self.pool.begin_with(BEGIN_CONSISTENT_READ).await?;
        let index = read_current_index(&mut tx).await?;
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT record::text, lease_deadline_ms FROM instances ORDER BY service, id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let latest: Vec<(String, i64)> =
            sqlx::query_as("SELECT service, MAX(idx) FROM events GROUP BY service")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let records = rows
            .iter()
            .map(|(record, lease_deadline_ms)| parse_record(record, *lease_deadline_ms))
            .collect::<StoreResult<_>>()?;
        let service_indexes = latest
            .into_iter()
            .map(|(service, idx)| Ok((service, to_index(idx)?)))
            .collect::<StoreResult<_>>()?;
        Ok(Snapshot {
            index,
            records,
            service_indexes,
        })
    }

    async fn current_index(&self) -> StoreResult<u64> {
        let mut conn = self.pool.acquire().await?;
        read_current_index(&mut conn).await
    }

    async fn events_after(
        &self,
        after: u64,
        service: Option<&ServiceName>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body::text FROM events \
             WHERE idx > $1 AND ($2::text IS NULL OR service = $2) \
             ORDER BY idx LIMIT $3",
        )
        .bind(after_column(after))
        .bind(service.map(ServiceName::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        parse_events(&rows)
    }

    async fn history(
        &self,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body::text FROM events \
             WHERE service = $1 AND ($2::text IS NULL OR instance = $2) \
             AND ($3::bigint IS NULL OR at_ms >= $3) AND ($4::bigint IS NULL OR at_ms < $4) \
             ORDER BY idx LIMIT $5",
        )
        .bind(service.as_str())
        .bind(instance.map(InstanceId::as_str))
        .bind(since.map(millis))
        .bind(until.map(millis))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        parse_events(&rows)
    }

    async fn state_at(
        &self,
        at: DateTime<Utc>,
        services: Option<&[String]>,
    ) -> StoreResult<(u64, Vec<Instance>)> {
        let mut tx = self.pool.begin_with(BEGIN_CONSISTENT_READ).await?;
        // Pruning may have deleted the events that led to the moment where history now
        // starts (a removal, say), so from that moment on its index is a lower bound.
        // The index of the moment is read from the events of the last CLOCK_SKEW before
        // it (or the latest event before it, when none), by time, without visiting every
        // event before or after it. (`OFFSET 0` keeps the planner from answering MAX by
        // walking the primary key down from the newest event, past every later one.)
        let index: i64 = sqlx::query_scalar(
            "SELECT GREATEST( \
               COALESCE( \
                 (SELECT MAX(idx) FROM (SELECT idx FROM events \
                    WHERE at_ms <= $1 AND at_ms > $1 - $2 OFFSET 0) recent), \
                 (SELECT idx FROM events WHERE at_ms <= $1 ORDER BY at_ms DESC, idx DESC LIMIT 1), \
                 0), \
               (SELECT CASE WHEN history_start_ms <= $1 THEN history_start_index ELSE 0 END \
                FROM registry_meta WHERE id = 1))",
        )
        .bind(millis(at))
        .bind(super::CLOCK_SKEW_MS)
        .fetch_one(&mut *tx)
        .await?;
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body::text FROM ( \
               SELECT DISTINCT ON (service, instance) kind, body FROM events \
               WHERE at_ms <= $1 AND ($2::text[] IS NULL OR service = ANY($2)) \
               ORDER BY service, instance, idx DESC \
             ) latest WHERE kind <> 'removed'",
        )
        .bind(millis(at))
        .bind(services)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let instances = parse_events(&rows)?
            .into_iter()
            .map(|event| event.snapshot)
            .collect();
        Ok((to_index(index)?, instances))
    }

    async fn service_names(
        &self,
        at: DateTime<Utc>,
        after: Option<&str>,
        containing: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        // Each step finds the next name by the (service, idx) index, and the service's first
        // event by the same index tells whether it existed by `at`: two index probes per
        // name walked, however many events each service has.
        let names = sqlx::query_scalar(
            "WITH RECURSIVE names(service) AS ( \
               (SELECT service FROM events WHERE service > COALESCE($1, '') \
                ORDER BY service LIMIT 1) \
               UNION ALL \
               SELECT (SELECT e.service FROM events e WHERE e.service > n.service \
                       ORDER BY e.service LIMIT 1) \
               FROM names n WHERE n.service IS NOT NULL) \
             SELECT service FROM names \
             WHERE service IS NOT NULL AND ($2::text IS NULL OR strpos(service, $2) > 0) \
               AND (SELECT e.at_ms FROM events e WHERE e.service = names.service \
                    ORDER BY e.idx LIMIT 1) <= $4 \
             LIMIT $3",
        )
        .bind(after)
        .bind(containing)
        .bind(i64::from(limit))
        .bind(millis(at))
        .fetch_all(&self.pool)
        .await?;
        Ok(names)
    }

    async fn history_start(&self) -> StoreResult<HistoryStart> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT history_start_index, history_start_ms FROM registry_meta WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let (index, at) = row.ok_or_else(missing_meta)?;
        Ok(HistoryStart {
            index: to_index(index)?,
            at: from_millis(at)?,
        })
    }

    async fn epoch(&self) -> StoreResult<String> {
        let epoch: Option<String> =
            sqlx::query_scalar("SELECT epoch FROM registry_meta WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        epoch.ok_or_else(missing_meta)
    }

    async fn prune_history(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<u64> {
        let before_ms = millis(before);
        let last_pruned: Option<i64> =
            sqlx::query_scalar("SELECT MAX(idx) FROM events WHERE at_ms < $1")
                .bind(before_ms)
                .fetch_one(&self.pool)
                .await?;
        let Some(last_pruned) = last_pruned else {
            return Ok(0);
        };
        // First, so that readers refuse the moments being pruned before their events go;
        // GREATEST because a replica pruning with an older `before` must not move the
        // start back.
        sqlx::query(
            "UPDATE registry_meta SET \
               history_start_index = GREATEST(history_start_index, $1), \
               history_start_ms = GREATEST(history_start_ms, $2) \
             WHERE id = 1",
        )
        .bind(last_pruned)
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        let kept: Vec<i64> = sqlx::query_scalar(super::PRUNE_KEPT)
            .bind(before_ms)
            .fetch_all(&self.pool)
            .await?;
        let mut deleted = 0;
        let mut after = 0_i64;
        loop {
            let end: Option<i64> = sqlx::query_scalar(super::PRUNE_BATCH_END)
                .bind(after)
                .bind(last_pruned)
                .bind(i64::from(batch.max(1)))
                .fetch_one(&self.pool)
                .await?;
            let Some(end) = end else {
                return Ok(deleted);
            };
            let kept = super::kept_within(&kept, after, end);
            deleted += sqlx::query(
                "DELETE FROM events \
                 WHERE idx > $1 AND idx <= $2 AND at_ms < $3 AND NOT (idx = ANY($4))",
            )
            .bind(after)
            .bind(end)
            .bind(before_ms)
            .bind(kept)
            .execute(&self.pool)
            .await?
            .rows_affected();
            after = end;
        }
    }

    async fn mark_alive(&self, now: DateTime<Utc>, max_gap: chrono::Duration) -> StoreResult<bool> {
        let now_ms = millis(now);
        let mut tx = self.pool.begin().await?;
        let last_alive: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_alive_ms FROM registry_meta WHERE id = 1 FOR UPDATE")
                .fetch_optional(&mut *tx)
                .await?;
        let last_alive = last_alive.ok_or_else(missing_meta)?;
        let recovered =
            last_alive.is_none_or(|last| now_ms.saturating_sub(last) > max_gap.num_milliseconds());
        sqlx::query(
            "UPDATE registry_meta SET \
               last_alive_ms = GREATEST(COALESCE(last_alive_ms, $1), $1), \
               recovered_ms = CASE WHEN $2 THEN $1 ELSE recovered_ms END \
             WHERE id = 1",
        )
        .bind(now_ms)
        .bind(recovered)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(recovered)
    }

    async fn expired_leases(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<InstanceKey>> {
        let rows = sqlx::query_as(super::EXPIRED_LEASES)
            .bind(millis(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        stored_keys(rows)
    }

    async fn claim_sweep(&self) -> StoreResult<Option<SweepClaim>> {
        // A lock of the transaction: it ends with the claim (dropped, the transaction
        // rolls back) or with the connection, should this replica die while it sweeps.
        // A replica cut off from the database mid-sweep leaves its session idle in the
        // transaction: Postgres ends it after SWEEP_CLAIM_IDLE, so the others take over.
        let mut claim = self.pool.begin().await?;
        let (_, claimed): (String, bool) = sqlx::query_as(
            "SELECT set_config('idle_in_transaction_session_timeout', $1, true), \
               pg_try_advisory_xact_lock($2, $3)",
        )
        .bind(format!("{}ms", SWEEP_CLAIM_IDLE.as_millis()))
        .bind(SWEEP_LOCK.0)
        .bind(SWEEP_LOCK.1)
        .fetch_one(&mut *claim)
        .await?;
        Ok(claimed.then(|| SweepClaim::held_by(claim)))
    }

    async fn reapable(
        &self,
        now: DateTime<Utc>,
        after: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<InstanceKey>> {
        // Time the registry itself was away does not count as critical time.
        let rows = sqlx::query_as(super::REAPABLE)
            .bind(millis(now))
            .bind(super::duration_millis(after))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        stored_keys(rows)
    }

    async fn lease_survey(
        &self,
        now: DateTime<Utc>,
        count_silent: bool,
    ) -> StoreResult<StoredSurvey> {
        let row = sqlx::query_as(super::LEASE_SURVEY)
            .bind(millis(now))
            .bind(count_silent)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(missing_meta)?;
        super::lease_survey_of(row)
    }

    async fn switch_self_preservation(
        &self,
        from: Mode,
        to: Mode,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let switched = sqlx::query(
            // Its end is a recovery, as after an outage: every lease gets one full TTL.
            "UPDATE registry_meta SET \
               self_preservation_since_ms = $3, self_preservation_armed = $4, \
               recovered_ms = CASE WHEN $1 IS NOT NULL AND $3 IS NULL THEN $5 \
                 ELSE recovered_ms END \
             WHERE id = 1 AND self_preservation_since_ms IS NOT DISTINCT FROM $1 \
               AND self_preservation_armed = $2",
        )
        .bind(from.since.map(millis))
        .bind(from.armed)
        .bind(to.since.map(millis))
        .bind(to.armed)
        .bind(millis(at))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if switched && from.active() != to.active() {
            sqlx::query("INSERT INTO self_preservation_changes (at_ms, active) VALUES ($1, $2)")
                .bind(millis(at))
                .bind(to.active())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(switched)
    }

    async fn held_leases(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<InstanceKey>> {
        let rows = sqlx::query_as(
            "SELECT i.service, i.id FROM instances i, registry_meta m \
             WHERE m.id = 1 AND i.held_deadline_ms IS NOT NULL \
             AND (m.recovered_ms IS NULL OR m.recovered_ms + i.ttl_ms <= $1) \
             ORDER BY i.held_deadline_ms LIMIT $2",
        )
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        stored_keys(rows)
    }

    async fn self_preservation_at(&self, at: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>> {
        let latest: Option<(i64, bool)> = sqlx::query_as(
            "SELECT at_ms, active FROM self_preservation_changes WHERE at_ms <= $1 \
             ORDER BY at_ms DESC LIMIT 1",
        )
        .bind(millis(at))
        .fetch_optional(&self.pool)
        .await?;
        latest
            .filter(|(_, active)| *active)
            .map(|(at_ms, _)| from_millis(at_ms))
            .transpose()
    }

    async fn claim_due_checks(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedCheck>> {
        // SKIP LOCKED: replicas sweeping at once each take different rows, and a row
        // being changed right now is simply claimed by the next sweep.
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "UPDATE instances SET next_check_ms = $1 + check_interval_ms \
             WHERE (service, id) IN ( \
               SELECT service, id FROM instances WHERE next_check_ms <= $1 \
               ORDER BY next_check_ms LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING record::text, lease_deadline_ms",
        )
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|(record, lease_deadline_ms)| {
                parse_record(record, *lease_deadline_ms).map(|record| ClaimedCheck { record })
            })
            .collect()
    }

    async fn renew_leases(
        &self,
        heartbeats: &[super::Heartbeat],
    ) -> StoreResult<Vec<super::Heartbeat>> {
        let batch = super::latest_per_instance(heartbeats);
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let services: Vec<&str> = batch.iter().map(|h| h.service.as_str()).collect();
        let ids: Vec<&str> = batch.iter().map(|h| h.id.as_str()).collect();
        let at_ms: Vec<i64> = batch.iter().map(|h| millis(h.at)).collect();
        // `live` locks the rows in key order before any is updated: two replicas renewing
        // overlapping batches then wait for each other instead of deadlocking. A running
        // lease moves its deadline column only, to `at + ttl` of the row itself, and never
        // back: the record is read with it (`parse_record`), so no JSON is rewritten, and
        // within the deadline's bucket (migration 0010) no index entry either. A lapsed
        // lease (`lease_deadline_ms` NULL with a ttl) is left to the full heartbeat
        // transition. An instance without a lease (ttl 0) has only its last heartbeat,
        // written into the record as serde writes a time (the fraction only when not zero).
        // `moved`: the lease now runs from this heartbeat (not an older one's later lease).
        let mut tx = self.pool.begin().await?;
        let renewed: Vec<(String, String, i64, bool)> = sqlx::query_as(
            "WITH hb AS ( \
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
                 AS t(service, id, at_ms)), \
             live AS MATERIALIZED ( \
               SELECT i.service, i.id, hb.at_ms FROM instances i \
               JOIN hb ON i.service = hb.service AND i.id = hb.id \
               WHERE i.lease_deadline_ms IS NOT NULL OR i.ttl_ms = 0 \
               ORDER BY i.service, i.id FOR UPDATE OF i) \
             UPDATE instances AS i SET \
               record = CASE WHEN i.ttl_ms = 0 THEN \
                   i.record || jsonb_build_object('last_heartbeat_at', \
                     to_char(to_timestamp(live.at_ms / 1000) AT TIME ZONE 'UTC', \
                             'YYYY-MM-DD\"T\"HH24:MI:SS') \
                     || CASE WHEN live.at_ms % 1000 = 0 THEN '' \
                        ELSE '.' || lpad((live.at_ms % 1000)::text, 3, '0') END \
                     || 'Z') \
                 ELSE i.record END, \
               lease_deadline_ms = CASE WHEN i.ttl_ms = 0 THEN NULL \
                 ELSE GREATEST(i.lease_deadline_ms, live.at_ms + i.ttl_ms) END \
             FROM live \
             WHERE i.service = live.service AND i.id = live.id \
               AND (i.lease_deadline_ms IS NOT NULL OR i.ttl_ms = 0) \
             RETURNING i.service, i.id, live.at_ms, \
               (i.ttl_ms = 0 OR i.lease_deadline_ms = live.at_ms + i.ttl_ms)",
        )
        .bind(services)
        .bind(ids)
        .bind(at_ms)
        .fetch_all(&mut *tx)
        .await?;
        // The other replicas show these renewals too (crate::replication).
        // The payload carries the heartbeat times, so receivers need no read; several
        // payloads when the batch is large. Delivered at commit, not at all on rollback.
        let renewed: Vec<(Key, i64, bool)> = renewed
            .into_iter()
            .map(|(service, id, at_ms, moved)| Ok((stored_key(service, id)?, at_ms, moved)))
            .collect::<StoreResult<_>>()?;
        let moved: Vec<super::Heartbeat> = renewed
            .iter()
            .filter(|(_, _, moved)| *moved)
            .map(|((service, id), at_ms, _)| {
                Ok(super::Heartbeat {
                    service: service.clone(),
                    id: id.clone(),
                    at: from_millis(*at_ms)?,
                })
            })
            .collect::<StoreResult<_>>()?;
        let payloads = lease_payloads(&moved)?;
        if !payloads.is_empty() {
            sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
                .bind(LEASES_CHANNEL)
                .bind(payloads)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let renewed: Vec<Key> = renewed.into_iter().map(|(key, _, _)| key).collect();
        Ok(super::not_renewed(batch, &renewed))
    }
}

/// Writes groups of changes (see [`group_commit`]): each group is planned from its rows as
/// read without locks and written by one statement, `registry_write_group` (migrations
/// 0008, 0011, 0012 and 0013), in an implicit transaction: a round trip to read, one to write
/// and commit. The statement writes only if no row changed since it was read; when one
/// did (another replica, a lease renewal), the group is planned again from rows read
/// under its locks. Rows the writers' view expected absent ([`Expect::Absent`], a new
/// registration) are not read but planned as absent, which the statement checks the
/// same way: a group of registrations costs one round trip.
///
/// Groups follow one another on one connection, kept between them, rather than on the
/// pool's next one: the pool hands out its connections in turn, so each group met a
/// server process whose memory had gone cold in the processor's caches since it last
/// wrote a group, ten groups earlier. Registrations came 4-16% faster on a kept
/// connection (docs/performance.md). The kept connection obeys the pool's rules: it is
/// checked when it sat idle, retired when the pool moved to another server, and dropped
/// after an error.
struct PgGroupWriter {
    pool: PgPool,
    moves: Arc<pg_hosts::Moves>,
    /// The connection of the last group written without an error, when no write has it.
    kept: std::sync::Mutex<Option<KeptConnection>>,
}

/// The connection [`PgGroupWriter`] keeps between groups.
struct KeptConnection {
    conn: PoolConnection<Postgres>,
    /// When it was taken from the pool: a move to another server since then retires it.
    taken: Instant,
    /// When its last group was written: [`fit_for_use`] checks it by how long it sat idle,
    /// as the pool checks its own.
    used: Instant,
}

impl PgGroupWriter {
    /// The kept connection when it is still fit for a group, or one from the pool.
    async fn connection(&self) -> StoreResult<(PoolConnection<Postgres>, Instant)> {
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(KeptConnection {
            mut conn,
            taken,
            used,
        }) = kept
            && let Ok(true) =
                fit_for_use(&mut conn, &self.moves, taken.elapsed(), used.elapsed()).await
        {
            return Ok((conn, taken));
        }
        Ok((self.pool.acquire().await?, Instant::now()))
    }

    /// Keeps `conn`, which has just written a group, for the next one (unless another
    /// write, running alongside, kept its own already).
    fn keep(&self, conn: PoolConnection<Postgres>, taken: Instant) {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.is_none() {
            *kept = Some(KeptConnection {
                conn,
                taken,
                used: Instant::now(),
            });
        }
    }
}

/// The SQLSTATE `registry_write_group` raises when a row changed after it was read.
const ROW_CHANGED: &str = "RG001";

/// A stored row as a group reads it: its key, record, lease deadline and version (`xmin`).
type StoredRow = (String, String, String, Option<i64>, String);

#[async_trait]
impl GroupWriter for PgGroupWriter {
    async fn write(&self, group: &[Pending]) -> StoreResult<Vec<StoreResult<Applied>>> {
        let keys: Vec<Key> = group
            .iter()
            .map(Pending::key)
            .collect::<BTreeSet<Key>>()
            .into_iter()
            .collect();
        let to_read: BTreeSet<Key> = group
            .iter()
            .filter(|change| change.expect == Expect::Anything)
            .map(Pending::key)
            .collect();
        let (mut conn, taken) = self.connection().await?;
        let stored = if to_read.is_empty() {
            Vec::new()
        } else {
            let (services, ids) = key_columns(&to_read);
            read_rows(&mut conn, &services, &ids).await?
        };
        let assumed_absent = to_read.len() < keys.len();
        match write_group(&mut conn, group, &keys, stored, assumed_absent).await {
            Ok(Some(answers)) => {
                self.keep(conn, taken);
                return Ok(answers);
            }
            Ok(None) => {}
            Err(StoreError::Database(sqlx::Error::Database(error)))
                if error.code().as_deref() == Some(ROW_CHANGED) => {}
            Err(error) => return Err(error),
        }
        // Locks every key of the group (migration 0004 says why this takes a function),
        // then reads the rows again: under the locks, none can change before the write.
        let (services, ids) = key_columns(&keys);
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT count(*) FROM registry_lock_instances($1, $2)")
            .bind(&services)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        let stored = read_rows(&mut tx, &services, &ids).await?;
        let answers = write_group(&mut tx, group, &keys, stored, false)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a group read whole was not written".into()))?;
        tx.commit().await?;
        self.keep(conn, taken);
        Ok(answers)
    }
}

/// Keys as the two `text[]` columns the group's statements take.
fn key_columns<'a>(keys: impl IntoIterator<Item = &'a Key>) -> (Vec<&'a str>, Vec<&'a str>) {
    keys.into_iter()
        .map(|(service, id)| (service.as_str(), id.as_str()))
        .unzip()
}

/// The stored rows of the keys `services` x `ids` (absent keys have none).
async fn read_rows(
    conn: &mut PgConnection,
    services: &[&str],
    ids: &[&str],
) -> StoreResult<Vec<StoredRow>> {
    Ok(sqlx::query_as(
        "SELECT service, id, record::text, lease_deadline_ms, xmin::text FROM instances \
         WHERE (service, id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
    )
    .bind(services)
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// Plans `group` on the rows `stored` (a key without one is taken to be absent) and writes
/// it with `registry_write_group`, which fails with [`ROW_CHANGED`] if a row is no longer
/// as read. With `assumed_absent` (some keys were not read), a group that would write
/// nothing is not answered (`None`): its answers would stand on rows nobody read.
async fn write_group(
    conn: &mut PgConnection,
    group: &[Pending],
    keys: &[Key],
    stored: Vec<StoredRow>,
    assumed_absent: bool,
) -> StoreResult<Option<Vec<StoreResult<Applied>>>> {
    let mut versions: HashMap<Key, String> = HashMap::with_capacity(stored.len());
    let mut loaded = HashMap::with_capacity(stored.len());
    for (service, id, record, lease_deadline_ms, version) in stored {
        let key = stored_key(service, id)?;
        let record = parse_record(&record, lease_deadline_ms).map_err(|error| error.to_string());
        versions.insert(key.clone(), version);
        loaded.insert(key, record);
    }
    let plan = group_commit::plan(group, loaded);
    if plan.rows.is_empty() && plan.event_count() == 0 {
        // Nothing changes: the answers stand on what was read.
        return Ok((!assumed_absent).then(|| plan.answers(Vec::new())));
    }
    let versions: Vec<Option<String>> = keys.iter().map(|key| versions.remove(key)).collect();
    let rows = GroupRows::of(&plan.rows)?;
    let (services, ids) = key_columns(keys);
    // Numbered by the statement: each body is written with the index 0, its first field,
    // which the statement replaces with the event's index as it appends it (migration
    // 0012).
    let mut events = plan.events(0);
    let mut event_columns = EventColumns::default();
    for event in &mut events {
        event.index = 0;
        event_columns.add(event)?;
    }
    let first_index: Option<i64> = sqlx::query_scalar(
        "SELECT registry_write_group($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
           $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
    )
    .bind(services)
    .bind(ids)
    .bind(versions)
    .bind(rows.deleted_services)
    .bind(rows.deleted_ids)
    .bind(rows.is_new)
    .bind(rows.service)
    .bind(rows.id)
    .bind(rows.record)
    .bind(rows.status)
    .bind(rows.lease_deadline_ms)
    .bind(rows.ttl_ms)
    .bind(rows.critical_since_ms)
    .bind(rows.check_interval_ms)
    .bind(rows.now_ms)
    .bind(rows.reschedule_check)
    .bind(rows.held_deadline_ms)
    .bind(rows.reap_after_ms)
    .bind(event_columns.at_ms)
    .bind(event_columns.service)
    .bind(event_columns.instance)
    .bind(event_columns.kind)
    .bind(event_columns.body)
    .fetch_one(conn)
    .await?;
    if let Some(first_index) = first_index {
        for (event, index) in events.iter_mut().zip(to_index(first_index)?..) {
            event.index = index;
        }
    }
    Ok(Some(plan.answers(events)))
}

/// A group's rows as columns, the shape `UNNEST` takes: each changed instance's final row
/// (the record and the columns derived from it), and the keys of the rows to delete.
#[derive(Default)]
struct GroupRows {
    is_new: Vec<bool>,
    service: Vec<String>,
    id: Vec<String>,
    record: Vec<String>,
    status: Vec<&'static str>,
    lease_deadline_ms: Vec<Option<i64>>,
    ttl_ms: Vec<i64>,
    critical_since_ms: Vec<Option<i64>>,
    check_interval_ms: Vec<Option<i64>>,
    now_ms: Vec<i64>,
    reschedule_check: Vec<bool>,
    held_deadline_ms: Vec<Option<i64>>,
    reap_after_ms: Vec<Option<i64>>,
    deleted_services: Vec<String>,
    deleted_ids: Vec<String>,
}

impl GroupRows {
    fn of(rows: &[Row]) -> StoreResult<Self> {
        let mut columns = Self::default();
        for row in rows {
            let (record, now, is_new, reschedule_check) = match &row.write {
                RowWrite::Insert { record, now } => (record, *now, true, true),
                RowWrite::Update {
                    record,
                    reschedule_check,
                    now,
                } => (record, *now, false, *reschedule_check),
                RowWrite::Delete => {
                    columns.deleted_services.push(row.key.0.to_string());
                    columns.deleted_ids.push(row.key.1.to_string());
                    continue;
                }
            };
            let indexed = IndexedColumns::of(record);
            columns.is_new.push(is_new);
            columns.service.push(record.service.clone());
            columns.id.push(record.id.clone());
            columns.record.push(serde_json::to_string(record)?);
            columns.status.push(indexed.status);
            columns.lease_deadline_ms.push(indexed.lease_deadline_ms);
            columns.ttl_ms.push(indexed.ttl_ms);
            columns.critical_since_ms.push(indexed.critical_since_ms);
            columns.check_interval_ms.push(indexed.check_interval_ms);
            columns.now_ms.push(millis(now));
            columns.reschedule_check.push(reschedule_check);
            columns.held_deadline_ms.push(indexed.held_deadline_ms);
            columns.reap_after_ms.push(indexed.reap_after_ms);
        }
        Ok(columns)
    }
}

/// A group's events as columns (see [`GroupRows`]).
#[derive(Default)]
struct EventColumns {
    at_ms: Vec<i64>,
    service: Vec<String>,
    instance: Vec<String>,
    kind: Vec<&'static str>,
    body: Vec<String>,
}

impl EventColumns {
    fn add(&mut self, event: &Event) -> StoreResult<()> {
        self.at_ms.push(millis(event.at));
        self.service.push(event.service.clone());
        self.instance.push(event.instance.clone());
        self.kind.push(event.kind.as_str());
        self.body.push(serde_json::to_string(event)?);
        Ok(())
    }
}

async fn read_current_index(conn: &mut PgConnection) -> StoreResult<u64> {
    let index: Option<i64> =
        sqlx::query_scalar("SELECT current_index FROM registry_meta WHERE id = 1")
            .fetch_optional(conn)
            .await?;
    to_index(index.ok_or_else(missing_meta)?)
}
