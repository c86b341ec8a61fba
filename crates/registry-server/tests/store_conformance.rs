//! The conformance suite of [`Store`]: every test is written once and runs against both
//! implementations, each on a fresh database, so that Postgres and SQLite cannot drift
//! apart. Postgres is found through `DATABASE_URL` (see `registry_server::testing`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Duration, Utc};
use registry_api::{
    CheckSpec, EventKind, Instance, InstanceId, InstanceSpec, Reason, ServiceName, Status,
    Validated,
};
use registry_server::clock::Clock;
use registry_server::lifecycle::{self, CheckOutcome, Mutation};
use registry_server::record::InstanceRecord;
use registry_server::self_preservation::Mode;
use registry_server::store::{
    Applied, Expect, Heartbeat, HistoryStart, InstanceChange, InstanceKey, PostgresStore,
    SqliteStore, Store,
};
use registry_server::testing;

/// Now, as the registry dates it.
fn now() -> DateTime<Utc> {
    Clock::default().now()
}

// ---------------------------------------------------------------------------------------
// Harness

#[derive(Debug, Clone, Copy)]
enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    async fn fresh_url(self) -> String {
        match self {
            Self::Postgres => testing::fresh_postgres_database().await,
            Self::Sqlite => testing::fresh_sqlite_url(),
        }
    }

    /// Connects and migrates, as the server does at start.
    async fn open(self, url: &str) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = match self {
            Self::Postgres => Arc::new(PostgresStore::connect(url).await.expect("connect")),
            Self::Sqlite => Arc::new(SqliteStore::connect(url).await.expect("connect")),
        };
        store.migrate().await.expect("migrate");
        store
    }

    async fn fresh(self) -> Arc<dyn Store> {
        let url = self.fresh_url().await;
        self.open(&url).await
    }
}

/// Runs each listed test once per backend, as `postgres::<name>` and `sqlite::<name>`.
macro_rules! conformance {
    ($($test:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await;
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Sqlite).await;
                }
            )+
        }
    };
}

conformance!(
    registering_a_new_instance_appends_event_1,
    identical_replacement_appends_nothing_but_is_saved,
    heartbeat_of_an_unknown_instance_changes_nothing,
    a_change_expected_absent_of_a_stored_instance_is_planned_on_it,
    a_removal_expected_absent_of_a_stored_instance_removes_it,
    index_increases_by_one_per_change_across_instances,
    events_after_filters_by_service_and_limits,
    snapshot_is_consistent_with_the_index,
    deregistering_appends_removed_and_forgets_the_instance,
    expired_leases_finds_only_due_leases,
    expired_leases_respect_the_grace_after_a_recovery,
    reapable_finds_instances_critical_long_enough,
    an_instance_s_own_reaping_time_wins_over_the_registry_s,
    claimed_checks_are_pushed_one_interval_ahead,
    history_filters_by_instance_and_half_open_time_range,
    state_at_answers_a_past_moment,
    service_names_walk_the_history_in_name_order,
    pruning_keeps_the_latest_event_of_live_instances,
    pruning_in_batches_of_two_keeps_the_same_events,
    a_group_of_many_changes_commits_at_once_with_contiguous_indexes,
    times_round_trip_exactly,
    data_survives_reconnecting,
    concurrent_changes_get_gap_free_indexes_in_commit_order,
    concurrent_registrations_of_one_new_instance_append_one_event,
    two_processes_registering_one_new_instance_append_one_event,
    a_change_that_cannot_be_written_fails_alone,
    renew_leases_renews_live_leases_in_one_call_without_events,
    renew_leases_answers_back_lapsed_and_unknown_instances,
    renew_leases_keeps_ttl_0_instances_without_a_lease,
    renew_leases_never_moves_a_lease_back,
    renewed_times_read_back_exactly_and_are_stored_as_serde_writes,
    concurrent_renewals_of_overlapping_batches_all_succeed,
    the_lease_survey_counts_silent_leases_before_any_lapse,
    held_lapses_are_found_kept_out_of_renewals_and_expired_later,
    one_replica_switches_self_preservation_and_time_travel_sees_it,
    one_replica_at_a_time_claims_the_lease_sweep,
);

// ---------------------------------------------------------------------------------------
// Helpers

fn spec(service: &str, id: &str, ttl_seconds: u32) -> Validated {
    let mut raw = InstanceSpec::new("http://10.0.0.1:4040");
    raw.ttl_seconds = Some(ttl_seconds);
    validate(raw, service, id)
}

fn spec_with_check(service: &str, id: &str, path: &str, interval_seconds: u32) -> Validated {
    let mut raw = InstanceSpec::new("http://10.0.0.1:4040");
    raw.ttl_seconds = Some(0);
    raw.check = Some(CheckSpec {
        http: Some(path.into()),
        tcp: None,
        interval_seconds: Some(interval_seconds),
        timeout_seconds: Some(1),
        expect_json: None,
    });
    validate(raw, service, id)
}

