//! Coalesced heartbeats: a heartbeat on a live lease is answered from memory and written
//! with the others, one statement per flush, and at most once a second per instance.
//!
//! Heartbeats are by far the most frequent write (every instance, every third of its
//! TTL), and one on a live lease changes no status and appends no event. Writing each in a
//! transaction of its own, with its own commit, would make the database's commit rate the
//! registry's limit. So a heartbeat on a lease this process's view knows to be live is
//! queued here, shown in reads at once (the view is touched) and answered; a background
//! task writes what is due every [`FLUSH_EVERY`], with one [`Store::renew_leases`]
//! statement per [`RENEWALS_PER_STATEMENT`] instances. Several heartbeats of one instance
//! between two writes are one row.
//!
//! An instance's renewal is due [`WRITE_RENEWAL_AFTER`] after the last one written (a
//! quarter of its TTL when that is shorter), or at once when that has passed, as for a
//! client heartbeating every third of its TTL. So a client heartbeating many times a
//! second costs the database one row a second, not one per flush; the latest of its
//! heartbeats is what is written. The written lease then always runs at least three
//! quarters of its TTL past the moment its next renewal is due, so no sweep expires a
//! lease whose renewal waits here, and the database's last sign of life of a live lease
//! is never a quarter of its TTL behind, where self-preservation's silence starts at half.
//! Other replicas show a renewal once it is written. While the queue is more than half
//! full, every flush writes all of it.
//!
//! Everything else takes the full path through the store: an instance the view
//! does not know (the store, the truth, answers 404 or finds it), a lease that has run out
//! (its revival appends an event), an instance without a lease, a full queue, and every
//! heartbeat while the last flush failed, so that during a database outage clients see
//! 503 and fail over to another replica instead of being acknowledged by one that cannot
//! write.
//!
//! The store answers back the heartbeats it did not apply: the lease lapsed meanwhile
//! (expired by another replica before this view heard of it) or the instance is gone.
//! Those are replayed through the full heartbeat transition, so a lapsed lease revives
//! with its `heartbeat` event, dated when it is written.
//!
//! Durability: a queued heartbeat is acknowledged before it is written. A registry killed
//! without a graceful shutdown (SIGKILL, power loss) loses at most the renewals of the
//! last [`WRITE_RENEWAL_AFTER`] and a flush; the lease as written still runs three
//! quarters of its TTL, and the client's next heartbeat renews it again. A graceful
//! shutdown writes everything queued. Other writes are still committed before they are
//! answered.
//!
//! Lease expiry must not beat a queued heartbeat: the sweep of this process writes what is
//! due first, and every sweep (of every replica) expires only leases whose deadline passed
//! more than [`EXPIRY_GRACE`] ago, by when another replica has written what it queued.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use registry_api::{HeartbeatResponse, Instance, InstanceId, ServiceName};

use crate::store::{Heartbeat, Store, StoreResult};
use crate::view::{Key, View};

/// How often queued heartbeats that are due are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// How long after an instance's last written renewal its next one is due, at most (a
/// quarter of its TTL when that is shorter): an instance's lease is written at most this
/// often, whatever its heartbeat rate.
pub const WRITE_RENEWAL_AFTER: Duration = Duration::from_secs(1);

/// How long after its deadline a lease may be expired: one flush interval plus time for
/// the flush statement itself, so a heartbeat queued anywhere before the deadline is
/// written first.
pub const EXPIRY_GRACE: Duration = Duration::from_millis(250);

/// Most leases renewed by one statement. A renewal costs Postgres about 20 us a row (a new
/// version of the row and its lease indexes), so a statement stays well within
/// [`FLUSH_TIMEOUT`] however many instances heartbeat: a whole queue in one statement
/// would not at a million instances, and every flush would then time out and start again
/// larger.
pub const RENEWALS_PER_STATEMENT: usize = 2_000;

/// Most instances queued at once; heartbeats of further instances take the full path.
pub const MAX_QUEUED: usize = 100_000;

