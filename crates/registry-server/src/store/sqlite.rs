//! SQLite implementation of [`Store`]: the embedded store, so that one binary runs with
//! nothing else installed.
//!
//! SQLite allows one writer at a time, so every write goes through a pool of exactly one
//! connection and starts with `BEGIN IMMEDIATE`: writes are serialized in the process
//! (no `SQLITE_BUSY` between our own writers) and indexes are committed in order. Reads use
//! a separate pool; in WAL mode they see the last commit and never wait for the writer.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use registry_api::{Event, Instance, InstanceId, ServiceName};
use sqlx::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::group_commit::{self, GroupCommit, GroupWriter, Key, Pending, Plan, RowWrite};
use super::{
    Applied, ClaimedCheck, Expect, HistoryStart, IndexedColumns, InstanceChange, InstanceKey,
    Snapshot, Store, StoreResult, SweepClaim, Transition, after_column, from_millis, index_column,
    millis, missing_meta, parse_events, parse_record, stored_keys, to_index,
};
use crate::record::InstanceRecord;
use crate::self_preservation::{Mode, StoredSurvey};

/// How long a statement waits for a lock held by another process (or a checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Writers queue for the one write connection; give a burst time to drain before failing.
const WRITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

const READ_CONNECTIONS: u32 = 4;

/// Takes the write lock at once, so a transaction that reads then writes cannot fail
/// halfway when upgrading its lock.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The store backed by an SQLite file.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Changes are written in groups (see [`group_commit`]).
    writes: GroupCommit,
}