fn validate(raw: InstanceSpec, service: &str, id: &str) -> Validated {
    raw.validate(
        ServiceName::parse(service).expect("service name"),
        InstanceId::parse(id).expect("instance id"),
        10,
    )
    .expect("valid spec")
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn ms(n: i64) -> Duration {
    Duration::milliseconds(n)
}

/// Applies `change` to whatever the instance is; an unknown instance is left alone.
async fn on_existing(
    store: &dyn Store,
    service: &str,
    id: &str,
    now: DateTime<Utc>,
    change: impl Fn(&InstanceRecord) -> Mutation + Send + Sync + 'static,
) -> Applied {
    store
        .apply(
            &name(service),
            &iid(id),
            now,
            Expect::Anything,
            Box::new(move |old: Option<&InstanceRecord>| old.map_or(Mutation::Unchanged, &change)),
        )
        .await
        .expect("apply")
}

async fn put(store: &dyn Store, spec: &Validated, now: DateTime<Utc>) -> Applied {
    let owned = spec.clone();
    store
        .apply(
            &spec.service,
            &spec.id,
            now,
            Expect::Anything,
            Box::new(move |old: Option<&InstanceRecord>| lifecycle::register(old, &owned, now)),
        )
        .await
        .expect("apply")
}

async fn heartbeat(store: &dyn Store, service: &str, id: &str, now: DateTime<Utc>) -> Applied {
    on_existing(store, service, id, now, move |r| {
        lifecycle::heartbeat(r, now)
    })
    .await
}

async fn maintenance(
    store: &dyn Store,
    service: &str,
    id: &str,
    on: bool,
    now: DateTime<Utc>,
) -> Applied {
    on_existing(store, service, id, now, move |r| {
        lifecycle::set_maintenance(r, on, now)
    })
    .await
}

async fn expire(store: &dyn Store, service: &str, id: &str, now: DateTime<Utc>) -> Applied {
    on_existing(store, service, id, now, move |r| {
        lifecycle::expire_lease(r, now)
    })
    .await
}

async fn deregister(store: &dyn Store, service: &str, id: &str, now: DateTime<Utc>) -> Applied {
    on_existing(store, service, id, now, lifecycle::deregister).await
}

fn index_of(applied: &Applied) -> u64 {
    applied.event.as_ref().expect("an event").index
}

fn record_of(applied: &Applied) -> InstanceRecord {
    applied.record.clone().expect("a record")
}

fn name(raw: &str) -> ServiceName {
    ServiceName::parse(raw).expect("service name")
}

fn iid(raw: &str) -> InstanceId {
    InstanceId::parse(raw).expect("instance id")
}

fn pairs(keys: &[(&str, &str)]) -> Vec<InstanceKey> {
    keys.iter().map(|(s, i)| (name(s), iid(i))).collect()
}

fn sorted(mut keys: Vec<InstanceKey>) -> Vec<InstanceKey> {
    keys.sort();
    keys
}

fn indexes(events: &[registry_api::Event]) -> Vec<u64> {
    events.iter().map(|e| e.index).collect()
}

fn by_key(mut instances: Vec<Instance>) -> Vec<Instance> {
    instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    instances
}

// ---------------------------------------------------------------------------------------
// Tests

async fn registering_a_new_instance_appends_event_1(backend: Backend) {
    let store = backend.fresh().await;
    assert_eq!(store.current_index().await.expect("index"), 0);
    let now = now();

    let applied = put(&*store, &spec("sum", "a", 10), now).await;

    assert!(!applied.existed);
    let record = record_of(&applied);
    assert_eq!(record.status, Status::Passing);
    assert_eq!(record.lease_expires_at, Some(now + secs(10)));
    let event = applied.event.expect("an event");
    assert_eq!(event.index, 1);
    assert_eq!(
        (event.kind, event.reason),
        (EventKind::Registered, Reason::Registered)
    );
    assert_eq!((event.from, event.to), (None, Some(Status::Passing)));
    assert_eq!(event.at, now);
    assert_eq!(
        (event.service.as_str(), event.instance.as_str()),
        ("sum", "a")
    );
    assert_eq!(event.snapshot, record.to_instance());
    assert_eq!(store.current_index().await.expect("index"), 1);
    assert_eq!(
        store.events_after(0, None, 10).await.expect("events"),
        vec![event]
    );
}

async fn identical_replacement_appends_nothing_but_is_saved(backend: Backend) {
    let store = backend.fresh().await;
    let t0 = now();
    put(&*store, &spec("sum", "a", 10), t0).await;

    let again = put(&*store, &spec("sum", "a", 10), t0 + secs(3)).await;

    assert!(again.existed);
    assert_eq!(again.event, None);
    let record = record_of(&again);
    assert_eq!(record.registered_at, t0);
    assert_eq!(
        record.lease_expires_at,
        Some(t0 + secs(13)),
        "the lease is renewed"
    );
    assert_eq!(store.current_index().await.expect("index"), 1);
    assert_eq!(
        store.events_after(0, None, 10).await.expect("events").len(),
        1
    );
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(
        snapshot.records,
        vec![record],
        "the renewal is written without an event"
    );
}

/// [`Expect::Absent`] is a hint: an instance stored meanwhile (by another replica, say)
/// is found and the change planned on it, not on nothing.
async fn a_change_expected_absent_of_a_stored_instance_is_planned_on_it(backend: Backend) {
    let store = backend.fresh().await;
    let first = spec("sum", "a", 10);
    let registered = put(store.as_ref(), &first, now()).await;
    let moved = validate(InstanceSpec::new("http://10.0.0.2:4040"), "sum", "a");
    let later = now() + secs(1);

    let applied = store
        .apply(
            &name("sum"),
            &iid("a"),
            later,
            Expect::Absent,
            Box::new(move |old: Option<&InstanceRecord>| lifecycle::register(old, &moved, later)),
        )
        .await
        .expect("apply");

    assert!(applied.existed, "the stored instance is found");
    let record = applied.record.expect("record");
    assert_eq!(record.url, "http://10.0.0.2:4040");
    assert_eq!(
        record.registered_at,
        registered.record.expect("record").registered_at,
        "a re-registration of the stored instance, not a new one"
    );
    assert_eq!(store.snapshot().await.expect("snapshot").records.len(), 1);
}

/// A change that would write nothing on an absent instance (a removal answered
/// "unknown") is not answered on the hint alone.
async fn a_removal_expected_absent_of_a_stored_instance_removes_it(backend: Backend) {
    let store = backend.fresh().await;
    put(store.as_ref(), &spec("sum", "a", 10), now()).await;

    let applied = store
        .apply(
            &name("sum"),
            &iid("a"),
            now(),
            Expect::Absent,
            Box::new(|old: Option<&InstanceRecord>| {
                old.map_or(Mutation::Unchanged, lifecycle::deregister)
            }),
        )
        .await
        .expect("apply");

    assert!(applied.existed, "the stored instance is found");
    assert_eq!(applied.record, None);
    assert!(applied.event.is_some(), "its removal is an event");
    assert!(store.snapshot().await.expect("snapshot").records.is_empty());
}

async fn heartbeat_of_an_unknown_instance_changes_nothing(backend: Backend) {
    let store = backend.fresh().await;
    let now = now();
    let saw_none = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&saw_none);

    let applied = store
        .apply(
            &name("sum"),
            &iid("ghost"),
            now,
            Expect::Anything,
            Box::new(move |old: Option<&InstanceRecord>| {
                flag.store(old.is_none(), Ordering::SeqCst);
                old.map_or(Mutation::Unchanged, |r| lifecycle::heartbeat(r, now))
            }),
        )
        .await
        .expect("apply");

    assert!(
        saw_none.load(Ordering::SeqCst),
        "the transition sees no record"
    );
    assert_eq!(
        applied,
        Applied {
            existed: false,
            record: None,
            event: None,
            committed: Arc::new([]),
        }
    );
    assert_eq!(store.current_index().await.expect("index"), 0);
    assert!(store.snapshot().await.expect("snapshot").records.is_empty());

    // And on a known instance with a live lease: saved, no event.
    put(&*store, &spec("sum", "a", 10), now).await;
    let beat = heartbeat(&*store, "sum", "a", now + secs(1)).await;
    assert!(beat.existed);
    assert_eq!(beat.event, None);
    assert_eq!(record_of(&beat).last_heartbeat_at, now + secs(1));
    assert_eq!(store.current_index().await.expect("index"), 1);
}

async fn index_increases_by_one_per_change_across_instances(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();

    let applied = [
        put(s, &spec("sum", "a", 10), t0).await,
        put(s, &spec("mult", "a", 10), t0).await,
        heartbeat(s, "sum", "a", t0 + secs(1)).await, // no change
        maintenance(s, "sum", "a", true, t0 + secs(2)).await,
        put(s, &spec("sum", "a", 30), t0 + secs(3)).await,
        expire(s, "mult", "a", t0 + secs(10)).await,
        heartbeat(s, "mult", "a", t0 + secs(11)).await,
        deregister(s, "sum", "a", t0 + secs(12)).await,
    ];

    let appended: Vec<u64> = applied
        .iter()
        .filter_map(|a| a.event.as_ref().map(|e| e.index))
        .collect();
    assert_eq!(appended, (1..=7).collect::<Vec<_>>());
    let events = s.events_after(0, None, 100).await.expect("events");
    assert_eq!(indexes(&events), appended);
    let described: Vec<(EventKind, Reason)> = events.iter().map(|e| (e.kind, e.reason)).collect();
    assert_eq!(
        described,
        vec![
            (EventKind::Registered, Reason::Registered),
            (EventKind::Registered, Reason::Registered),
            (EventKind::Status, Reason::MaintenanceSet),
            (EventKind::Updated, Reason::Updated),
            (EventKind::Status, Reason::LeaseExpired),
            (EventKind::Status, Reason::Heartbeat),
            (EventKind::Removed, Reason::Deregistered),
        ]
    );
    assert_eq!(s.current_index().await.expect("index"), 7);
}

async fn events_after_filters_by_service_and_limits(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec("sum", "a", 10), t0).await;
    put(s, &spec("mult", "a", 10), t0).await;
    put(s, &spec("sum", "b", 10), t0).await;
    put(s, &spec("mult", "b", 10), t0).await;

    let after = |after, service: Option<&str>, limit| {
        let service = service.map(name);
        async move {
            indexes(
                &s.events_after(after, service.as_ref(), limit)
                    .await
                    .expect("events"),
            )
        }
    };
    assert_eq!(after(0, None, 100).await, vec![1, 2, 3, 4]);
    assert_eq!(after(1, None, 2).await, vec![2, 3]);
    assert_eq!(after(0, Some("sum"), 100).await, vec![1, 3]);
    assert_eq!(after(1, Some("mult"), 1).await, vec![2]);
    assert_eq!(after(2, Some("mult"), 10).await, vec![4]);
    assert_eq!(after(4, None, 10).await, Vec::<u64>::new());
    assert_eq!(after(0, Some("concat"), 10).await, Vec::<u64>::new());
    assert_eq!(after(u64::MAX, None, 10).await, Vec::<u64>::new());
    let events = s
        .events_after(0, Some(&name("mult")), 10)
        .await
        .expect("events");
    assert!(events.iter().all(|e| e.service == "mult"));
}

async fn snapshot_is_consistent_with_the_index(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    let empty = s.snapshot().await.expect("snapshot");
    assert_eq!((empty.index, empty.records.len()), (0, 0));

    put(s, &spec("sum", "b", 10), t0).await;
    put(s, &spec("sum", "a", 10), t0).await;
    let mult = put(s, &spec("mult", "a", 0), t0).await;
    let sum_a = maintenance(s, "sum", "a", true, t0 + secs(1)).await;
    deregister(s, "sum", "b", t0 + secs(2)).await;

    let snapshot = s.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.index, 5);
    assert_eq!(snapshot.index, s.current_index().await.expect("index"));
    let mut records = snapshot.records.clone();
    records.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    assert_eq!(records, vec![record_of(&mult), record_of(&sum_a)]);
    // Each record is what its latest event up to the snapshot's index shows.
    let events = s.events_after(0, None, 100).await.expect("events");
    for record in &snapshot.records {
        let latest = events
            .iter()
            .filter(|e| e.index <= snapshot.index)
            .rfind(|e| e.service == record.service && e.instance == record.id)
            .expect("an event for each record");
        assert_eq!(latest.snapshot, record.to_instance());
    }
}