/// Longest a flush (or, with nothing queued, a ping) may take before it counts as failed.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// With no successful write or ping for this long the database counts as unreachable:
/// heartbeats are answered 503 at once, so clients fail over to a replica that can write
/// long before their leases run out (waiting for the connection pool would take longer).
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(1);

/// The heartbeat queue of this process and its flush.
pub struct Heartbeats {
    store: Arc<dyn Store>,
    view: Arc<View>,
    queue: Mutex<Queue>,
    /// One flush at a time (the periodic one, the sweep's and the one at shutdown).
    flushing: tokio::sync::Mutex<()>,
    /// Whether the last flush wrote; while not, heartbeats take the full path.
    writing: AtomicBool,
    /// When a flush or ping last reached the database.
    last_reached: Mutex<tokio::time::Instant>,
}

impl Heartbeats {
    pub fn new(store: Arc<dyn Store>, view: Arc<View>) -> Self {
        Self {
            store,
            view,
            queue: Mutex::new(Queue::new(MAX_QUEUED)),
            flushing: tokio::sync::Mutex::new(()),
            writing: AtomicBool::new(true),
            last_reached: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Whether the database has not been reached for [`UNREACHABLE_AFTER`].
    pub fn database_unreachable(&self) -> bool {
        self.last_reached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
            > UNREACHABLE_AFTER
    }

    fn reached(&self) {
        *self
            .last_reached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A heartbeat received at `now`: when the view knows the instance with a live lease,
    /// queues it, shows the renewed lease in reads and answers it. `None` means the
    /// heartbeat must take the full path through the store.
    pub fn try_queue(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        now: DateTime<Utc>,
    ) -> Option<HeartbeatResponse> {
        if !self.writing.load(Ordering::Acquire) {
            return None;
        }
        // Changed in place, not copied: the instance's strings, tags and metadata would be
        // allocated and freed again on every heartbeat. Queued under the view's lock, so
        // the renewal shown is the one queued.
        self.view
            .change_instance(service.as_str(), id.as_str(), |instance| {
                let Some(lease_expires_at) = renewed_lease(instance, now) else {
                    return (None, false);
                };
                if !self.queue().push(service, id, now, renewal_due(instance)) {
                    return (None, false);
                }
                // Two heartbeats of one instance in the same millisecond, or out of order.
                let newer = now > instance.last_heartbeat_at;
                if newer {
                    instance.last_heartbeat_at = now;
                    instance.lease_expires_at = Some(lease_expires_at);
                }
                let answer = HeartbeatResponse {
                    status: instance.status,
                    lease_expires_at: Some(lease_expires_at),
                };
                (Some(answer), newer)
            })
            .flatten()
    }

    /// How many instances have a heartbeat waiting to be written.
    pub fn queued(&self) -> usize {
        self.queue().len()
    }

    /// Writes the queued heartbeats `which` names as of `now`, [`RENEWALS_PER_STATEMENT`]
    /// a `renew_leases` call, and answers those it did not apply (lapsed meanwhile, or
    /// gone): the caller replays them through the full transition
    /// ([`crate::writer::Writer::flush_heartbeats`]). On failure the heartbeats not yet
    /// written stay queued (newer ones win), due at once, for the next flush, and those
    /// written stay written.
    pub async fn write_batch(
        &self,
        which: Flush,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Heartbeat>> {
        let _one_at_a_time = self.flushing.lock().await;
        let batch = self.queue().take(which, now);
        if batch.is_empty() {
            // Nothing is due (not even a failed batch): a ping tells whether the database
            // is still there, then the fast path is open again.
            within_flush_timeout(self.store.ping()).await?;
            self.reached();
            self.writing.store(true, Ordering::Release);
            return Ok(Vec::new());
        }
        // Put back unless written, also when this future is dropped halfway (the flush
        // loop stops at shutdown): the last flush must still find them.
        let mut unwritten = Unwritten {
            heartbeats: self,
            batch,
        };
        let mut not_applied = Vec::new();
        while !unwritten.batch.is_empty() {
            let rest = unwritten.batch.len().saturating_sub(RENEWALS_PER_STATEMENT);
            let chunk = &unwritten.batch[rest..];
            not_applied.extend(within_flush_timeout(self.store.renew_leases(chunk)).await?);
            unwritten.batch.truncate(rest);
            self.reached();
        }
        self.writing.store(true, Ordering::Release);
        Ok(not_applied)
    }

    /// Puts back heartbeats that could not be written, and sends heartbeats to the full
    /// path until a flush succeeds.
    pub fn keep(&self, batch: Vec<Heartbeat>) {
        self.writing.store(false, Ordering::Release);
        let dropped = self.queue().put_back(batch);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "heartbeat queue full: dropped the oldest unwritten heartbeats"
            );
        }
    }
}

/// A batch being written: put back into the queue when dropped unless emptied first.
struct Unwritten<'a> {
    heartbeats: &'a Heartbeats,
    batch: Vec<Heartbeat>,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        if !self.batch.is_empty() {
            self.heartbeats.keep(std::mem::take(&mut self.batch));
        }
    }
}

