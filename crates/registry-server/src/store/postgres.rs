//! Postgres implementation of [`Store`]: the production store, shared by every replica.
//!
//! Several replicas write at once, so the ordering guarantees come from Postgres locks:
//! the instance row (or, for an instance that does not exist yet, a transaction-scoped
//! advisory lock on its key) serializes changes of one instance, and the single
//! `registry_meta` row, locked by the index increment until commit, makes transactions
//! commit in index order. Locks are always taken in that order, so writers cannot deadlock.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use registry_api::{Event, Instance};
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{
    Applied, ClaimedCheck, HistoryStart, IndexedColumns, Notification, Snapshot, Store, StoreError,
    StoreResult, Transition, after_column, ensure_key, from_millis, kind_str, lease_payloads,
    make_event, millis, missing_meta, parse_events, parse_lease_payload, parse_record, to_index,
};
use crate::lifecycle::{Change, Mutation};
use crate::record::InstanceRecord;

/// Enough for the request handlers and the background sweeps of one replica without
/// exhausting the server's `max_connections` when several replicas run.
const MAX_CONNECTIONS: u32 = 10;

/// During a database outage callers should hear about it quickly (and answer 503) rather
/// than queue behind a pool that cannot connect.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A snapshot in which every committed index is visible together with all lower ones.
const BEGIN_CONSISTENT_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// The channel the `events` trigger (migration 0002) notifies with each new index.
const EVENTS_CHANNEL: &str = "registry_events";

/// The channel `renew_leases` notifies with the leases it renewed (it appends no event,
/// so the trigger on `events` says nothing of them).
const LEASES_CHANNEL: &str = "registry_leases";