async fn deregistering_appends_removed_and_forgets_the_instance(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec("sum", "a", 10), t0).await;
    let last = record_of(&maintenance(s, "sum", "a", true, t0 + secs(1)).await);

    let removed = deregister(s, "sum", "a", t0 + secs(2)).await;

    assert!(removed.existed);
    assert_eq!(removed.record, None);
    let event = removed.event.expect("an event");
    assert_eq!(event.index, 3);
    assert_eq!(
        (event.kind, event.reason),
        (EventKind::Removed, Reason::Deregistered)
    );
    assert_eq!((event.from, event.to), (Some(Status::Maintenance), None));
    assert_eq!(event.at, t0 + secs(2));
    assert_eq!(event.snapshot, last.to_instance(), "the last state");
    let snapshot = s.snapshot().await.expect("snapshot");
    assert_eq!((snapshot.index, snapshot.records.len()), (3, 0));
    assert_eq!(
        s.events_after(2, None, 10).await.expect("events"),
        vec![event]
    );

    let again = deregister(s, "sum", "a", t0 + secs(3)).await;
    assert_eq!(
        again,
        Applied {
            existed: false,
            record: None,
            event: None,
            committed: Arc::new([]),
        }
    );
    let back = put(s, &spec("sum", "a", 10), t0 + secs(4)).await;
    assert!(!back.existed);
    assert_eq!(index_of(&back), 4);
    assert_eq!(
        record_of(&back).registered_at,
        t0 + secs(4),
        "a new registration"
    );
}

async fn expired_leases_finds_only_due_leases(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec("sum", "a", 10), t0).await;
    put(s, &spec("sum", "b", 30), t0).await;
    put(s, &spec("sum", "nolease", 0), t0).await;
    put(s, &spec("mult", "d", 10), t0 + secs(5)).await;
    let expired = |at, limit| async move {
        sorted(s.expired_leases(at, limit).await.expect("expired leases"))
    };

    assert_eq!(expired(t0 + secs(10) - ms(1), 100).await, vec![]);
    assert_eq!(expired(t0 + secs(10), 100).await, pairs(&[("sum", "a")]));
    assert_eq!(
        expired(t0 + secs(15), 100).await,
        pairs(&[("mult", "d"), ("sum", "a")])
    );
    assert_eq!(
        expired(t0 + secs(30), 100).await,
        pairs(&[("mult", "d"), ("sum", "a"), ("sum", "b")])
    );
    assert_eq!(expired(t0 + secs(30), 2).await.len(), 2, "the limit holds");

    // A heartbeat pushes the deadline; an expired lease is not due again.
    heartbeat(s, "sum", "a", t0 + secs(12)).await;
    assert_eq!(expired(t0 + secs(15), 100).await, pairs(&[("mult", "d")]));
    let lapsed = expire(s, "mult", "d", t0 + secs(15)).await;
    assert_eq!(record_of(&lapsed).status, Status::Critical);
    assert_eq!(
        expired(t0 + secs(1000), 100).await,
        pairs(&[("sum", "a"), ("sum", "b")])
    );
}

async fn expired_leases_respect_the_grace_after_a_recovery(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    let gap = secs(5);
    put(s, &spec("sum", "a", 10), t0).await;
    put(s, &spec("sum", "b", 30), t0).await;
    let expired =
        |at| async move { sorted(s.expired_leases(at, 100).await.expect("expired leases")) };

    assert!(
        s.mark_alive(t0, gap).await.expect("alive"),
        "nobody was alive before"
    );
    assert!(!s.mark_alive(t0 + secs(1), gap).await.expect("alive"));
    assert_eq!(expired(t0 + secs(10)).await, pairs(&[("sum", "a")]));

    // Down from t0+1s until r: every deadline becomes max(deadline, r + ttl).
    let r = t0 + secs(60);
    assert!(s.mark_alive(r, gap).await.expect("alive"), "a recovery");
    assert_eq!(expired(r).await, vec![]);
    assert_eq!(expired(r + secs(10) - ms(1)).await, vec![]);
    assert_eq!(expired(r + secs(10)).await, pairs(&[("sum", "a")]));
    assert_eq!(expired(r + secs(30) - ms(1)).await, pairs(&[("sum", "a")]));
    assert_eq!(
        expired(r + secs(30)).await,
        pairs(&[("sum", "a"), ("sum", "b")])
    );

    assert!(!s.mark_alive(r + secs(1), gap).await.expect("alive"));
    // A late caller with an older clock does not move the last sign of life back.
    assert!(!s.mark_alive(r - secs(30), gap).await.expect("alive"));
    assert!(!s.mark_alive(r + secs(4), gap).await.expect("alive"));
    assert_eq!(expired(r + secs(10)).await, pairs(&[("sum", "a")]));
}

async fn hold(store: &dyn Store, service: &str, id: &str, now: DateTime<Utc>) -> Applied {
    on_existing(store, service, id, now, move |r| {
        lifecycle::hold_lease(r, now)
    })
    .await
}

async fn the_lease_survey_counts_silent_leases_before_any_lapse(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec("sum", "a", 10), t0).await;
    put(s, &spec("sum", "b", 10), t0 + secs(3)).await;
    put(s, &spec("sum", "nolease", 0), t0).await;
    put(s, &spec("sum", "drained", 10), t0).await;
    maintenance(s, "sum", "drained", true, t0).await;
    put(s, &spec("sum", "dead", 10), t0).await;
    expire(s, "sum", "dead", t0 + secs(10)).await;
    let survey = |at| async move {
        let survey = s.lease_survey(at, true).await.expect("survey");
        (survey.mode, survey.silent_running)
    };

    assert_eq!(survey(t0).await, (Mode::OFF, 0));
    assert_eq!(survey(t0 + secs(5)).await, (Mode::OFF, 1));
    let uncounted = s.lease_survey(t0 + secs(5), false).await.expect("survey");
    assert_eq!(
        (uncounted.mode, uncounted.silent_running),
        (Mode::OFF, 0),
        "the mode alone when the silence does not matter"
    );
    let survey = |at| async move { survey(at).await.1 };
    // Silent once the last sign of life is half a TTL old: a at t0+5s, b at t0+8s.
    assert_eq!(survey(t0 + secs(5) - ms(1)).await, 0);
    assert_eq!(survey(t0 + secs(5)).await, 1);
    assert_eq!(survey(t0 + secs(8)).await, 2);
    heartbeat(s, "sum", "a", t0 + secs(6)).await;
    assert_eq!(
        survey(t0 + secs(8)).await,
        1,
        "a heartbeat ends the silence"
    );

    // The end of an outage grace is a sign of life for every lease.
    let gap = secs(3);
    s.mark_alive(t0, gap).await.expect("alive");
    let r = t0 + secs(60);
    assert!(s.mark_alive(r, gap).await.expect("alive"), "a recovery");
    assert_eq!(survey(r + secs(5) - ms(1)).await, 0);
    assert_eq!(survey(r + secs(5)).await, 2);
}

async fn held_lapses_are_found_kept_out_of_renewals_and_expired_later(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec("sum", "a", 10), t0).await;
    put(s, &spec("sum", "b", 10), t0).await;
    let held = hold(s, "sum", "a", t0 + secs(10)).await;
    assert_eq!(
        held.event.as_ref().map(|e| e.reason),
        Some(Reason::LeaseHeld)
    );
    let record = record_of(&held);
    assert!(record.lease_held && record.status == Status::Passing);
    assert!(held.event.as_ref().is_some_and(|e| e.snapshot.lease_held));

    assert_eq!(
        s.held_leases(t0 + secs(11), 100).await.expect("held"),
        pairs(&[("sum", "a")])
    );
    assert_eq!(
        s.expired_leases(t0 + secs(11), 100).await.expect("expired"),
        pairs(&[("sum", "b")]),
        "a held lapse is not due again"
    );
    let survey = s.lease_survey(t0 + secs(11), true).await.expect("survey");
    assert_eq!(
        survey.silent_running, 1,
        "a held lease is not running: the view counts it"
    );

    // A batched renewal leaves a held lease to the full heartbeat, which ends the hold
    // with an event.
    let not_applied = s
        .renew_leases(&[beat("sum", "a", t0 + secs(12))])
        .await
        .expect("renew");
    assert_eq!(not_applied, vec![beat("sum", "a", t0 + secs(12))]);
    let renewed = heartbeat(s, "sum", "a", t0 + secs(12)).await;
    assert!(!record_of(&renewed).lease_held);
    assert!(renewed.event.is_some(), "other replicas see the hold end");
    assert_eq!(
        s.held_leases(t0 + secs(12), 100).await.expect("held"),
        vec![]
    );

    // When the mode ends, a lease still held gets one full TTL from then, as after an
    // outage: the heartbeats that return renew it meanwhile.
    hold(s, "sum", "b", t0 + secs(10)).await;
    let on = Mode {
        since: Some(t0 + secs(5)),
        armed: true,
    };
    assert!(
        s.switch_self_preservation(Mode::OFF, on, t0 + secs(5))
            .await
            .expect("on")
    );
    let end = t0 + secs(30);
    assert!(
        s.switch_self_preservation(on, Mode::OFF, end)
            .await
            .expect("off")
    );
    assert_eq!(
        s.held_leases(end + secs(10) - ms(1), 100)
            .await
            .expect("held"),
        vec![]
    );
    assert_eq!(
        s.held_leases(end + secs(10), 100).await.expect("held"),
        pairs(&[("sum", "b")])
    );
    // A hold that ends without a heartbeat turns critical.
    let expired = expire(s, "sum", "b", t0 + secs(20)).await;
    assert_eq!(record_of(&expired).status, Status::Critical);
    assert!(!record_of(&expired).lease_held);
    assert_eq!(
        s.held_leases(end + secs(10), 100).await.expect("held"),
        vec![]
    );
}