/// Runs a store call within [`FLUSH_TIMEOUT`]; running out counts as the database being
/// unavailable.
async fn within_flush_timeout<T>(
    call: impl std::future::Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    tokio::time::timeout(FLUSH_TIMEOUT, call)
        .await
        .unwrap_or(Err(crate::store::StoreError::Unavailable(
            sqlx::Error::PoolTimedOut,
        )))
}

/// Which queued heartbeats a flush writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Those due (all of them while the queue is more than half full): the periodic
    /// flush and the sweep's.
    Due,
    /// All of them: at shutdown.
    All,
}

/// When a heartbeat on `instance` is due to be written: [`WRITE_RENEWAL_AFTER`] (or a
/// quarter of the TTL) after its last renewal this view shows. The view shows a queued
/// renewal too, but the queue keeps the earliest time due of an instance; when nothing
/// of the instance is queued, the renewal shown is written (or being written).
fn renewal_due(instance: &Instance) -> DateTime<Utc> {
    let quarter_ttl = Duration::from_secs(u64::from(instance.ttl_seconds)) / 4;
    let after = chrono::Duration::from_std(WRITE_RENEWAL_AFTER.min(quarter_ttl))
        .unwrap_or_else(|_| chrono::Duration::zero());
    instance.last_heartbeat_at + after
}

/// The lease a heartbeat at `now` renews, when the instance has a lease that has not run
/// out and reported nothing a heartbeat would clear (`None`: the full path decides).
fn renewed_lease(instance: &Instance, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let live = instance.lease_expires_at.is_some_and(|until| until > now);
    let nothing_reported = instance.lease_status.is_none() && instance.lease_output.is_none();
    (instance.ttl_seconds > 0 && live && nothing_reported)
        .then(|| now + chrono::Duration::seconds(i64::from(instance.ttl_seconds)))
}

/// Heartbeats waiting to be written: the newest per instance, with when it is due, at
/// most `capacity` instances.
#[derive(Debug)]
struct Queue {
    /// Keyed by the instance's service and id held inline, as the view keys them
    /// ([`crate::view::Key`]): a heartbeat of a queued instance finds it without reading
    /// either name from memory of its own, and copies neither. Hashed with foldhash,
    /// several times cheaper than std's SipHash on the two names of every heartbeat; its
    /// seed is random per process too.
    pending: HashMap<(Key, Key), Queued, foldhash::fast::RandomState>,
    capacity: usize,
}