impl SqliteStore {
    /// Opens (and creates if missing) the database at `url`, e.g. `sqlite://registry.db`.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = super::quiet_statements(SqliteConnectOptions::from_str(url)?)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every acknowledged write must survive a crash or a power loss; WAL's
            // default (NORMAL) may lose the last commits on power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        // The write connection is kept open for the life of the store: it is the one
        // that checkpoints, and reopening it would only cost time.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(WRITE_ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        // An in-memory database exists once per connection group; a second pool would
        // see another (or a shared-cache one with table locks), so reads share the writer.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(READ_CONNECTIONS)
                .connect_with(options)
                .await?
        };
        let writes = GroupCommit::start(SqliteGroupWriter {
            writer: writer.clone(),
        });
        Ok(Self {
            writer,
            reader,
            writes,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
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
        // One read transaction: both statements see the same commit.
        let mut tx = self.reader.begin().await?;
        let index = read_current_index(&mut tx).await?;
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT record, lease_deadline_ms FROM instances ORDER BY service, id")
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
        let mut conn = self.reader.acquire().await?;
        read_current_index(&mut conn).await
    }

    async fn events_after(
        &self,
        after: u64,
        service: Option<&ServiceName>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM events \
             WHERE idx > ?1 AND (?2 IS NULL OR service = ?2) \
             ORDER BY idx LIMIT ?3",
        )
        .bind(after_column(after))
        .bind(service.map(ServiceName::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
            "SELECT body FROM events \
             WHERE service = ?1 AND (?2 IS NULL OR instance = ?2) \
             AND (?3 IS NULL OR at_ms >= ?3) AND (?4 IS NULL OR at_ms < ?4) \
             ORDER BY idx LIMIT ?5",
        )
        .bind(service.as_str())
        .bind(instance.map(InstanceId::as_str))
        .bind(since.map(millis))
        .bind(until.map(millis))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        parse_events(&rows)
    }

    async fn state_at(
        &self,
        at: DateTime<Utc>,
        services: Option<&[String]>,
    ) -> StoreResult<(u64, Vec<Instance>)> {
        let mut tx = self.reader.begin().await?;
        // Pruning may have deleted the events that led to the moment where history now
        // starts (a removal, say), so from that moment on its index is a lower bound.
        // As on Postgres: the index of the moment from the events of the last CLOCK_SKEW.
        let index: i64 = sqlx::query_scalar(
            "SELECT MAX( \
               COALESCE( \
                 (SELECT MAX(idx) FROM events WHERE at_ms <= ?1 AND at_ms > ?1 - ?2), \
                 (SELECT idx FROM events WHERE at_ms <= ?1 ORDER BY at_ms DESC, idx DESC LIMIT 1), \
                 0), \
               COALESCE((SELECT CASE WHEN history_start_ms <= ?1 THEN history_start_index \
                         ELSE 0 END FROM registry_meta WHERE id = 1), 0))",
        )
        .bind(millis(at))
        .bind(super::CLOCK_SKEW_MS)
        .fetch_one(&mut *tx)
        .await?;
        let services = services.map(serde_json::to_string).transpose()?;
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT e.body FROM events e \
             JOIN (SELECT MAX(idx) AS idx FROM events WHERE at_ms <= ?1 \
                   AND (?2 IS NULL OR service IN (SELECT value FROM json_each(?2))) \
                   GROUP BY service, instance) latest ON e.idx = latest.idx \
             WHERE e.kind <> 'removed' ORDER BY e.service, e.instance",
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
        let names = sqlx::query_scalar(
            "SELECT DISTINCT service FROM events \
             WHERE service > COALESCE(?1, '') AND (?2 IS NULL OR instr(service, ?2) > 0) \
               AND at_ms <= ?4 \
             ORDER BY service LIMIT ?3",
        )
        .bind(after)
        .bind(containing)
        .bind(i64::from(limit))
        .bind(millis(at))
        .fetch_all(&self.reader)
        .await?;
        Ok(names)
    }

    async fn history_start(&self) -> StoreResult<HistoryStart> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT history_start_index, history_start_ms FROM registry_meta WHERE id = 1",
        )
        .fetch_optional(&self.reader)
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
                .fetch_optional(&self.reader)
                .await?;
        epoch.ok_or_else(missing_meta)
    }

    async fn prune_history(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<u64> {
        let before_ms = millis(before);
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let last_pruned: Option<i64> =
            sqlx::query_scalar("SELECT MAX(idx) FROM events WHERE at_ms < ?1")
                .bind(before_ms)
                .fetch_one(&mut *tx)
                .await?;
        let Some(last_pruned) = last_pruned else {
            return Ok(0);
        };
        // First, so that readers refuse the moments being pruned before their events go;
        // MAX because pruning with an older `before` must not move the start back.
        sqlx::query(
            "UPDATE registry_meta SET \
               history_start_index = MAX(history_start_index, ?1), \
               history_start_ms = MAX(history_start_ms, ?2) \
             WHERE id = 1",
        )
        .bind(last_pruned)
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // Each batch in a write transaction of its own: the one writer goes back to the
        // registry's changes between two.
        let kept: Vec<i64> = sqlx::query_scalar(super::PRUNE_KEPT)
            .bind(before_ms)
            .fetch_all(&self.reader)
            .await?;
        let mut deleted = 0;
        let mut after = 0_i64;
        loop {
            let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
            let end: Option<i64> = sqlx::query_scalar(super::PRUNE_BATCH_END)
                .bind(after)
                .bind(last_pruned)
                .bind(i64::from(batch.max(1)))
                .fetch_one(&mut *tx)
                .await?;
            let Some(end) = end else {
                return Ok(deleted);
            };
            let kept = super::kept_within(&kept, after, end);
            deleted += sqlx::query(
                "DELETE FROM events \
                 WHERE idx > ?1 AND idx <= ?2 AND at_ms < ?3 \
                 AND idx NOT IN (SELECT value FROM json_each(?4))",
            )
            .bind(after)
            .bind(end)
            .bind(before_ms)
            .bind(serde_json::to_string(kept)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            after = end;
        }
    }

    async fn mark_alive(&self, now: DateTime<Utc>, max_gap: chrono::Duration) -> StoreResult<bool> {
        let now_ms = millis(now);
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let last_alive: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_alive_ms FROM registry_meta WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        let last_alive = last_alive.ok_or_else(missing_meta)?;
        let recovered =
            last_alive.is_none_or(|last| now_ms.saturating_sub(last) > max_gap.num_milliseconds());
        sqlx::query(
            "UPDATE registry_meta SET \
               last_alive_ms = MAX(COALESCE(last_alive_ms, ?1), ?1), \
               recovered_ms = CASE WHEN ?2 THEN ?1 ELSE recovered_ms END \
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
            .fetch_all(&self.reader)
            .await?;
        stored_keys(rows)
    }

    async fn claim_sweep(&self) -> StoreResult<Option<SweepClaim>> {
        // One process owns an SQLite file: there is no other replica to leave it to.
        Ok(Some(SweepClaim::held_by(())))
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
            .fetch_all(&self.reader)
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
            .fetch_optional(&self.reader)
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
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let switched = sqlx::query(
            // Its end is a recovery, as after an outage: every lease gets one full TTL.
            "UPDATE registry_meta SET \
               self_preservation_since_ms = ?3, self_preservation_armed = ?4, \
               recovered_ms = CASE WHEN ?1 IS NOT NULL AND ?3 IS NULL THEN ?5 \
                 ELSE recovered_ms END \
             WHERE id = 1 AND self_preservation_since_ms IS ?1 \
               AND self_preservation_armed = ?2",
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
            sqlx::query("INSERT INTO self_preservation_changes (at_ms, active) VALUES (?1, ?2)")
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
             AND (m.recovered_ms IS NULL OR m.recovered_ms + i.ttl_ms <= ?1) \
             ORDER BY i.held_deadline_ms LIMIT ?2",
        )
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        stored_keys(rows)
    }

    async fn self_preservation_at(&self, at: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>> {
        let latest: Option<(i64, bool)> = sqlx::query_as(
            "SELECT at_ms, active FROM self_preservation_changes WHERE at_ms <= ?1 \
             ORDER BY at_ms DESC LIMIT 1",
        )
        .bind(millis(at))
        .fetch_optional(&self.reader)
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
        // On the writer: the claim is a write and must not race another one.
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "UPDATE instances SET next_check_ms = ?1 + check_interval_ms \
             WHERE (service, id) IN ( \
               SELECT service, id FROM instances WHERE next_check_ms <= ?1 \
               ORDER BY next_check_ms LIMIT ?2) \
             RETURNING record, lease_deadline_ms",
        )
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
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
        // The whole batch is one JSON argument (no limit on bound parameters), read back
        // with `->>`, which yields plain SQL values that json_set stores as JSON strings.
        let rows: Vec<(&str, &str, i64)> = batch
            .iter()
            .map(|h| (h.service.as_str(), h.id.as_str(), millis(h.at)))
            .collect();
        // A running lease moves its deadline column only, to `at + ttl` of the row itself,
        // and never back: the record is read with it (`parse_record`), so no JSON is
        // rewritten. A lapsed lease (`lease_deadline_ms` NULL with a ttl) is left to the
        // full heartbeat transition. An instance without a lease (ttl 0) has only its last
        // heartbeat, written into the record as serde writes a time (the fraction only
        // when not zero). On the writer, as every write.
        let renewed: Vec<(String, String)> = sqlx::query_as(
            "UPDATE instances SET \
               record = CASE WHEN instances.ttl_ms = 0 THEN \
                   json_set(instances.record, '$.last_heartbeat_at', \
                     strftime('%Y-%m-%dT%H:%M:%S', hb.at_ms / 1000, 'unixepoch') \
                     || CASE WHEN hb.at_ms % 1000 = 0 THEN '' \
                        ELSE printf('.%03d', hb.at_ms % 1000) END \
                     || 'Z') \
                 ELSE instances.record END, \
               lease_deadline_ms = CASE WHEN instances.ttl_ms = 0 THEN NULL \
                 ELSE MAX(instances.lease_deadline_ms, hb.at_ms + instances.ttl_ms) END \
             FROM (SELECT value ->> 0 AS service, value ->> 1 AS id, \
                          value ->> 2 AS at_ms FROM json_each(?1)) AS hb \
             WHERE instances.service = hb.service AND instances.id = hb.id \
               AND (instances.lease_deadline_ms IS NOT NULL OR instances.ttl_ms = 0) \
             RETURNING instances.service, instances.id",
        )
        .bind(serde_json::to_string(&rows)?)
        .fetch_all(&self.writer)
        .await?;
        Ok(super::not_renewed(batch, &stored_keys(renewed)?))
    }
}

/// Writes groups of changes, each in one transaction (see [`group_commit`]): with one
/// writer and a flush per commit, the commit is the cost worth sharing.
struct SqliteGroupWriter {
    writer: SqlitePool,
}

#[async_trait]
impl GroupWriter for SqliteGroupWriter {
    async fn write(&self, group: &[Pending]) -> StoreResult<Vec<StoreResult<Applied>>> {
        let keys: BTreeSet<Key> = group.iter().map(Pending::key).collect();
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let mut loaded = HashMap::new();
        for (service, id) in keys {
            let stored: Option<(String, Option<i64>)> = sqlx::query_as(
                "SELECT record, lease_deadline_ms FROM instances WHERE service = ?1 AND id = ?2",
            )
            .bind(service.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((stored, lease_deadline_ms)) = stored {
                let record =
                    parse_record(&stored, lease_deadline_ms).map_err(|error| error.to_string());
                loaded.insert((service, id), record);
            }
        }
        let plan = group_commit::plan(group, loaded);
        for row in &plan.rows {
            match &row.write {
                RowWrite::Insert { record, now } => save(&mut tx, record, *now, true).await?,
                RowWrite::Update {
                    record,
                    reschedule_check,
                    now,
                } => save(&mut tx, record, *now, *reschedule_check).await?,
                RowWrite::Delete => {
                    sqlx::query("DELETE FROM instances WHERE service = ?1 AND id = ?2")
                        .bind(row.key.0.as_str())
                        .bind(row.key.1.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let events = append_events(&mut tx, &plan).await?;
        tx.commit().await?;
        Ok(plan.answers(events))
    }
}

/// Writes the record and the columns derived from it.
async fn save(
    conn: &mut SqliteConnection,
    record: &InstanceRecord,
    now: DateTime<Utc>,
    reschedule_check: bool,
) -> StoreResult<()> {
    let columns = IndexedColumns::of(record);
    // next_check_ms: none without a check; `now` when asked (new or changed check) or
    // when the row had no schedule yet; otherwise the schedule the check sweep keeps.
    sqlx::query(
        "INSERT INTO instances (service, id, record, status, lease_deadline_ms, ttl_ms, \
           critical_since_ms, check_interval_ms, next_check_ms, held_deadline_ms, \
           reap_after_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE WHEN ?8 IS NULL THEN NULL ELSE ?9 END, \
           ?11, ?12) \
         ON CONFLICT (service, id) DO UPDATE SET \
           record = excluded.record, status = excluded.status, \
           lease_deadline_ms = excluded.lease_deadline_ms, ttl_ms = excluded.ttl_ms, \
           critical_since_ms = excluded.critical_since_ms, \
           check_interval_ms = excluded.check_interval_ms, \
           held_deadline_ms = excluded.held_deadline_ms, \
           reap_after_ms = excluded.reap_after_ms, \
           next_check_ms = CASE \
             WHEN excluded.check_interval_ms IS NULL THEN NULL \
             WHEN ?10 THEN excluded.next_check_ms \
             ELSE COALESCE(instances.next_check_ms, excluded.next_check_ms) END",
    )
    .bind(&record.service)
    .bind(&record.id)
    .bind(serde_json::to_string(record)?)
    .bind(columns.status)
    .bind(columns.lease_deadline_ms)
    .bind(columns.ttl_ms)
    .bind(columns.critical_since_ms)
    .bind(columns.check_interval_ms)
    .bind(millis(now))
    .bind(reschedule_check)
    .bind(columns.held_deadline_ms)
    .bind(columns.reap_after_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the group's indexes and appends its events, in the caller's write transaction.
async fn append_events(conn: &mut SqliteConnection, plan: &Plan) -> StoreResult<Vec<Event>> {
    let count = plan.event_count();
    if count == 0 {
        return Ok(Vec::new());
    }
    let last: Option<i64> = sqlx::query_scalar(
        "UPDATE registry_meta SET current_index = current_index + ?1 WHERE id = 1 \
         RETURNING current_index",
    )
    .bind(count)
    .fetch_optional(&mut *conn)
    .await?;
    let last = last.ok_or_else(missing_meta)?;
    let events = plan.events(to_index(last - count + 1)?);
    for event in &events {
        sqlx::query(
            "INSERT INTO events (idx, at_ms, service, instance, kind, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(index_column(event.index)?)
        .bind(millis(event.at))
        .bind(&event.service)
        .bind(&event.instance)
        .bind(event.kind.as_str())
        .bind(serde_json::to_string(event)?)
        .execute(&mut *conn)
        .await?;
    }
    Ok(events)
}

async fn read_current_index(conn: &mut SqliteConnection) -> StoreResult<u64> {
    let index: Option<i64> =
        sqlx::query_scalar("SELECT current_index FROM registry_meta WHERE id = 1")
            .fetch_optional(conn)
            .await?;
    to_index(index.ok_or_else(missing_meta)?)
}