async fn one_replica_at_a_time_claims_the_lease_sweep(backend: Backend) {
    let url = backend.fresh_url().await;
    let (a, b) = (backend.open(&url).await, backend.open(&url).await);
    let claimed = a.claim_sweep().await.expect("claim");
    assert!(claimed.is_some(), "the first asks, the first claims");
    match backend {
        Backend::Postgres => {
            assert!(
                b.claim_sweep().await.expect("claim").is_none(),
                "another replica holds it"
            );
            drop(claimed);
            // The dropped claim's transaction rolls back as its connection is reused.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while b.claim_sweep().await.expect("claim").is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the claim ends when dropped"
                );
                tokio::task::yield_now().await;
            }
        }
        // One process owns an SQLite file.
        Backend::Sqlite => assert!(b.claim_sweep().await.expect("claim").is_some()),
    }
}

async fn one_replica_switches_self_preservation_and_time_travel_sees_it(backend: Backend) {
    let url = backend.fresh_url().await;
    let (a, b) = (backend.open(&url).await, backend.open(&url).await);
    let t0 = now();
    let on = Mode {
        since: Some(t0 + secs(1)),
        armed: true,
    };
    assert!(
        a.switch_self_preservation(Mode::OFF, on, t0 + secs(1))
            .await
            .expect("switch")
    );
    assert!(
        !b.switch_self_preservation(Mode::OFF, on, t0 + secs(1))
            .await
            .expect("switch"),
        "the second replica finds it switched"
    );
    assert_eq!(
        b.lease_survey(t0 + secs(2), true)
            .await
            .expect("survey")
            .mode,
        on
    );
    let given_up = Mode {
        since: None,
        armed: false,
    };
    assert!(
        b.switch_self_preservation(on, given_up, t0 + secs(5))
            .await
            .expect("switch")
    );
    assert!(
        a.switch_self_preservation(given_up, Mode::OFF, t0 + secs(6))
            .await
            .expect("switch")
    );
    assert_eq!(
        a.lease_survey(t0 + secs(7), true)
            .await
            .expect("survey")
            .mode,
        Mode::OFF
    );

    let a = &*a;
    let at = |n| async move { a.self_preservation_at(t0 + secs(n)).await.expect("at") };
    assert_eq!(at(0).await, None);
    assert_eq!(at(1).await, Some(t0 + secs(1)));
    assert_eq!(at(4).await, Some(t0 + secs(1)));
    assert_eq!(at(5).await, None);
    assert_eq!(at(7).await, None, "re-arming is no change of the mode");
}

async fn reapable_finds_instances_critical_long_enough(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec("sum", "a", 10), t0).await;
    put(s, &spec("sum", "b", 10), t0).await;
    // Critical since at most `at`, with the registry's reaping time of one minute.
    let minute = std::time::Duration::from_secs(60);
    let reapable = |at, limit| async move {
        sorted(
            s.reapable(at + secs(60), minute, limit)
                .await
                .expect("reapable"),
        )
    };

    assert_eq!(
        reapable(t0 + secs(1000), 100).await,
        vec![],
        "none is critical"
    );
    expire(s, "sum", "a", t0 + secs(10)).await;
    assert_eq!(reapable(t0 + secs(10) - ms(1), 100).await, vec![]);
    assert_eq!(reapable(t0 + secs(10), 100).await, pairs(&[("sum", "a")]));
    expire(s, "sum", "b", t0 + secs(20)).await;
    assert_eq!(
        reapable(t0 + secs(20), 100).await,
        pairs(&[("sum", "a"), ("sum", "b")])
    );
    assert_eq!(reapable(t0 + secs(20), 1).await.len(), 1, "the limit holds");

    heartbeat(s, "sum", "a", t0 + secs(21)).await;
    assert_eq!(reapable(t0 + secs(1000), 100).await, pairs(&[("sum", "b")]));
}

async fn an_instance_s_own_reaping_time_wins_over_the_registry_s(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    let mut quick = spec("sum", "quick", 10);
    quick.deregister_critical_after = Some(5);
    let mut kept = spec("sum", "kept", 10);
    kept.deregister_critical_after = Some(0);
    put(s, &quick, t0).await;
    put(s, &kept, t0).await;
    put(s, &spec("sum", "usual", 10), t0).await;
    for id in ["quick", "kept", "usual"] {
        expire(s, "sum", id, t0 + secs(10)).await;
    }
    let reapable = |at, after: u64| async move {
        sorted(
            s.reapable(at, std::time::Duration::from_secs(after), 100)
                .await
                .expect("reapable"),
        )
    };
    assert_eq!(reapable(t0 + secs(15) - ms(1), 60).await, vec![]);
    assert_eq!(
        reapable(t0 + secs(15), 60).await,
        pairs(&[("sum", "quick")])
    );
    assert_eq!(
        reapable(t0 + secs(70), 60).await,
        pairs(&[("sum", "quick"), ("sum", "usual")]),
        "0 is never"
    );
    assert_eq!(
        reapable(t0 + secs(10_000), 0).await,
        pairs(&[("sum", "quick")]),
        "the registry's 0 is never, the instance's own time still counts"
    );
}

async fn claimed_checks_are_pushed_one_interval_ahead(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec_with_check("sum", "a", "/status", 5), t0).await;
    put(s, &spec_with_check("sum", "c", "/status", 10), t0).await;
    put(s, &spec("sum", "unchecked", 10), t0).await;
    let claim = |at, limit| async move {
        let mut claimed: Vec<String> = s
            .claim_due_checks(at, limit)
            .await
            .expect("claim")
            .into_iter()
            .map(|c| c.record.id)
            .collect();
        claimed.sort();
        claimed
    };

    assert_eq!(
        claim(t0, 100).await,
        vec!["a", "c"],
        "new checks are due at once"
    );
    assert_eq!(claim(t0, 100).await, Vec::<String>::new(), "claimed once");
    assert_eq!(claim(t0 + secs(5) - ms(1), 100).await, Vec::<String>::new());
    assert_eq!(claim(t0 + secs(5), 100).await, vec!["a"]);
    assert_eq!(claim(t0 + secs(5), 100).await, Vec::<String>::new());
    assert_eq!(claim(t0 + secs(10), 1).await.len(), 1, "the limit holds");
    assert_eq!(claim(t0 + secs(10), 100).await.len(), 1, "the other one");

    // a is next due at t0+15s. An identical replacement and a check result keep that.
    let check = record_of(&put(s, &spec_with_check("sum", "a", "/status", 5), t0 + secs(11)).await)
        .check
        .expect("a check");
    let outcome = CheckOutcome {
        status: Status::Passing,
        detail: "HTTP 200".into(),
    };
    let now = t0 + secs(12);
    on_existing(s, "sum", "a", now, move |r| {
        lifecycle::record_check(r, &check, &outcome, now)
    })
    .await;
    assert_eq!(claim(t0 + secs(12), 100).await, Vec::<String>::new());

    // A changed check is due at once.
    put(s, &spec_with_check("sum", "a", "/other", 5), t0 + secs(13)).await;
    let claimed = s.claim_due_checks(t0 + secs(13), 100).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let record = &claimed[0].record;
    assert_eq!(record.id, "a");
    assert_eq!(
        record.check.as_ref().and_then(|c| c.http.as_deref()),
        Some("/other")
    );

    // A removed check is never due again.
    put(s, &spec("sum", "c", 0), t0 + secs(14)).await;
    assert_eq!(claim(t0 + secs(1000), 100).await, vec!["a"]);
}

/// sum/a at t0, sum/b at t0+1s, mult/a at t0+2s, sum/a to maintenance at t0+3s,
/// sum/b removed at t0+4s: events 1 to 5.
async fn timeline(s: &dyn Store, t0: DateTime<Utc>) {
    put(s, &spec("sum", "a", 10), t0).await;
    put(s, &spec("sum", "b", 10), t0 + secs(1)).await;
    put(s, &spec("mult", "a", 10), t0 + secs(2)).await;
    maintenance(s, "sum", "a", true, t0 + secs(3)).await;
    deregister(s, "sum", "b", t0 + secs(4)).await;
}