/// An instance's newest heartbeat and when it is to be written at the latest.
#[derive(Clone, Debug)]
struct Queued {
    newest: Heartbeat,
    due: DateTime<Utc>,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Self {
            pending: HashMap::default(),
            capacity,
        }
    }

    fn len(&self) -> usize {
        self.pending.len()
    }

    /// Queues a heartbeat of `service`'s instance `id` at `at`, to be written by `due`;
    /// an instance already queued keeps its newest time and its earliest time due. False
    /// when the instance is not queued and there is no room.
    fn push(
        &mut self,
        service: &ServiceName,
        id: &InstanceId,
        at: DateTime<Utc>,
        due: DateTime<Utc>,
    ) -> bool {
        let room = self.pending.len() < self.capacity;
        let key = (Key::from(service.as_str()), Key::from(id.as_str()));
        match self.pending.entry(key) {
            Entry::Occupied(mut queued) => {
                let queued = queued.get_mut();
                queued.newest.at = queued.newest.at.max(at);
                queued.due = queued.due.min(due);
                true
            }
            Entry::Vacant(slot) if room => {
                slot.insert(Queued {
                    newest: Heartbeat {
                        service: service.clone(),
                        id: id.clone(),
                        at,
                    },
                    due,
                });
                true
            }
            Entry::Vacant(_) => false,
        }
    }

    /// What `which` names as of `now`, taken out of the queue.
    fn take(&mut self, which: Flush, now: DateTime<Utc>) -> Vec<Heartbeat> {
        let all = which == Flush::All || self.pending.len() > self.capacity / 2;
        self.pending
            .extract_if(|_, queued| all || queued.due <= now)
            .map(|(_, queued)| queued.newest)
            .collect()
    }

    /// Puts back a batch that was not written, due at once: heartbeats queued since are
    /// newer and win. Answers how many did not fit.
    fn put_back(&mut self, batch: Vec<Heartbeat>) -> usize {
        batch
            .into_iter()
            .filter(|h| !self.push(&h.service, &h.id, h.at, h.at))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use registry_api::{InstanceId, InstanceSpec, Reason, ServiceName, Status};

    use crate::clock::Clock;
    use crate::lifecycle::{self, Mutation};
    use crate::store::test_store::TestStore;
    use crate::writer::Writer;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).expect("valid time")
    }

    fn sum() -> ServiceName {
        ServiceName::parse("sum").expect("name")
    }

    fn instance_id(raw: &str) -> InstanceId {
        InstanceId::parse(raw).expect("id")
    }

    /// Queues `beat`, to be written by `due`.
    fn push(queue: &mut Queue, beat: Heartbeat, due: DateTime<Utc>) -> bool {
        queue.push(&beat.service, &beat.id, beat.at, due)
    }

    fn beat(id: &str, at: DateTime<Utc>) -> Heartbeat {
        Heartbeat {
            service: sum(),
            id: instance_id(id),
            at,
        }
    }

    fn sorted(mut beats: Vec<Heartbeat>) -> Vec<Heartbeat> {
        beats.sort_by(|a, b| a.id.cmp(&b.id));
        beats
    }

    #[test]
    fn the_queue_keeps_the_newest_heartbeat_per_instance() {
        let mut queue = Queue::new(10);
        assert!(push(&mut queue, beat("a", t(5)), t(5)));
        assert!(push(&mut queue, beat("a", t(9)), t(9)));
        assert!(
            push(&mut queue, beat("a", t(7)), t(7)),
            "late, but the instance is queued"
        );
        assert!(push(&mut queue, beat("b", t(1)), t(1)));
        assert_eq!(queue.len(), 2);
        assert_eq!(
            sorted(queue.take(Flush::All, t(0))),
            vec![beat("a", t(9)), beat("b", t(1))]
        );
        assert_eq!(queue.len(), 0, "taking empties the queue");
        assert_eq!(queue.take(Flush::All, t(0)), vec![]);
    }

    #[test]
    fn a_full_queue_refuses_new_instances_but_renews_queued_ones() {
        let mut queue = Queue::new(2);
        assert!(push(&mut queue, beat("a", t(1)), t(1)));
        assert!(push(&mut queue, beat("b", t(1)), t(1)));
        assert!(
            !push(&mut queue, beat("c", t(2)), t(2)),
            "no room for a third instance"
        );
        assert!(
            push(&mut queue, beat("a", t(3)), t(3)),
            "a queued instance still moves"
        );
        assert_eq!(
            sorted(queue.take(Flush::All, t(0))),
            vec![beat("a", t(3)), beat("b", t(1))]
        );
    }

    #[test]
    fn a_batch_put_back_loses_to_newer_heartbeats_and_to_the_bound() {
        let mut queue = Queue::new(3);
        push(&mut queue, beat("a", t(1)), t(1));
        push(&mut queue, beat("b", t(1)), t(1));
        let failed = queue.take(Flush::All, t(0));
        // Queued while the batch was being written.
        push(&mut queue, beat("a", t(5)), t(5));
        push(&mut queue, beat("x", t(5)), t(5));

        let dropped = queue.put_back(failed);

        assert_eq!(dropped, 0);
        assert_eq!(
            sorted(queue.take(Flush::All, t(0))),
            vec![beat("a", t(5)), beat("b", t(1)), beat("x", t(5))]
        );

        push(&mut queue, beat("x", t(6)), t(6));
        push(&mut queue, beat("y", t(6)), t(6));
        push(&mut queue, beat("z", t(6)), t(6));
        assert_eq!(
            queue.put_back(vec![beat("a", t(1)), beat("x", t(1))]),
            1,
            "no room for a"
        );
        assert_eq!(
            sorted(queue.take(Flush::All, t(0))),
            vec![beat("x", t(6)), beat("y", t(6)), beat("z", t(6))]
        );
    }

    /// An instance with a `ttl_seconds` lease running until `lease_expires_at`.
    fn leased_instance(ttl_seconds: u32, lease_expires_at: Option<DateTime<Utc>>) -> Instance {
        Instance {
            id: "a".into(),
            service: "sum".into(),
            url: "http://10.0.0.1:4040".into(),
            status: Status::Passing,
            tags: Vec::new(),
            metadata: std::collections::BTreeMap::new(),
            ttl_seconds,
            check: None,
            registered_at: t(0),
            last_heartbeat_at: t(0),
            lease_expires_at,
            status_changed_at: t(0),
            last_check: None,
            lease_held: false,
            deregister_critical_after: None,
            lease_status: None,
            lease_output: None,
            maintenance_reason: None,
        }
    }

    #[test]
    fn a_flush_takes_what_is_due_and_an_instance_keeps_its_earliest_time_due() {
        let mut queue = Queue::new(10);
        push(&mut queue, beat("a", t(1)), t(100));
        push(&mut queue, beat("b", t(1)), t(500));
        push(&mut queue, beat("b", t(50)), t(900));
        push(&mut queue, beat("c", t(1)), t(1_000));
        push(&mut queue, beat("c", t(60)), t(300));

        assert_eq!(queue.take(Flush::Due, t(99)), vec![], "nothing due yet");
        assert_eq!(
            sorted(queue.take(Flush::Due, t(300))),
            vec![beat("a", t(1)), beat("c", t(60))],
            "c was due by its first heartbeat's time, and goes with its newest"
        );
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.take(Flush::Due, t(500)), vec![beat("b", t(50))]);
    }

    #[test]
    fn a_queue_more_than_half_full_is_taken_whole() {
        let mut queue = Queue::new(4);
        push(&mut queue, beat("a", t(1)), t(1_000));
        push(&mut queue, beat("b", t(1)), t(1_000));
        assert_eq!(
            queue.take(Flush::Due, t(0)),
            vec![],
            "half full: nothing due"
        );
        push(&mut queue, beat("c", t(1)), t(1_000));
        assert_eq!(queue.take(Flush::Due, t(0)).len(), 3, "over half full");
        push(&mut queue, beat("d", t(1)), t(1_000));
        assert_eq!(queue.take(Flush::All, t(0)), vec![beat("d", t(1))]);
    }

    #[test]
    fn a_failed_batch_comes_back_due_at_once() {
        let mut queue = Queue::new(10);
        push(&mut queue, beat("a", t(1)), t(1_000));
        let failed = queue.take(Flush::All, t(0));
        queue.put_back(failed);
        assert_eq!(queue.take(Flush::Due, t(1)), vec![beat("a", t(1))]);
    }

    #[test]
    fn a_renewal_is_due_a_second_after_the_last_or_a_quarter_of_a_short_ttl() {
        let instance = |ttl_seconds| Instance {
            ttl_seconds,
            last_heartbeat_at: t(7_000),
            ..leased_instance(ttl_seconds, Some(t(20_000)))
        };
        assert_eq!(renewal_due(&instance(30)), t(8_000));
        assert_eq!(renewal_due(&instance(4)), t(8_000));
        assert_eq!(renewal_due(&instance(2)), t(7_500));
        assert_eq!(renewal_due(&instance(1)), t(7_250));
    }

    #[test]
    fn only_a_lease_that_has_not_run_out_is_renewed_in_memory() {
        assert_eq!(
            renewed_lease(&leased_instance(10, Some(t(10_000))), t(4_000)),
            Some(t(14_000))
        );
        assert_eq!(
            renewed_lease(&leased_instance(10, Some(t(10_000))), t(10_000)),
            None
        );
        assert_eq!(
            renewed_lease(&leased_instance(0, None), t(1)),
            None,
            "no lease"
        );
    }

    /// A registry's store and view with instances `i0..i{count}` registered with `ttl` at
    /// `now`.
    async fn setup_at(
        count: usize,
        ttl: u32,
        now: DateTime<Utc>,
    ) -> (Arc<TestStore>, Arc<View>, Writer) {
        let store = Arc::new(TestStore::new().await);
        for i in 0..count {
            let mut raw = InstanceSpec::new("http://10.0.0.1:4040");
            raw.ttl_seconds = Some(ttl);
            let spec = raw
                .validate(
                    ServiceName::parse("sum").expect("name"),
                    InstanceId::parse(&format!("i{i}")).expect("id"),
                    10,
                )
                .expect("valid");
            store
                .apply(
                    &sum(),
                    &instance_id(&format!("i{i}")),
                    now,
                    crate::store::Expect::Anything,
                    Box::new(move |old| lifecycle::register(old, &spec, now)),
                )
                .await
                .expect("register");
        }
        let view = Arc::new(View::load(store.as_ref()).await.expect("view"));
        let writer = Writer::new(store.clone(), view.clone(), Clock::default());
        (store, view, writer)
    }

    async fn setup(count: usize, ttl: u32) -> (Arc<TestStore>, Arc<View>, Writer) {
        setup_at(count, ttl, Clock::default().now()).await
    }

    async fn stored(store: &TestStore, id: &str) -> crate::record::InstanceRecord {
        store
            .snapshot()
            .await
            .expect("snapshot")
            .records
            .into_iter()
            .find(|r| r.id == id)
            .expect("stored")
    }

    #[tokio::test]
    async fn many_heartbeats_are_one_statement_and_reads_see_them_at_once() {
        let (store, view, heartbeats) = setup(50, 10).await;
        let at = Clock::default().now() + chrono::Duration::milliseconds(3);
        let written_before = stored(&store, "i7").await;

        for round in 0..3 {
            for i in 0..50 {
                let answer = heartbeats
                    .queue_heartbeat(
                        &sum(),
                        &instance_id(&format!("i{i}")),
                        at + chrono::Duration::milliseconds(round),
                    )
                    .expect("a live lease is queued");
                assert_eq!(answer.status, Status::Passing);
            }
        }
        assert_eq!(heartbeats.queued_heartbeats(), 50, "one per instance");
        let latest = at + chrono::Duration::milliseconds(2);
        let shown = view.instance("sum", "i7").expect("known");
        assert_eq!(shown.last_heartbeat_at, latest, "reads see it at once");
        assert_eq!(
            shown.lease_expires_at,
            Some(latest + chrono::Duration::seconds(10))
        );
        assert_eq!(
            stored(&store, "i7").await,
            written_before,
            "not written yet"
        );

        heartbeats
            .flush_heartbeats(Flush::All)
            .await
            .expect("flush");

        assert_eq!(store.renewals(), 1);
        assert_eq!(heartbeats.queued_heartbeats(), 0);
        let written = stored(&store, "i7").await;
        assert_eq!(written.last_heartbeat_at, latest);
        assert_eq!(written.to_instance(), shown);
        assert_eq!(store.current_index().await.expect("index"), 50, "no event");
    }

    #[tokio::test]
    async fn a_renewal_is_written_once_due_with_the_latest_heartbeat() {
        let clock = Clock::default();
        let (store, view, _) = setup_at(1, 30, clock.now()).await;
        let heartbeats = Writer::new(store.clone(), view, clock.clone());
        let beat = |at| {
            heartbeats
                .queue_heartbeat(&sum(), &instance_id("i0"), at)
                .expect("a live lease is queued");
        };
        let flush = || heartbeats.flush_heartbeats(Flush::Due);

        beat(clock.now());
        flush().await.expect("flush");
        clock.advance(std::time::Duration::from_millis(600));
        let latest = clock.now();
        beat(latest);
        flush().await.expect("flush");
        assert_eq!(
            store.renewals(),
            0,
            "not due within a second of the registration"
        );
        assert_eq!(heartbeats.queued_heartbeats(), 1);

        clock.advance(std::time::Duration::from_millis(400));
        flush().await.expect("flush");
        assert_eq!(store.renewals(), 1, "due a second after the registration");
        assert_eq!(heartbeats.queued_heartbeats(), 0);
        assert_eq!(stored(&store, "i0").await.last_heartbeat_at, latest);

        // A second after the renewal written, the next heartbeat is due at once.
        clock.advance(std::time::Duration::from_secs(5));
        let later = clock.now();
        beat(later);
        flush().await.expect("flush");
        assert_eq!(store.renewals(), 2);
        assert_eq!(stored(&store, "i0").await.last_heartbeat_at, later);
    }

    #[tokio::test]
    async fn a_large_queue_is_written_a_bounded_number_per_statement() {
        let count = 2 * RENEWALS_PER_STATEMENT + 1;
        let (store, _view, heartbeats) = setup(count, 10).await;
        let at = Clock::default().now() + chrono::Duration::milliseconds(3);
        let queue_all = || {
            for i in 0..count {
                heartbeats
                    .queue_heartbeat(&sum(), &instance_id(&format!("i{i}")), at)
                    .expect("queued");
            }
        };
        queue_all();
        // One statement goes through, the next is held: what it wrote stays written, the
        // rest stays queued when the flush is stopped.
        let gate = store.hold_renewals();
        gate.add_permits(1);
        let stopped = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            heartbeats.flush_heartbeats(Flush::All),
        )
        .await;
        assert!(stopped.is_err(), "the second statement was held");
        assert_eq!(store.renewals(), 2);
        assert_eq!(
            heartbeats.queued_heartbeats(),
            count - RENEWALS_PER_STATEMENT
        );

        gate.add_permits(10);
        heartbeats
            .flush_heartbeats(Flush::All)
            .await
            .expect("flush");
        assert_eq!(store.renewals(), 4, "the rest in two more statements");
        assert_eq!(heartbeats.queued_heartbeats(), 0);
        for i in [0, RENEWALS_PER_STATEMENT, count - 1] {
            assert_eq!(stored(&store, &format!("i{i}")).await.last_heartbeat_at, at);
        }
    }

    #[tokio::test]
    async fn unknown_lapsed_and_leaseless_instances_take_the_full_path() {
        let (store, view, heartbeats) = setup(1, 1).await;
        let now = Clock::default().now();
        assert_eq!(
            heartbeats.queue_heartbeat(&sum(), &instance_id("ghost"), now),
            None
        );
        let deadline = view
            .instance("sum", "i0")
            .and_then(|i| i.lease_expires_at)
            .expect("a lease");
        assert_eq!(
            heartbeats.queue_heartbeat(&sum(), &instance_id("i0"), deadline),
            None
        );
        drop(store);

        let (_, _, leaseless) = setup(1, 0).await;
        assert_eq!(
            leaseless.queue_heartbeat(&sum(), &instance_id("i0"), now),
            None
        );
        assert_eq!(leaseless.queued_heartbeats(), 0);
    }

    #[tokio::test]
    async fn a_lease_that_lapsed_before_the_flush_revives_with_its_event() {
        // Registered a while ago: the view still shows the lease live at `received`, but
        // by now another replica has expired it, before this one flushes.
        let registered = Clock::default().now() - chrono::Duration::seconds(30);
        let (store, view, heartbeats) = setup_at(1, 10, registered).await;
        let received = registered + chrono::Duration::seconds(9);
        heartbeats
            .queue_heartbeat(&sum(), &instance_id("i0"), received)
            .expect("queued");
        let later = registered + chrono::Duration::seconds(11);
        let expired = store
            .apply(
                &sum(),
                &instance_id("i0"),
                later,
                crate::store::Expect::Anything,
                Box::new(move |old| {
                    old.map_or(Mutation::Unchanged, |o| lifecycle::expire_lease(o, later))
                }),
            )
            .await
            .expect("expire");
        assert_eq!(expired.event.map(|e| e.reason), Some(Reason::LeaseExpired));

        heartbeats
            .flush_heartbeats(Flush::All)
            .await
            .expect("flush");

        let record = stored(&store, "i0").await;
        assert_eq!(record.status, Status::Passing);
        let events = store.events_after(1, None, 10).await.expect("events");
        let reasons: Vec<_> = events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, [Reason::LeaseExpired, Reason::Heartbeat]);
        assert!(
            events[1].at >= events[0].at,
            "the revival follows the expiry"
        );
        assert_eq!(view.index(), 3, "the view caught up");
        assert_eq!(
            view.instance("sum", "i0").map(|i| i.status),
            Some(Status::Passing)
        );
    }

    #[tokio::test]
    async fn a_flush_stopped_halfway_keeps_its_batch_for_the_next() {
        let (store, _view, heartbeats) = setup(1, 10).await;
        let now = Clock::default().now();
        heartbeats
            .queue_heartbeat(&sum(), &instance_id("i0"), now)
            .expect("queued");
        let gate = store.hold_renewals();
        let stopped = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            heartbeats.flush_heartbeats(Flush::All),
        )
        .await;
        assert!(stopped.is_err(), "the flush was held");
        assert_eq!(heartbeats.queued_heartbeats(), 1, "the batch is back");

        gate.add_permits(1);
        heartbeats
            .flush_heartbeats(Flush::All)
            .await
            .expect("flush");
        assert_eq!(heartbeats.queued_heartbeats(), 0);
        assert_eq!(stored(&store, "i0").await.last_heartbeat_at, now);
    }

    #[tokio::test]
    async fn a_batch_survives_an_outage_and_heartbeats_meanwhile_take_the_full_path() {
        let (store, _view, heartbeats) = setup(2, 10).await;
        let now = Clock::default().now();
        heartbeats
            .queue_heartbeat(&sum(), &instance_id("i0"), now)
            .expect("queued");
        store.down.store(true, Ordering::SeqCst);

        assert!(heartbeats.flush_heartbeats(Flush::All).await.is_err());
        assert_eq!(heartbeats.queued_heartbeats(), 1, "the batch is kept");
        assert_eq!(
            heartbeats.queue_heartbeat(&sum(), &instance_id("i1"), now),
            None,
            "while the store cannot be written, callers must see it"
        );
        assert!(heartbeats.flush_heartbeats(Flush::All).await.is_err());
        assert_eq!(heartbeats.queued_heartbeats(), 1);

        store.down.store(false, Ordering::SeqCst);
        heartbeats
            .flush_heartbeats(Flush::All)
            .await
            .expect("flush");
        assert_eq!(heartbeats.queued_heartbeats(), 0);
        assert_eq!(stored(&store, "i0").await.last_heartbeat_at, now);
        assert!(
            heartbeats
                .queue_heartbeat(&sum(), &instance_id("i1"), now)
                .is_some(),
            "the fast path is back"
        );
    }
}