/// The store backed by a Postgres database.
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects (one connection is opened now, so a wrong URL fails at start).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
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

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> StoreResult<()> {
        // The migrator holds an advisory lock while it runs: replicas starting together
        // wait for each other instead of applying a migration twice.
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn change_feed(&self) -> StoreResult<Option<Box<dyn super::ChangeFeed>>> {
        let feed = PgChangeFeed::subscribe(&self.pool.connect_options()).await?;
        Ok(Some(Box::new(feed)))
    }

    async fn apply(
        &self,
        service: &str,
        id: &str,
        now: DateTime<Utc>,
        transition: Transition,
    ) -> StoreResult<Applied> {
        let mut tx = self.pool.begin().await?;
        let mut old = load_for_update(&mut tx, service, id).await?;
        if old.is_none() {
            // Two writers creating the same instance both find no row to lock. This lock,
            // held until commit, makes the second one wait; its second read (a new
            // statement, so a new snapshot) then sees the first one's row.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
                .bind(service)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            old = load_for_update(&mut tx, service, id).await?;
        }
        let existed = old.is_some();
        let applied = match transition(old.as_ref()) {
            Mutation::Unchanged => Applied {
                existed,
                record: old,
                event: None,
            },
            Mutation::Save {
                record,
                change,
                reschedule_check,
            } => {
                ensure_key(&record, service, id)?;
                save(&mut tx, &record, now, reschedule_check).await?;
                let event = match change {
                    Some(change) => Some(append_event(&mut tx, now, &change, &record).await?),
                    None => None,
                };
                Applied {
                    existed,
                    record: Some(record),
                    event,
                }
            }
            Mutation::Delete { change } => match old {
                // Nothing to remove: a removal of an unknown instance is no change.
                None => Applied {
                    existed,
                    record: None,
                    event: None,
                },
                Some(old) => {
                    sqlx::query("DELETE FROM instances WHERE service = $1 AND id = $2")
                        .bind(service)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    let event = append_event(&mut tx, now, &change, &old).await?;
                    Applied {
                        existed,
                        record: None,
                        event: Some(event),
                    }
                }
            },
        };
        tx.commit().await?;
        Ok(applied)
    }

    async fn snapshot(&self) -> StoreResult<Snapshot> {
        let mut tx = self.pool.begin_with(BEGIN_CONSISTENT_READ).await?;
        let index = read_current_index(&mut tx).await?;
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT record::text FROM instances ORDER BY service, id")
                .fetch_all(&mut *tx)
                .await?;
        let latest: Vec<(String, i64)> =
            sqlx::query_as("SELECT service, MAX(idx) FROM events GROUP BY service")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let records = rows
            .iter()
            .map(|row| parse_record(row))
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
        service: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body::text FROM events \
             WHERE idx > $1 AND ($2::text IS NULL OR service = $2) \
             ORDER BY idx LIMIT $3",
        )
        .bind(after_column(after))
        .bind(service)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        parse_events(&rows)
    }

    async fn history(
        &self,
        service: &str,
        instance: Option<&str>,
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
        .bind(service)
        .bind(instance)
        .bind(since.map(millis))
        .bind(until.map(millis))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        parse_events(&rows)
    }

    async fn state_at(&self, at: DateTime<Utc>) -> StoreResult<(u64, Vec<Instance>)> {
        let mut tx = self.pool.begin_with(BEGIN_CONSISTENT_READ).await?;
        // Pruning may have deleted the events that led to the moment where history now
        // starts (a removal, say), so from that moment on its index is a lower bound.
        let index: i64 = sqlx::query_scalar(
            "SELECT GREATEST( \
               (SELECT COALESCE(MAX(idx), 0) FROM events WHERE at_ms <= $1), \
               (SELECT CASE WHEN history_start_ms <= $1 THEN history_start_index ELSE 0 END \
                FROM registry_meta WHERE id = 1))",
        )
        .bind(millis(at))
        .fetch_one(&mut *tx)
        .await?;
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body::text FROM ( \
               SELECT DISTINCT ON (service, instance) kind, body FROM events \
               WHERE at_ms <= $1 ORDER BY service, instance, idx DESC \
             ) latest WHERE kind <> 'removed'",
        )
        .bind(millis(at))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let instances = parse_events(&rows)?
            .into_iter()
            .map(|event| event.snapshot)
            .collect();
        Ok((to_index(index)?, instances))
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

    async fn prune_history(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let before_ms = millis(before);
        let mut tx = self.pool.begin().await?;
        let last_pruned: Option<i64> =
            sqlx::query_scalar("SELECT MAX(idx) FROM events WHERE at_ms < $1")
                .bind(before_ms)
                .fetch_one(&mut *tx)
                .await?;
        let Some(last_pruned) = last_pruned else {
            return Ok(0);
        };
        // The latest event of an instance that still existed at `before` is its state
        // there; state_at needs it for every later moment until the instance changes.
        let deleted = sqlx::query(
            "DELETE FROM events WHERE at_ms < $1 AND idx NOT IN ( \
               SELECT idx FROM ( \
                 SELECT DISTINCT ON (service, instance) idx, kind FROM events \
                 WHERE at_ms < $1 ORDER BY service, instance, idx DESC \
               ) latest WHERE kind <> 'removed')",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Last, so the meta row (which every change locks) is held only briefly; GREATEST
        // because a replica pruning with an older `before` must not move the start back.
        sqlx::query(
            "UPDATE registry_meta SET \
               history_start_index = GREATEST(history_start_index, $1), \
               history_start_ms = GREATEST(history_start_ms, $2) \
             WHERE id = 1",
        )
        .bind(last_pruned)
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
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
    ) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query_as(
            "SELECT i.service, i.id FROM instances i, registry_meta m \
             WHERE m.id = 1 AND i.lease_deadline_ms <= $1 \
             AND (m.recovered_ms IS NULL OR m.recovered_ms + i.ttl_ms <= $1) \
             ORDER BY i.lease_deadline_ms LIMIT $2",
        )
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn reapable(
        &self,
        critical_since: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query_as(
            // Time the registry itself was away does not count as critical time.
            "SELECT service, id FROM instances WHERE critical_since_ms <= $1 \
             AND COALESCE((SELECT recovered_ms FROM registry_meta WHERE id = 1), 0) <= $1 \
             ORDER BY critical_since_ms LIMIT $2",
        )
        .bind(millis(critical_since))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn claim_due_checks(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedCheck>> {
        // SKIP LOCKED: replicas sweeping at once each take different rows, and a row
        // being changed right now is simply claimed by the next sweep.
        let rows: Vec<String> = sqlx::query_scalar(
            "UPDATE instances SET next_check_ms = $1 + check_interval_ms \
             WHERE (service, id) IN ( \
               SELECT service, id FROM instances WHERE next_check_ms <= $1 \
               ORDER BY next_check_ms LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING record::text",
        )
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| parse_record(row).map(|record| ClaimedCheck { record }))
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
        let services: Vec<String> = batch.iter().map(|h| h.service.clone()).collect();
        let ids: Vec<String> = batch.iter().map(|h| h.id.clone()).collect();
        let at_ms: Vec<i64> = batch.iter().map(|h| millis(h.at)).collect();
        let at_text: Vec<String> = batch.iter().map(|h| super::json_time(h.at)).collect();
        // `live` locks the rows in key order before any is updated: two replicas renewing
        // overlapping batches then wait for each other instead of deadlocking. The lease
        // is `at + ttl` of the row itself, written as serde writes a time (`json_time`:
        // the fraction only when not zero); the lease never moves back. A lapsed lease
        // (`lease_deadline_ms` NULL with a ttl) is left to the full heartbeat transition.
        // `moved`: the record now holds this heartbeat (not an older one's later lease).
        let mut tx = self.pool.begin().await?;
        let renewed: Vec<(String, String, i64, bool)> = sqlx::query_as(
            "WITH hb AS ( \
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]) \
                 AS t(service, id, at_ms, at_text)), \
             live AS MATERIALIZED ( \
               SELECT i.service, i.id, hb.at_ms, hb.at_text FROM instances i \
               JOIN hb ON i.service = hb.service AND i.id = hb.id \
               WHERE i.lease_deadline_ms IS NOT NULL OR i.ttl_ms = 0 \
               ORDER BY i.service, i.id FOR UPDATE OF i) \
             UPDATE instances AS i SET \
               record = CASE \
                 WHEN i.ttl_ms = 0 THEN \
                   jsonb_set(i.record, '{last_heartbeat_at}', to_jsonb(live.at_text)) \
                 WHEN live.at_ms + i.ttl_ms < i.lease_deadline_ms THEN i.record \
                 ELSE jsonb_set( \
                   jsonb_set(i.record, '{last_heartbeat_at}', to_jsonb(live.at_text)), \
                   '{lease_expires_at}', to_jsonb( \
                     to_char(to_timestamp((live.at_ms + i.ttl_ms) / 1000) AT TIME ZONE 'UTC', \
                             'YYYY-MM-DD\"T\"HH24:MI:SS') \
                     || CASE WHEN (live.at_ms + i.ttl_ms) % 1000 = 0 THEN '' \
                        ELSE '.' || lpad(((live.at_ms + i.ttl_ms) % 1000)::text, 3, '0') END \
                     || 'Z')) END, \
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
        .bind(at_text)
        .fetch_all(&mut *tx)
        .await?;
        // The other replicas show these renewals too (DESIGN section 5: within 200 ms).
        // The payload carries the heartbeat times, so receivers need no read; several
        // payloads when the batch is large. Delivered at commit, not at all on rollback.
        let moved: Vec<super::Heartbeat> = renewed
            .iter()
            .filter(|(_, _, _, moved)| *moved)
            .map(|(service, id, at_ms, _)| {
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
        let renewed: Vec<(String, String)> = renewed
            .into_iter()
            .map(|(service, id, _, _)| (service, id))
            .collect();
        Ok(super::not_renewed(batch, &renewed))
    }
}

async fn load_for_update(
    conn: &mut PgConnection,
    service: &str,
    id: &str,
) -> StoreResult<Option<InstanceRecord>> {
    let row: Option<String> = sqlx::query_scalar(
        "SELECT record::text FROM instances WHERE service = $1 AND id = $2 FOR UPDATE",
    )
    .bind(service)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_deref().map(parse_record).transpose()
}

/// Writes the record and the columns derived from it.
async fn save(
    conn: &mut PgConnection,
    record: &InstanceRecord,
    now: DateTime<Utc>,
    reschedule_check: bool,
) -> StoreResult<()> {
    let columns = IndexedColumns::of(record);
    // next_check_ms: none without a check; `now` when asked (new or changed check) or
    // when the row had no schedule yet; otherwise the schedule the check sweep keeps.
    sqlx::query(
        "INSERT INTO instances (service, id, record, status, lease_deadline_ms, ttl_ms, \
           critical_since_ms, check_interval_ms, next_check_ms) \
         VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, CASE WHEN $8 IS NULL THEN NULL ELSE $9 END) \
         ON CONFLICT (service, id) DO UPDATE SET \
           record = EXCLUDED.record, status = EXCLUDED.status, \
           lease_deadline_ms = EXCLUDED.lease_deadline_ms, ttl_ms = EXCLUDED.ttl_ms, \
           critical_since_ms = EXCLUDED.critical_since_ms, \
           check_interval_ms = EXCLUDED.check_interval_ms, \
           next_check_ms = CASE \
             WHEN EXCLUDED.check_interval_ms IS NULL THEN NULL \
             WHEN $10 THEN EXCLUDED.next_check_ms \
             ELSE COALESCE(instances.next_check_ms, EXCLUDED.next_check_ms) END",
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
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the next index and appends the event. The meta row stays locked until commit,
/// so the next writer gets its index only after this one is visible.
async fn append_event(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    change: &Change,
    snapshot: &InstanceRecord,
) -> StoreResult<Event> {
    let index: Option<i64> = sqlx::query_scalar(
        "UPDATE registry_meta SET current_index = current_index + 1 WHERE id = 1 \
         RETURNING current_index",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let index = index.ok_or_else(missing_meta)?;
    let event = make_event(to_index(index)?, now, change, snapshot);
    sqlx::query(
        "INSERT INTO events (idx, at_ms, service, instance, kind, body) \
         VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
    )
    .bind(index)
    .bind(millis(now))
    .bind(&event.service)
    .bind(&event.instance)
    .bind(kind_str(event.kind))
    .bind(serde_json::to_string(&event)?)
    .execute(conn)
    .await?;
    Ok(event)
}

async fn read_current_index(conn: &mut PgConnection) -> StoreResult<u64> {
    let index: Option<i64> =
        sqlx::query_scalar("SELECT current_index FROM registry_meta WHERE id = 1")
            .fetch_optional(conn)
            .await?;
    to_index(index.ok_or_else(missing_meta)?)
}