async fn history_filters_by_instance_and_half_open_time_range(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    timeline(s, t0).await;
    let history = |service: &str, instance: Option<&str>, since, until, limit| {
        let (service, instance) = (name(service), instance.map(iid));
        async move {
            indexes(
                &s.history(&service, instance.as_ref(), since, until, limit)
                    .await
                    .expect("history"),
            )
        }
    };

    assert_eq!(
        history("sum", None, None, None, 100).await,
        vec![1, 2, 4, 5]
    );
    assert_eq!(history("sum", Some("a"), None, None, 100).await, vec![1, 4]);
    assert_eq!(history("mult", Some("a"), None, None, 100).await, vec![3]);
    assert_eq!(
        history("sum", None, Some(t0 + secs(1)), None, 100).await,
        vec![2, 4, 5]
    );
    assert_eq!(
        history("sum", None, None, Some(t0 + secs(3)), 100).await,
        vec![1, 2],
        "until is exclusive"
    );
    assert_eq!(
        history("sum", None, Some(t0 + secs(1)), Some(t0 + secs(4)), 100).await,
        vec![2, 4],
        "since is inclusive"
    );
    assert_eq!(
        history(
            "sum",
            Some("b"),
            Some(t0 + secs(1)),
            Some(t0 + secs(5)),
            100
        )
        .await,
        vec![2, 5]
    );
    assert_eq!(
        history("sum", None, None, None, 2).await,
        vec![1, 2],
        "oldest first"
    );
    assert_eq!(
        history("concat", None, None, None, 100).await,
        Vec::<u64>::new()
    );
    assert_eq!(
        history("sum", Some("zz"), None, None, 100).await,
        Vec::<u64>::new()
    );
}

async fn state_at_answers_a_past_moment(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    timeline(s, t0).await;
    let events = s.events_after(0, None, 100).await.expect("events");
    let shown = |index: u64| {
        events[usize::try_from(index - 1).expect("small")]
            .snapshot
            .clone()
    };
    let state_at = |at| async move {
        let (index, instances) = s.state_at(at, None).await.expect("state");
        (index, by_key(instances))
    };

    assert_eq!(state_at(t0 - ms(1)).await, (0, vec![]));
    assert_eq!(state_at(t0).await, (1, vec![shown(1)]));
    assert_eq!(state_at(t0 + secs(1) - ms(1)).await, (1, vec![shown(1)]));
    assert_eq!(
        state_at(t0 + secs(2)).await,
        (3, vec![shown(3), shown(1), shown(2)])
    );
    let (index, at_3) = state_at(t0 + secs(3)).await;
    assert_eq!(index, 4);
    assert_eq!(at_3, vec![shown(3), shown(4), shown(2)]);
    assert_eq!(at_3[1].status, Status::Maintenance);
    assert_eq!(
        state_at(t0 + secs(4)).await,
        (5, vec![shown(3), shown(4)]),
        "removed instances are gone"
    );
    assert_eq!(
        state_at(t0 + secs(3600)).await,
        (5, vec![shown(3), shown(4)])
    );

    // Only the services asked for, with the index of the moment all the same.
    let of = |at, services: &'static [&'static str]| async move {
        let services: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
        let (index, instances) = s.state_at(at, Some(&services)).await.expect("state");
        (index, by_key(instances))
    };
    assert_eq!(
        of(t0 + secs(2), &["sum"]).await,
        (3, vec![shown(1), shown(2)])
    );
    assert_eq!(of(t0 + secs(2), &["mult"]).await, (3, vec![shown(3)]));
    assert_eq!(
        of(t0 + secs(4), &["sum", "mult"]).await,
        (5, vec![shown(3), shown(4)])
    );
    assert_eq!(of(t0 + secs(4), &["none"]).await, (5, vec![]));
    assert_eq!(of(t0 + secs(4), &[]).await, (5, vec![]));
}

async fn service_names_walk_the_history_in_name_order(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    for (i, service) in ["web", "api", "sum", "ab-sum", "mult"]
        .into_iter()
        .enumerate()
    {
        put(s, &spec(service, "a", 10), t0 + secs(i as i64)).await;
    }
    // A removed service stays a name of the history (it had instances then).
    deregister(s, "web", "a", t0 + secs(9)).await;
    let now = t0 + secs(10);
    let names = |after: Option<&'static str>, containing: Option<&'static str>, limit| async move {
        s.service_names(now, after, containing, limit)
            .await
            .expect("names")
    };
    assert_eq!(
        names(None, None, 10).await,
        ["ab-sum", "api", "mult", "sum", "web"]
    );
    assert_eq!(names(None, None, 2).await, ["ab-sum", "api"]);
    assert_eq!(names(Some("api"), None, 2).await, ["mult", "sum"]);
    assert_eq!(names(Some("sum"), None, 10).await, ["web"]);
    assert_eq!(names(Some("web"), None, 10).await, Vec::<String>::new());
    assert_eq!(names(None, Some("sum"), 10).await, ["ab-sum", "sum"]);
    assert_eq!(names(Some("ab-sum"), Some("sum"), 10).await, ["sum"]);
    assert_eq!(names(None, Some("-"), 10).await, ["ab-sum"]);
    // Only the services that had an event by the moment asked.
    let by = |at| async move { s.service_names(at, None, None, 10).await.expect("names") };
    assert_eq!(by(t0 - ms(1)).await, Vec::<String>::new());
    assert_eq!(by(t0).await, ["web"]);
    assert_eq!(by(t0 + secs(2)).await, ["api", "sum", "web"]);
}

async fn pruning_keeps_the_latest_event_of_live_instances(backend: Backend) {
    pruning_keeps_the_latest_events(backend, 10_000).await;
}

/// Batches of two split the history so that the event superseding an instance's older
/// one, or the removal ending it, is in another batch than that older event.
async fn pruning_in_batches_of_two_keeps_the_same_events(backend: Backend) {
    pruning_keeps_the_latest_events(backend, 2).await;
}

async fn pruning_keeps_the_latest_events(backend: Backend, batch: u32) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    let initial = s.history_start().await.expect("history start");
    assert_eq!(initial.index, 0);
    assert!(
        initial.at <= t0,
        "history starts when the database is created"
    );
    assert_eq!(
        s.prune_history(t0, batch).await.expect("prune"),
        0,
        "nothing to prune"
    );
    assert_eq!(s.history_start().await.expect("history start"), initial);

    timeline(s, t0).await; // 1..=5 at t0..t0+4s
    put(s, &spec("concat", "c", 10), t0 + secs(6)).await; // 6
    let events = s.events_after(0, None, 100).await.expect("events");
    let shown = |index: u64| {
        events[usize::try_from(index - 1).expect("small")]
            .snapshot
            .clone()
    };
    let before = t0 + secs(4) + ms(500);

    // Before `before`: sum/a's latest is 4, mult/a's is 3, sum/b's is its removal (5).
    let deleted = s.prune_history(before, batch).await.expect("prune");

    assert_eq!(deleted, 3, "events 1, 2 and 5");
    assert_eq!(
        indexes(&s.events_after(0, None, 100).await.expect("events")),
        vec![3, 4, 6]
    );
    assert_eq!(
        s.history_start().await.expect("history start"),
        HistoryStart {
            index: 5,
            at: before
        }
    );
    assert_eq!(
        s.state_at(before, None).await.expect("state"),
        (5, by_key(vec![shown(3), shown(4)])),
        "the state where history starts is intact"
    );
    let (index, instances) = s.state_at(t0 + secs(6), None).await.expect("state");
    assert_eq!(
        (index, by_key(instances)),
        (6, vec![shown(6), shown(3), shown(4)])
    );

    // Pruning again, or up to an earlier moment, changes nothing.
    assert_eq!(s.prune_history(before, batch).await.expect("prune"), 0);
    assert_eq!(
        s.prune_history(t0 + secs(1), batch).await.expect("prune"),
        0
    );
    assert_eq!(
        s.history_start().await.expect("history start"),
        HistoryStart {
            index: 5,
            at: before
        },
        "the start never moves back"
    );
    assert_eq!(s.current_index().await.expect("index"), 6);
}

fn change_of(
    service: &str,
    id: &str,
    now: DateTime<Utc>,
    transition: impl Fn(Option<&InstanceRecord>) -> Mutation + Send + Sync + 'static,
) -> InstanceChange {
    InstanceChange {
        service: name(service),
        id: iid(id),
        now,
        transition: Box::new(transition),
    }
}

/// What a sweep after a lost zone does: more changes than the write queue's groups hold,
/// written by one call in one transaction, with the same answers as one at a time.
async fn a_group_of_many_changes_commits_at_once_with_contiguous_indexes(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec("sum", "before", 10), t0).await; // 1
    let count: u64 = 1_500;
    let ids: Vec<String> = (0..count).map(|n| format!("i{n}")).collect();
    let registrations = ids
        .iter()
        .map(|id| {
            let spec = spec("many", id, 10);
            change_of("many", id, t0, move |old| {
                lifecycle::register(old, &spec, t0)
            })
        })
        .collect();
    let registered: Vec<Applied> = s
        .apply_group(registrations)
        .await
        .into_iter()
        .map(|result| result.expect("registered"))
        .collect();
    let expected: Vec<u64> = (2..=count + 1).collect();
    assert_eq!(
        registered.iter().map(index_of).collect::<Vec<_>>(),
        expected,
        "in order"
    );
    assert!(
        registered.iter().all(|a| indexes(&a.committed) == expected),
        "one transaction: every answer carries all of its events"
    );
    assert_eq!(
        indexes(&s.events_after(1, None, 5_000).await.expect("events")),
        expected
    );

    // Every lease lapses at once; besides, an instance lapsed twice (the second change
    // sees the first's result), an unknown instance, and a transition that returns
    // another instance's record, which fails alone.
    let t1 = t0 + secs(11);
    let lapse = move |old: Option<&InstanceRecord>| {
        old.map_or(Mutation::Unchanged, |o| lifecycle::expire_lease(o, t1))
    };
    let mut lapses: Vec<InstanceChange> = ids
        .iter()
        .map(|id| change_of("many", id, t1, lapse))
        .collect();
    lapses.push(change_of("many", "i0", t1, lapse));
    lapses.push(change_of("many", "unknown", t1, lapse));
    let other = record_of(&registered[1]);
    lapses.push(change_of("sum", "before", t1, move |_| {
        lifecycle::expire_lease(&other, t1)
    }));
    let mut results = s.apply_group(lapses).await;
    assert_eq!(results.len(), ids.len() + 3);
    assert!(
        results.pop().expect("answer").is_err(),
        "the wrong record fails"
    );
    let unknown = results.pop().expect("answer").expect("applied");
    assert_eq!((unknown.record, unknown.event), (None, None));
    let again = results.pop().expect("answer").expect("applied");
    assert!(again.event.is_none(), "already lapsed by the group");
    assert_eq!(record_of(&again).status, Status::Critical);
    let lapsed: Vec<u64> = results
        .iter()
        .map(|result| index_of(result.as_ref().expect("lapsed")))
        .collect();
    let expected: Vec<u64> = (count + 2..=2 * count + 1).collect();
    assert_eq!(lapsed, expected);
    assert_eq!(s.current_index().await.expect("index"), 2 * count + 1);
    let events = s
        .events_after(count + 1, None, 5_000)
        .await
        .expect("events");
    assert_eq!(indexes(&events), expected, "no gap");
    assert!(events.iter().all(|e| e.to == Some(Status::Critical)));
    assert_eq!(
        record_in(s, "sum", "before").await.map(|r| r.status),
        Some(Status::Passing),
        "the failed change wrote nothing"
    );
}

async fn times_round_trip_exactly(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now() + ms(1); // an odd millisecond, kept exact
    let registered = put(s, &spec_with_check("sum", "a", "/status", 5), t0).await;
    let check = record_of(&registered).check.expect("a check");
    let checked_at = t0 + ms(1234);
    let outcome = CheckOutcome {
        status: Status::Warning,
        detail: "HTTP 429".into(),
    };
    let checked = on_existing(s, "sum", "a", checked_at, move |r| {
        lifecycle::record_check(r, &check, &outcome, checked_at)
    })
    .await;
    let record = record_of(&checked);
    assert_eq!(record.last_check.as_ref().map(|c| c.at), Some(checked_at));
    assert_eq!(record.status_changed_at, checked_at);

    let snapshot = s.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.records, vec![record.clone()]);
    let stored = s.events_after(0, None, 10).await.expect("events");
    let applied: Vec<_> = [registered.event, checked.event]
        .into_iter()
        .map(|e| e.expect("an event"))
        .collect();
    assert_eq!(stored, applied);
    assert_eq!(
        s.history(&name("sum"), None, Some(t0), Some(checked_at + ms(1)), 10)
            .await
            .expect("history"),
        applied
    );
    assert_eq!(
        s.state_at(checked_at, None).await.expect("state"),
        (2, vec![record.to_instance()])
    );
    let before = checked_at + ms(7);
    s.prune_history(before, 10_000).await.expect("prune");
    assert_eq!(s.history_start().await.expect("history start").at, before);
}

async fn data_survives_reconnecting(backend: Backend) {
    let url = backend.fresh_url().await;
    let store = backend.open(&url).await;
    let t0 = now();
    put(&*store, &spec("sum", "a", 10), t0).await;
    maintenance(&*store, "sum", "a", true, t0 + secs(1)).await;
    put(&*store, &spec_with_check("mult", "b", "/status", 5), t0).await;
    deregister(&*store, "mult", "b", t0 + secs(2)).await;
    assert!(
        store
            .mark_alive(t0 + secs(2), secs(5))
            .await
            .expect("alive")
    );
    let snapshot = store.snapshot().await.expect("snapshot");
    let events = store.events_after(0, None, 100).await.expect("events");
    drop(store);

    let store = backend.open(&url).await; // migrating again is harmless
    store.migrate().await.expect("migrate twice");

    assert_eq!(store.snapshot().await.expect("snapshot"), snapshot);
    assert_eq!(
        store.events_after(0, None, 100).await.expect("events"),
        events
    );
    assert_eq!(store.current_index().await.expect("index"), 4);
    assert!(
        !store
            .mark_alive(t0 + secs(3), secs(5))
            .await
            .expect("alive"),
        "the last sign of life is kept"
    );
    let next = put(&*store, &spec("sum", "c", 10), t0 + secs(3)).await;
    assert_eq!(index_of(&next), 5, "the index continues");
}

async fn concurrent_changes_get_gap_free_indexes_in_commit_order(backend: Backend) {
    const INSTANCES: usize = 5;
    const TASKS: usize = 50;
    const WRITES: usize = 10;
    const TOTAL: u64 = (INSTANCES + TASKS * WRITES) as u64;
    let store = backend.fresh().await;
    let t0 = now();
    for i in 0..INSTANCES {
        put(&*store, &spec("sum", &format!("i{i}"), 10), t0).await;
    }

    // A follower reading as writes commit must never see an index before a lower one.
    let follower = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
            let mut seen = 0;
            while seen < TOTAL {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "follower stuck at {seen}"
                );
                for event in store.events_after(seen, None, 100).await.expect("events") {
                    assert_eq!(event.index, seen + 1, "a gap in what has committed");
                    seen = event.index;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            seen
        })
    };

    // Every write toggles maintenance, so each one appends an event; five instances shared
    // by fifty tasks make the writers queue on the same rows.
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let mut appended = Vec::new();
            for write in 0..WRITES {
                let id = format!("i{}", (task + write) % INSTANCES);
                let now = now();
                let applied = on_existing(&*store, "sum", &id, now, move |r| {
                    lifecycle::set_maintenance(r, !r.maintenance, now)
                })
                .await;
                appended.push(applied);
            }
            appended
        });
    }
    let mut answers = Vec::new();
    while let Some(result) = tasks.join_next().await {
        answers.extend(result.expect("task"));
    }
    let mut appended: Vec<u64> = (1..=INSTANCES as u64)
        .chain(answers.iter().map(index_of))
        .collect();
    appended.sort_unstable();

    assert_eq!(
        appended,
        (1..=TOTAL).collect::<Vec<_>>(),
        "each index given once"
    );
    assert_eq!(store.current_index().await.expect("index"), TOTAL);
    let events = store.events_after(0, None, 1000).await.expect("events");
    assert_eq!(indexes(&events), (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(follower.await.expect("follower"), TOTAL);

    // What a write answers as its transaction's events is what was stored, its own among
    // them (a view applies them without reading them back).
    for applied in &answers {
        let first = applied
            .committed
            .first()
            .expect("the transaction's events")
            .index;
        let stored = &events[(first - 1) as usize..][..applied.committed.len()];
        assert_eq!(&applied.committed[..], stored, "from index {first}");
        assert!(
            applied
                .committed
                .contains(applied.event.as_ref().expect("an event"))
        );
    }

    // No lost update: per instance, each change starts from the previous one's result.
    let mut last: BTreeMap<&str, Status> = BTreeMap::new();
    for event in &events {
        let to = event.to.expect("no removal");
        if let Some(before) = last.insert(event.instance.as_str(), to) {
            assert_eq!(
                event.from,
                Some(before),
                "event {} of {}",
                event.index,
                event.instance
            );
        }
    }
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.index, TOTAL);
    assert!(
        snapshot.records.iter().all(|r| !r.maintenance),
        "100 toggles each"
    );
}

async fn concurrent_registrations_of_one_new_instance_append_one_event(backend: Backend) {
    let store = backend.fresh().await;
    // Opens several connections now, so that the writers below start at the same time.
    futures::future::join_all((0..10).map(|_| store.current_index())).await;
    assert_eq!(
        race_to_create(std::slice::from_ref(&store), 20).await,
        (1, 1)
    );
    assert_eq!(store.current_index().await.expect("index"), 1);
}

/// `writers` concurrent registrations of one new instance, spread over `stores`: answers
/// how many found it new and how many appended an event.
async fn race_to_create(stores: &[Arc<dyn Store>], writers: usize) -> (usize, usize) {
    let now = now();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let store = Arc::clone(&stores[writer % stores.len()]);
        tasks.spawn(async move {
            let spec = spec("sum", "a", 10);
            let transition = move |old: Option<&InstanceRecord>| {
                if old.is_none() {
                    // Widens the window between finding no instance and creating it, so
                    // that writers which are not serialized would both create it.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                lifecycle::register(old, &spec, now)
            };
            store
                .apply(
                    &name("sum"),
                    &iid("a"),
                    now,
                    Expect::Anything,
                    Box::new(transition),
                )
                .await
                .expect("apply")
        });
    }
    let mut created = 0;
    let mut events = 0;
    while let Some(result) = tasks.join_next().await {
        let applied = result.expect("task");
        created += usize::from(!applied.existed);
        events += usize::from(applied.event.is_some());
    }
    (created, events)
}

async fn two_processes_registering_one_new_instance_append_one_event(backend: Backend) {
    // Two stores on one database, as two replicas are: each writes its own groups, so
    // only the database's locks keep them from both creating the instance.
    let url = backend.fresh_url().await;
    let stores = [backend.open(&url).await, backend.open(&url).await];
    assert_eq!(race_to_create(&stores, 10).await, (1, 1));
    assert_eq!(stores[0].current_index().await.expect("index"), 1);
}

async fn a_change_that_cannot_be_written_fails_alone(backend: Backend) {
    const WRITERS: usize = 40;
    let store = backend.fresh().await;
    let now = now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let id = format!("i{n}");
            let spec = spec("sum", &id, 10);
            let transition = move |old: Option<&InstanceRecord>| match n {
                // Postgres cannot store NUL in JSON (the API refuses it before any store
                // sees it; this record comes from a transition that skipped the checks).
                7 => match lifecycle::register(old, &spec, now) {
                    Mutation::Save {
                        mut record,
                        change,
                        reschedule_check,
                    } => {
                        record.tags = vec!["a\u{0}b".into()];
                        Mutation::Save {
                            record,
                            change,
                            reschedule_check,
                        }
                    }
                    other => other,
                },
                // A transition answering another instance's record is refused.
                13 => lifecycle::register(old, &self::spec("sum", "elsewhere", 10), now),
                _ => lifecycle::register(old, &spec, now),
            };
            let applied = store
                .apply(
                    &name("sum"),
                    &iid(&id),
                    now,
                    Expect::Anything,
                    Box::new(transition),
                )
                .await;
            (n, applied)
        });
    }
    let mut written = 0;
    while let Some(result) = tasks.join_next().await {
        let (n, applied) = result.expect("task");
        match (n, backend) {
            (7, Backend::Postgres) | (13, _) => assert!(applied.is_err(), "change {n}"),
            _ => {
                assert!(applied.expect("written").event.is_some(), "change {n}");
                written += 1;
            }
        }
    }
    assert_eq!(store.current_index().await.expect("index"), written);
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.records.len() as u64, written);
}

// ---------------------------------------------------------------------------------------
// Batched lease renewal (coalesced heartbeats)

fn beat(service: &str, id: &str, at: DateTime<Utc>) -> Heartbeat {
    Heartbeat {
        service: name(service),
        id: iid(id),
        at,
    }
}

/// What the one-instance heartbeat transition makes of `old` at `at`.
fn heartbeat_of(old: &InstanceRecord, at: DateTime<Utc>) -> InstanceRecord {
    match lifecycle::heartbeat(old, at) {
        Mutation::Save {
            record,
            change: None,
            ..
        } => record,
        other => panic!("expected a renewal without an event, got {other:?}"),
    }
}

fn sorted_beats(mut beats: Vec<Heartbeat>) -> Vec<Heartbeat> {
    beats.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    beats
}

async fn record_in(store: &dyn Store, service: &str, id: &str) -> Option<InstanceRecord> {
    store
        .snapshot()
        .await
        .expect("snapshot")
        .records
        .into_iter()
        .find(|r| r.service == service && r.id == id)
}

async fn renew_leases_renews_live_leases_in_one_call_without_events(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    let a = record_of(&put(s, &spec("sum", "a", 10), t0).await);
    let b = record_of(&put(s, &spec("mult", "b", 30), t0).await);
    let index = s.current_index().await.expect("index");
    let at = t0 + ms(1_507); // an odd millisecond, kept exact

    let not_applied = s
        .renew_leases(&[
            beat("sum", "a", t0 + ms(900)),
            beat("sum", "a", at), // the latest of an instance counts
            beat("mult", "b", at),
            beat("sum", "a", t0 + ms(1_200)),
        ])
        .await
        .expect("renew");

    assert_eq!(not_applied, vec![]);
    let snapshot = s.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.index, index, "a renewal appends no event");
    assert_eq!(
        s.events_after(index, None, 10).await.expect("events"),
        vec![]
    );
    let mut expected = vec![heartbeat_of(&b, at), heartbeat_of(&a, at)];
    expected.sort_by(|x, y| (&x.service, &x.id).cmp(&(&y.service, &y.id)));
    assert_eq!(
        snapshot.records, expected,
        "exactly what the one-instance heartbeat writes"
    );
    assert_eq!(expected[1].lease_expires_at, Some(at + secs(10)));

    // The indexed deadline moved with the record.
    let expired =
        |at| async move { sorted(s.expired_leases(at, 100).await.expect("expired leases")) };
    assert_eq!(expired(t0 + secs(10)).await, vec![]);
    assert_eq!(expired(at + secs(10) - ms(1)).await, vec![]);
    assert_eq!(expired(at + secs(10)).await, pairs(&[("sum", "a")]));
    assert_eq!(
        expired(at + secs(30)).await,
        pairs(&[("mult", "b"), ("sum", "a")])
    );
    // An empty batch is no call at all.
    assert_eq!(s.renew_leases(&[]).await.expect("renew"), vec![]);
}

async fn renew_leases_answers_back_lapsed_and_unknown_instances(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec("sum", "lapsed", 1), t0).await;
    let live = record_of(&put(s, &spec("sum", "live", 10), t0).await);
    let lapsed = record_of(&expire(s, "sum", "lapsed", t0 + secs(1)).await);
    assert_eq!(lapsed.status, Status::Critical);
    let index = s.current_index().await.expect("index");
    let at = t0 + secs(2);

    let not_applied = s
        .renew_leases(&[
            beat("sum", "lapsed", at),
            beat("sum", "ghost", at),
            beat("sum", "live", at),
            beat("nobody", "live", at),
            beat("sum", "ghost", at - ms(5)),
        ])
        .await
        .expect("renew");

    assert_eq!(
        sorted_beats(not_applied),
        vec![
            beat("nobody", "live", at),
            beat("sum", "ghost", at),
            beat("sum", "lapsed", at),
        ],
        "one per instance, the latest"
    );
    assert_eq!(s.current_index().await.expect("index"), index);
    assert_eq!(
        record_in(s, "sum", "lapsed").await,
        Some(lapsed),
        "a lapsed lease is left to the full transition"
    );
    assert_eq!(record_in(s, "sum", "ghost").await, None);
    assert_eq!(
        record_in(s, "sum", "live").await,
        Some(heartbeat_of(&live, at))
    );
    assert_eq!(
        sorted(s.expired_leases(at + secs(100), 10).await.expect("expired")),
        pairs(&[("sum", "live")]),
        "the lapsed lease is not due again"
    );
}

async fn renew_leases_keeps_ttl_0_instances_without_a_lease(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    let checked = record_of(&put(s, &spec_with_check("sum", "c", "/status", 5), t0).await);
    assert_eq!(checked.lease_expires_at, None);
    let at = t0 + ms(2_345);

    let not_applied = s
        .renew_leases(&[beat("sum", "c", at)])
        .await
        .expect("renew");

    assert_eq!(not_applied, vec![]);
    let renewed = record_in(s, "sum", "c").await.expect("still there");
    assert_eq!(renewed, heartbeat_of(&checked, at));
    assert_eq!(renewed.last_heartbeat_at, at);
    assert_eq!(renewed.lease_expires_at, None, "still no lease");
    assert_eq!(
        s.expired_leases(at + secs(100_000), 10)
            .await
            .expect("expired"),
        vec![],
        "nothing to expire"
    );
    assert_eq!(s.current_index().await.expect("index"), 1);
    // The check schedule is not disturbed.
    assert_eq!(
        s.claim_due_checks(t0, 10).await.expect("claim").len(),
        1,
        "the new check is still due at once"
    );
}

async fn renew_leases_never_moves_a_lease_back(backend: Backend) {
    let store = backend.fresh().await;
    let s = &*store;
    let t0 = now();
    put(s, &spec("sum", "a", 10), t0).await;
    let latest = record_of(&heartbeat(s, "sum", "a", t0 + secs(5)).await);

    // A heartbeat queued before the one already written (another replica's, say).
    let not_applied = s
        .renew_leases(&[beat("sum", "a", t0 + secs(3))])
        .await
        .expect("renew");

    assert_eq!(not_applied, vec![], "superseded, not to be replayed");
    assert_eq!(record_in(s, "sum", "a").await, Some(latest));
    assert_eq!(
        s.expired_leases(t0 + secs(15) - ms(1), 10)
            .await
            .expect("expired"),
        vec![]
    );
}

/// The record rows as the database holds them, parsed as plain JSON (key order aside,
/// every string is compared exactly).
async fn raw_records(backend: Backend, url: &str) -> Vec<serde_json::Value> {
    let rows: Vec<String> = match backend {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("connect");
            sqlx::query_scalar("SELECT record::text FROM instances ORDER BY service, id")
                .fetch_all(&pool)
                .await
                .expect("read")
        }
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
            sqlx::query_scalar("SELECT record FROM instances ORDER BY service, id")
                .fetch_all(&pool)
                .await
                .expect("read")
        }
    };
    rows.iter()
        .map(|row| serde_json::from_str(row).expect("JSON"))
        .collect()
}

/// A renewal moves a running lease's deadline column, not its record: the record reads
/// back renewed to the millisecond, and the next full write stores the renewed times as
/// serde writes them. Without a lease, the last heartbeat goes into the record at once.
async fn renewed_times_read_back_exactly_and_are_stored_as_serde_writes(backend: Backend) {
    let url = backend.fresh_url().await;
    let store = backend.open(&url).await;
    let s = &*store;
    // A whole second (serde writes no fraction) and odd milliseconds (three digits).
    let t0 = DateTime::from_timestamp(now().timestamp(), 0).expect("whole second");
    let a = record_of(&put(s, &spec("sum", "a", 10), t0).await);
    let b = record_of(&put(s, &spec("sum", "b", 7), t0).await);
    let c = record_of(&put(s, &spec("sum", "c", 0), t0).await);
    let d = record_of(&put(s, &spec("sum", "d", 20), t0).await);

    s.renew_leases(&[
        beat("sum", "a", t0 + secs(2)),
        beat("sum", "b", t0 + ms(1_007)),
        beat("sum", "c", t0 + ms(1_070)),
        beat("sum", "d", t0 + ms(1_700)),
    ])
    .await
    .expect("renew");

    let expected: Vec<serde_json::Value> = [
        heartbeat_of(&a, t0 + secs(2)),
        heartbeat_of(&b, t0 + ms(1_007)),
        heartbeat_of(&c, t0 + ms(1_070)),
        heartbeat_of(&d, t0 + ms(1_700)),
    ]
    .iter()
    .map(|r| serde_json::to_value(r).expect("serialize"))
    .collect();
    let read = |records: Vec<InstanceRecord>| -> Vec<serde_json::Value> {
        records
            .iter()
            .map(|r| serde_json::to_value(r).expect("serialize"))
            .collect()
    };
    assert_eq!(
        read(s.snapshot().await.expect("snapshot").records),
        expected
    );
    let raw = raw_records(backend, &url).await;
    assert_eq!(
        raw[2], expected[2],
        "no lease: the record holds the heartbeat"
    );
    assert_eq!(
        raw[0]["last_heartbeat_at"],
        serde_json::json!(json_string(t0)),
        "a lease: the record is left as it was"
    );

    // A full write of each stores the renewed times, read from the deadline column.
    for id in ["a", "b", "c", "d"] {
        maintenance(s, "sum", id, true, t0 + secs(3)).await;
    }
    let raw = raw_records(backend, &url).await;
    assert_eq!(raw, read(s.snapshot().await.expect("snapshot").records));
    let renewed: Vec<&serde_json::Value> = raw.iter().map(|r| &r["lease_expires_at"]).collect();
    assert_eq!(renewed[0], &serde_json::json!(json_string(t0 + secs(12))));
    assert!(
        renewed[1].as_str().is_some_and(|t| t.ends_with(".007Z")),
        "{}",
        renewed[1]
    );
    assert_eq!(
        raw[1]["last_heartbeat_at"],
        expected[1]["last_heartbeat_at"]
    );
    assert_eq!(
        raw[3]["last_heartbeat_at"],
        expected[3]["last_heartbeat_at"]
    );
}

fn json_string(at: DateTime<Utc>) -> String {
    match serde_json::to_value(at).expect("serialize") {
        serde_json::Value::String(text) => text,
        other => panic!("a time serializes as a string, not {other}"),
    }
}

async fn concurrent_renewals_of_overlapping_batches_all_succeed(backend: Backend) {
    const INSTANCES: usize = 100;
    const TASKS: usize = 8;
    let store = backend.fresh().await;
    let t0 = now();
    for i in 0..INSTANCES {
        put(&*store, &spec("sum", &format!("i{i:03}"), 10), t0).await;
    }

    // Replicas flushing at once with batches that overlap, in different orders: none
    // may fail (a deadlock would abort one of them).
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let at = t0 + ms(100 + i64::try_from(task).expect("small"));
            let mut batch: Vec<Heartbeat> = (0..INSTANCES)
                .map(|i| beat("sum", &format!("i{i:03}"), at))
                .collect();
            if task % 2 == 1 {
                batch.reverse();
            }
            batch.rotate_left(task * 7);
            for _ in 0..5 {
                let not_applied = store.renew_leases(&batch).await.expect("renew");
                assert_eq!(not_applied, vec![]);
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("task");
    }
    let latest = t0 + ms(100 + i64::try_from(TASKS - 1).expect("small"));
    let snapshot = store.snapshot().await.expect("snapshot");
    assert!(
        snapshot
            .records
            .iter()
            .all(|r| r.last_heartbeat_at == latest && r.lease_expires_at == Some(latest + secs(10))),
        "the latest heartbeat wins everywhere"
    );
    assert_eq!(snapshot.index, INSTANCES as u64);
}

/// A database that applied migration 2 before its comment was reworded (another checksum)
/// still migrates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_accepts_the_reworded_migration_2() {
    use sqlx::Connection as _;
    let url = Backend::Postgres.fresh_url().await;
    Backend::Postgres.open(&url).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = 2")
        .execute(&mut conn)
        .await
        .expect("the old checksum");
    let store = PostgresStore::connect(&url).await.expect("connect");
    store
        .migrate()
        .await
        .expect("migrates over the old checksum");
}

/// A group is planned from rows read without locks. When another writer changes a row
/// between that read and the group's write, the write must not overwrite the other
/// writer's change: the group is planned again on the row as it now is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_row_changed_after_the_read_is_planned_again() {
    use sqlx::Connection as _;
    let url = Backend::Postgres.fresh_url().await;
    let store = Backend::Postgres.open(&url).await;
    let now = now();
    let spec = spec("sum", "a", 10);
    store
        .apply(
            &name("sum"),
            &iid("a"),
            now,
            Expect::Anything,
            Box::new(move |old| lifecycle::register(old, &spec, now)),
        )
        .await
        .expect("register");

    // Another writer changes the row and holds its lock, so that the group's read sees
    // the row as it was and its write waits for the other's commit.
    let mut other = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut other)
        .await
        .expect("begin");
    sqlx::query(
        "UPDATE instances SET record = jsonb_set(record, '{tags}', '[\"changed-meanwhile\"]') \
         WHERE service = 'sum' AND id = 'a'",
    )
    .execute(&mut other)
    .await
    .expect("the other writer's change");
    let maintenance = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            on_existing(store.as_ref(), "sum", "a", now, move |record| {
                lifecycle::set_maintenance(record, true, now)
            })
            .await
        }
    });
    let mut watcher = sqlx::PgConnection::connect(&url).await.expect("connect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .expect("activity");
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group's write never waited for the other writer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    sqlx::query("COMMIT")
        .execute(&mut other)
        .await
        .expect("commit");

    let applied = maintenance.await.expect("task");
    let record = applied.record.expect("the instance");
    assert!(record.maintenance, "the group's change is written");
    assert_eq!(
        record.tags,
        ["changed-meanwhile"],
        "and the other writer's change is kept"
    );
    let stored = store.snapshot().await.expect("snapshot").records;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].maintenance && stored[0].tags == ["changed-meanwhile"]);
    assert_eq!(store.current_index().await.expect("index"), 2);
}

/// Renewals that keep a lease within its bucket (a hundredth of its TTL) change no indexed
/// column, so Postgres rewrites each row in place of its old version without new index
/// entries ("HOT"). Any index on a column a renewal moves would turn this off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_renewals_within_a_bucket_touch_no_index() {
    use sqlx::Connection as _;
    const RENEWALS: i64 = 20;
    let url = Backend::Postgres.fresh_url().await;
    let store = Backend::Postgres.open(&url).await;
    // A TTL of 600 s makes the bucket 6 s: starting a second into a minute, the renewals'
    // deadlines (100 ms apart, 601.1 to 603 s past the minute) stay within one.
    let minute = now().timestamp() / 60 * 60;
    let t0 = DateTime::from_timestamp(minute + 1, 0).expect("a time");
    put(&*store, &spec("sum", "a", 600), t0).await;
    for n in 1..=RENEWALS {
        let renewed = store
            .renew_leases(&[beat("sum", "a", t0 + ms(100 * n))])
            .await
            .expect("renew");
        assert_eq!(renewed, vec![], "renewal {n}");
    }
    // Statistics reach the shared counters when a session ends or idles.
    drop(store);
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (updated, hot) = loop {
        let (updated, hot): (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
             WHERE relname = 'instances'",
        )
        .fetch_one(&mut conn)
        .await
        .expect("statistics");
        if updated >= RENEWALS || std::time::Instant::now() > deadline {
            break (updated, hot);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(updated, RENEWALS, "every renewal updated the row once");
    assert_eq!(hot, RENEWALS, "and none wrote an index entry");
}
