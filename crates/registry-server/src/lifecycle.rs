//! The status rules (docs/api.md, Statuses) as pure functions: given the stored record and
//! what happened, the new record and the event to append. Both stores call these inside
//! their transactions, so the rules exist once and are unit-tested without a database.

use chrono::{DateTime, Duration, Utc};
use registry_api::{Check, CheckResult, EventKind, Reason, Status, Validated};

use crate::record::InstanceRecord;

/// What a transition asks the store to do.
// One short-lived value per write: boxing the record would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Nothing to write.
    Unchanged,
    /// Write the record; append an event when `change` is set. `reschedule_check` asks the
    /// store to run the check as soon as possible (new or changed check).
    Save {
        record: InstanceRecord,
        change: Option<Change>,
        reschedule_check: bool,
    },
    /// Remove the instance and append the removal event.
    Delete { change: Change },
}

/// The event a mutation appends (the store adds index, time and snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub kind: EventKind,
    pub reason: Reason,
    pub from: Option<Status>,
    pub to: Option<Status>,
}

/// What the active check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// `Passing` (2xx), `Warning` (429) or `Critical` (anything else).
    pub status: Status,
    pub detail: String,
}

/// Consecutive failures before a check turns critical.
pub const FAILURES_TO_CRITICAL: u32 = 2;

fn lease_until(now: DateTime<Utc>, ttl_seconds: u32) -> Option<DateTime<Utc>> {
    (ttl_seconds > 0).then(|| now + Duration::seconds(i64::from(ttl_seconds)))
}

/// Recomputes the combined status, stamps `status_changed_at`, and describes the event.
fn settle(
    mut record: InstanceRecord,
    before: Status,
    now: DateTime<Utc>,
    reason: Reason,
) -> (InstanceRecord, Option<Change>) {
    let after = record.combined_status();
    if after == before {
        return (record, None);
    }
    record.status = after;
    record.status_changed_at = now;
    let change = Change {
        kind: EventKind::Status,
        reason,
        from: Some(before),
        to: Some(after),
    };
    (record, Some(change))
}

/// `PUT .../instances/{id}`: register a new instance or replace an existing one.
pub fn register(old: Option<&InstanceRecord>, spec: &Validated, now: DateTime<Utc>) -> Mutation {
    let Some(old) = old else {
        let mut record = InstanceRecord {
            service: spec.service.to_string(),
            id: spec.id.to_string(),
            url: spec.url.clone(),
            tags: spec.tags.clone(),
            metadata: spec.metadata.clone(),
            ttl_seconds: spec.ttl_seconds,
            check: spec.check.clone(),
            registered_at: now,
            last_heartbeat_at: now,
            lease_expires_at: lease_until(now, spec.ttl_seconds),
            lease_expired: false,
            lease_held: false,
            maintenance: false,
            check_status: None,
            check_failures: 0,
            last_check: None,
            status: Status::Passing,
            status_changed_at: now,
            deregister_critical_after: spec.deregister_critical_after,
            lease_status: None,
            lease_output: None,
            maintenance_reason: None,
        };
        // The status it starts in: the check's until it first runs, else the lease's.
        let initial = spec.initial_status.filter(|s| *s != Status::Passing);
        if record.check.is_some() {
            record.check_status = initial;
        } else {
            record.lease_status = initial;
        }
        record.status = record.combined_status();
        return Mutation::Save {
            reschedule_check: record.check.is_some(),
            change: Some(Change {
                kind: EventKind::Registered,
                reason: Reason::Registered,
                from: None,
                to: Some(record.status),
            }),
            record,
        };
    };
    let spec_changed = old.url != spec.url
        || old.tags != spec.tags
        || old.metadata != spec.metadata
        || old.ttl_seconds != spec.ttl_seconds
        || old.check != spec.check
        || old.deregister_critical_after != spec.deregister_critical_after;
    // A new URL means a new target: the old verdict says nothing about it.
    let check_changed = old.check != spec.check || (spec.check.is_some() && old.url != spec.url);
    let mut record = old.clone();
    record.url = spec.url.clone();
    record.tags = spec.tags.clone();
    record.metadata = spec.metadata.clone();
    record.ttl_seconds = spec.ttl_seconds;
    record.check = spec.check.clone();
    record.deregister_critical_after = spec.deregister_critical_after;
    record.last_heartbeat_at = now;
    record.lease_expires_at = lease_until(now, spec.ttl_seconds);
    record.lease_expired = false;
    record.lease_held = false;
    if check_changed {
        reset_check_state(&mut record);
    }
    let (mut record, status_change) = settle(record, old.status, now, Reason::Heartbeat);
    let change = if spec_changed {
        record.status = record.combined_status();
        Some(Change {
            kind: EventKind::Updated,
            reason: Reason::Updated,
            from: Some(old.status),
            to: Some(record.status),
        })
    } else {
        status_change.or_else(|| released(old, &record))
    };
    Mutation::Save {
        record,
        change,
        reschedule_check: check_changed && spec.check.is_some(),
    }
}

/// The event for a held lease that a sign of life renewed without changing the status:
/// other replicas and the history must see `lease_held` go.
fn released(old: &InstanceRecord, new: &InstanceRecord) -> Option<Change> {
    (old.lease_held && !new.lease_held).then_some(Change {
        kind: EventKind::Updated,
        reason: Reason::Heartbeat,
        from: Some(old.status),
        to: Some(new.status),
    })
}

fn reset_check_state(record: &mut InstanceRecord) {
    record.check_status = None;
    record.check_failures = 0;
    record.last_check = None;
}

/// `PUT .../heartbeat`: renew the lease; a lapsed lease revives. A heartbeat says "I am
/// fine": it clears a status reported earlier (a `pass`).
pub fn heartbeat(old: &InstanceRecord, now: DateTime<Utc>) -> Mutation {
    report(old, Status::Passing, None, now)
}

/// A heartbeat that reports a status and a note (a Consul TTL check's `pass`, `warn`,
/// `fail` or `update`): renews the lease like any heartbeat, and the status holds until
/// the next report or the lapse. A note alone changes the record but appends no event.
pub fn report(
    old: &InstanceRecord,
    status: Status,
    output: Option<String>,
    now: DateTime<Utc>,
) -> Mutation {
    let mut record = old.clone();
    record.last_heartbeat_at = now;
    record.lease_expires_at = lease_until(now, old.ttl_seconds);
    record.lease_expired = false;
    record.lease_held = false;
    record.lease_status = matches!(status, Status::Warning | Status::Critical).then_some(status);
    if output.is_some() || status == Status::Passing {
        record.lease_output = output;
    }
    let (record, change) = settle(record, old.status, now, Reason::Heartbeat);
    let change = change.or_else(|| released(old, &record));
    Mutation::Save {
        record,
        change,
        reschedule_check: false,
    }
}

/// `PUT .../status`: `maintenance` sets the flag, `passing` clears it (and only it).
pub fn set_maintenance(old: &InstanceRecord, on: bool, now: DateTime<Utc>) -> Mutation {
    set_maintenance_because(old, on, None, now)
}

/// [`set_maintenance`] with the reason shown while it lasts (`None` when none was given;
/// clearing maintenance clears it). A new reason for an instance already in maintenance is
/// an update, so every reader sees it.
pub fn set_maintenance_because(
    old: &InstanceRecord,
    on: bool,
    because: Option<String>,
    now: DateTime<Utc>,
) -> Mutation {
    let because = because.filter(|_| on);
    if old.maintenance == on && old.maintenance_reason == because {
        return Mutation::Unchanged;
    }
    let mut record = old.clone();
    record.maintenance = on;
    record.maintenance_reason = because;
    let reason = if on {
        Reason::MaintenanceSet
    } else {
        Reason::MaintenanceCleared
    };
    let (record, change) = settle(record, old.status, now, reason);
    let change = change.or_else(|| {
        (record.maintenance_reason != old.maintenance_reason).then_some(Change {
            kind: EventKind::Updated,
            reason,
            from: Some(old.status),
            to: Some(record.status),
        })
    });
    Mutation::Save {
        record,
        change,
        reschedule_check: false,
    }
}

/// The expiry sweep: the lease ran out with no heartbeat (also a lapse that was held).
pub fn expire_lease(old: &InstanceRecord, now: DateTime<Utc>) -> Mutation {
    if !old.lease_ran_out(now) {
        return Mutation::Unchanged;
    }
    let mut record = old.clone();
    record.lease_expired = true;
    record.lease_held = false;
    let (record, change) = settle(record, old.status, now, Reason::LeaseExpired);
    Mutation::Save {
        record,
        change,
        reschedule_check: false,
    }
}

/// An active check finished. `check` is the check that ran: a result for a check that
/// has since been replaced is dropped.
pub fn record_check(
    old: &InstanceRecord,
    check: &Check,
    outcome: &CheckOutcome,
    now: DateTime<Utc>,
) -> Mutation {
    if old.check.as_ref() != Some(check) {
        return Mutation::Unchanged;
    }
    let mut record = old.clone();
    record.last_check = Some(CheckResult {
        at: now,
        status: outcome.status,
        detail: outcome.detail.clone(),
    });
    let reason = match outcome.status {
        Status::Passing | Status::Maintenance => {
            record.check_failures = 0;
            record.check_status = Some(Status::Passing);
            Reason::CheckPassed
        }
        Status::Warning => {
            record.check_failures = 0;
            record.check_status = Some(Status::Warning);
            Reason::CheckThrottled
        }
        Status::Critical => {
            record.check_failures = record.check_failures.saturating_add(1);
            if record.check_failures >= FAILURES_TO_CRITICAL {
                record.check_status = Some(Status::Critical);
            }
            Reason::CheckFailed
        }
    };
    let (record, change) = settle(record, old.status, now, reason);
    Mutation::Save {
        record,
        change,
        reschedule_check: false,
    }
}

/// The expiry sweep in self-preservation: the lease ran out, but the registry suspects
/// itself rather than the instance, so the lapse is held and the status kept.
pub fn hold_lease(old: &InstanceRecord, now: DateTime<Utc>) -> Mutation {
    if old.lease_deadline().is_none_or(|deadline| deadline > now) {
        return Mutation::Unchanged;
    }
    let mut record = old.clone();
    record.lease_held = true;
    Mutation::Save {
        change: Some(Change {
            kind: EventKind::Updated,
            reason: Reason::LeaseHeld,
            from: Some(old.status),
            to: Some(old.status),
        }),
        record,
        reschedule_check: false,
    }
}

/// The reaper: critical for at least the instance's own reaping time, else `after`, the
/// registry's (0 = never).
pub fn reap(old: &InstanceRecord, now: DateTime<Utc>, after: Duration) -> Mutation {
    let after = old
        .deregister_critical_after
        .and_then(|secs| i64::try_from(secs).ok())
        .map_or(after, Duration::seconds);
    let due = after > Duration::zero()
        && old
            .critical_since()
            .is_some_and(|since| since + after <= now);
    if !due {
        return Mutation::Unchanged;
    }
    Mutation::Delete {
        change: removal(old, Reason::Reaped),
    }
}

/// `DELETE .../instances/{id}`.
pub fn deregister(old: &InstanceRecord) -> Mutation {
    Mutation::Delete {
        change: removal(old, Reason::Deregistered),
    }
}

fn removal(old: &InstanceRecord, reason: Reason) -> Change {
    Change {
        kind: EventKind::Removed,
        reason,
        from: Some(old.status),
        to: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_api::{InstanceId, InstanceSpec, ServiceName};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid time")
    }

    fn spec(ttl: u32) -> Validated {
        let mut raw = InstanceSpec::new("http://10.0.0.1:4040");
        raw.ttl_seconds = Some(ttl);
        raw.validate(
            ServiceName::parse("sum").expect("name"),
            InstanceId::parse("a").expect("id"),
            10,
        )
        .expect("valid")
    }

    fn saved(m: Mutation) -> (InstanceRecord, Option<Change>) {
        match m {
            Mutation::Save { record, change, .. } => (record, change),
            other => panic!("expected a save, got {other:?}"),
        }
    }

    fn check() -> Check {
        Check {
            http: Some("/status".into()),
            tcp: None,
            interval_seconds: 5,
            timeout_seconds: 2,
            expect_json: None,
        }
    }

    fn with_check(mut r: InstanceRecord) -> InstanceRecord {
        r.check = Some(check());
        r
    }

    fn outcome(status: Status) -> CheckOutcome {
        CheckOutcome {
            status,
            detail: "test".into(),
        }
    }

    #[test]
    fn new_registration_is_passing_with_a_lease() {
        let (r, change) = saved(register(None, &spec(10), t(0)));
        assert_eq!(r.status, Status::Passing);
        assert_eq!(r.lease_expires_at, Some(t(10)));
        let change = change.expect("event");
        assert_eq!(
            (change.kind, change.reason),
            (EventKind::Registered, Reason::Registered)
        );
        assert_eq!((change.from, change.to), (None, Some(Status::Passing)));
    }

    #[test]
    fn identical_replacement_appends_nothing_but_renews_the_lease() {
        let (r, _) = saved(register(None, &spec(10), t(0)));
        let (r2, change) = saved(register(Some(&r), &spec(10), t(4)));
        assert_eq!(change, None);
        assert_eq!(r2.lease_expires_at, Some(t(14)));
        assert_eq!(r2.registered_at, t(0));
    }

    #[test]
    fn replacement_with_a_new_spec_is_an_update_and_keeps_maintenance() {
        let (r, _) = saved(register(None, &spec(10), t(0)));
        let (r, _) = saved(set_maintenance(&r, true, t(1)));
        let (r2, change) = saved(register(Some(&r), &spec(30), t(2)));
        let change = change.expect("event");
        assert_eq!(
            (change.kind, change.reason),
            (EventKind::Updated, Reason::Updated)
        );
        assert_eq!(r2.status, Status::Maintenance);
        assert!(r2.maintenance);
    }

    #[test]
    fn lease_lifecycle_expires_revives_and_reaps() {
        let (r, _) = saved(register(None, &spec(10), t(0)));
        assert_eq!(expire_lease(&r, t(9)), Mutation::Unchanged);
        let (r, change) = saved(expire_lease(&r, t(10)));
        assert_eq!(r.status, Status::Critical);
        assert_eq!(change.map(|c| c.reason), Some(Reason::LeaseExpired));
        assert_eq!(expire_lease(&r, t(11)), Mutation::Unchanged, "expires once");

        let (revived, change) = saved(heartbeat(&r, t(12)));
        assert_eq!(revived.status, Status::Passing);
        assert_eq!(change.map(|c| c.reason), Some(Reason::Heartbeat));

        assert_eq!(
            reap(&r, t(10 + 599), Duration::minutes(10)),
            Mutation::Unchanged
        );
        match reap(&r, t(10 + 600), Duration::minutes(10)) {
            Mutation::Delete { change } => assert_eq!(change.reason, Reason::Reaped),
            other => panic!("expected reaping, got {other:?}"),
        }
        assert_eq!(
            reap(&r, t(100_000), Duration::zero()),
            Mutation::Unchanged,
            "0 = never"
        );
    }

    #[test]
    fn a_reported_status_holds_until_the_next_report_and_a_note_alone_appends_nothing() {
        let (r, _) = saved(register(None, &spec(10), t(0)));
        let (warned, change) = saved(report(&r, Status::Warning, Some("slow".into()), t(1)));
        assert_eq!(warned.status, Status::Warning);
        assert_eq!(
            warned.lease_expires_at,
            Some(t(11)),
            "a report renews the lease"
        );
        assert_eq!(change.map(|c| c.reason), Some(Reason::Heartbeat));
        let (noted, change) = saved(report(
            &warned,
            Status::Warning,
            Some("slower".into()),
            t(2),
        ));
        assert_eq!(
            change, None,
            "the same status with a new note appends nothing"
        );
        assert_eq!(noted.lease_output.as_deref(), Some("slower"));
        let (failed, _) = saved(report(&noted, Status::Critical, None, t(3)));
        assert_eq!(failed.status, Status::Critical);
        assert_eq!(
            failed.lease_output.as_deref(),
            Some("slower"),
            "kept without a new one"
        );
        let (passed, change) = saved(heartbeat(&failed, t(4)));
        assert_eq!(passed.status, Status::Passing);
        assert_eq!((passed.lease_status, passed.lease_output), (None, None));
        assert_eq!(change.map(|c| c.to), Some(Some(Status::Passing)));
    }

    #[test]
    fn a_new_instance_starts_in_its_initial_status() {
        let mut critical = spec(10);
        critical.initial_status = Some(Status::Critical);
        let (r, change) = saved(register(None, &critical, t(0)));
        assert_eq!(r.status, Status::Critical);
        assert_eq!(change.and_then(|c| c.to), Some(Status::Critical));
        assert_eq!(saved(heartbeat(&r, t(1))).0.status, Status::Passing);

        // With a check, the check's verdict until it first runs.
        critical.check = Some(check());
        let (r, _) = saved(register(None, &critical, t(0)));
        assert_eq!(
            (r.status, r.check_status),
            (Status::Critical, Some(Status::Critical))
        );
        let (r, _) = saved(record_check(&r, &check(), &outcome(Status::Passing), t(1)));
        assert_eq!(r.status, Status::Passing);

        // Replacing an existing instance ignores it.
        let (existing, _) = saved(register(None, &spec(10), t(0)));
        let (replaced, _) = saved(register(Some(&existing), &critical, t(1)));
        assert_eq!(replaced.check_status, None);
    }

    #[test]
    fn an_instance_s_own_reaping_time_wins() {
        let mut quick = spec(10);
        quick.deregister_critical_after = Some(5);
        let (r, _) = saved(register(None, &quick, t(0)));
        let (r, _) = saved(expire_lease(&r, t(10)));
        assert_eq!(reap(&r, t(14), Duration::minutes(10)), Mutation::Unchanged);
        assert!(matches!(
            reap(&r, t(15), Duration::minutes(10)),
            Mutation::Delete { .. }
        ));
        assert!(
            matches!(reap(&r, t(15), Duration::zero()), Mutation::Delete { .. }),
            "the registry's 0 (never) does not override it"
        );
    }

    #[test]
    fn a_held_lapse_keeps_the_status_until_a_heartbeat_or_the_expiry() {
        let (r, _) = saved(register(None, &spec(10), t(0)));
        assert_eq!(hold_lease(&r, t(9)), Mutation::Unchanged, "not due yet");
        let (held, change) = saved(hold_lease(&r, t(10)));
        assert_eq!(held.status, Status::Passing);
        assert!(held.lease_held);
        assert_eq!(
            held.lease_deadline(),
            None,
            "the sweep no longer expires it"
        );
        assert_eq!(held.held_lease_deadline(), Some(t(10)));
        assert_eq!(change.map(|c| c.reason), Some(Reason::LeaseHeld));
        assert_eq!(hold_lease(&held, t(11)), Mutation::Unchanged, "held once");

        // A heartbeat renews it, and says so in an event although the status is the same.
        let (renewed, change) = saved(heartbeat(&held, t(12)));
        assert!(!renewed.lease_held);
        assert_eq!(renewed.lease_deadline(), Some(t(22)));
        assert_eq!(change.map(|c| c.kind), Some(EventKind::Updated));
        let (reregistered, change) = saved(register(Some(&held), &spec(10), t(12)));
        assert!(!reregistered.lease_held);
        assert_eq!(change.map(|c| c.kind), Some(EventKind::Updated));

        // Left unrenewed, the lapse applies when self-preservation ends.
        let (expired, change) = saved(expire_lease(&held, t(30)));
        assert_eq!(expired.status, Status::Critical);
        assert!(!expired.lease_held);
        assert_eq!(change.map(|c| c.reason), Some(Reason::LeaseExpired));
    }

    #[test]
    fn a_new_url_resets_the_check_verdict() {
        let mut checked = spec(0);
        checked.check = Some(check());
        let (r, _) = saved(register(None, &checked, t(0)));
        let (r, _) = saved(record_check(&r, &check(), &outcome(Status::Critical), t(1)));
        let (r, _) = saved(record_check(&r, &check(), &outcome(Status::Critical), t(2)));
        assert_eq!(r.status, Status::Critical);
        let mut moved = checked.clone();
        moved.url = "http://10.0.0.2:4040".into();
        match register(Some(&r), &moved, t(3)) {
            Mutation::Save {
                record,
                reschedule_check,
                ..
            } => {
                assert!(reschedule_check, "the new URL is checked soon");
                assert_eq!(record.status, Status::Passing);
                assert_eq!(record.last_check, None);
            }
            other => panic!("expected a save, got {other:?}"),
        }
    }

    #[test]
    fn heartbeat_on_a_live_lease_appends_nothing() {
        let (r, _) = saved(register(None, &spec(10), t(0)));
        let (r2, change) = saved(heartbeat(&r, t(3)));
        assert_eq!(change, None);
        assert_eq!(r2.lease_expires_at, Some(t(13)));
    }

    #[test]
    fn no_lease_never_expires() {
        let (r, _) = saved(register(None, &spec(0), t(0)));
        assert_eq!(r.lease_expires_at, None);
        assert_eq!(expire_lease(&r, t(1_000_000)), Mutation::Unchanged);
    }

    #[test]
    fn two_check_failures_make_critical_one_success_passing_429_warning() {
        let (r, _) = saved(register(None, &spec(0), t(0)));
        let r = with_check(r);
        let (r, change) = saved(record_check(&r, &check(), &outcome(Status::Critical), t(1)));
        assert_eq!(
            (r.status, change),
            (Status::Passing, None),
            "one failure is not enough"
        );
        let (r, change) = saved(record_check(&r, &check(), &outcome(Status::Critical), t(2)));
        assert_eq!(r.status, Status::Critical);
        assert_eq!(change.map(|c| c.reason), Some(Reason::CheckFailed));
        let (r, change) = saved(record_check(&r, &check(), &outcome(Status::Passing), t(3)));
        assert_eq!(r.status, Status::Passing);
        assert_eq!(change.map(|c| c.reason), Some(Reason::CheckPassed));
        let (r, change) = saved(record_check(&r, &check(), &outcome(Status::Warning), t(4)));
        assert_eq!(r.status, Status::Warning);
        assert_eq!(change.map(|c| c.reason), Some(Reason::CheckThrottled));
        assert_eq!(r.last_check.map(|c| c.at), Some(t(4)));
    }

    #[test]
    fn results_of_a_replaced_check_are_dropped() {
        let (r, _) = saved(register(None, &spec(0), t(0)));
        let r = with_check(r);
        let mut other = check();
        other.http = Some("/other".into());
        assert_eq!(
            record_check(&r, &other, &outcome(Status::Critical), t(1)),
            Mutation::Unchanged
        );
    }

    #[test]
    fn dead_is_dead_even_in_maintenance() {
        let (r, _) = saved(register(None, &spec(10), t(0)));
        let (r, change) = saved(set_maintenance(&r, true, t(1)));
        assert_eq!(r.status, Status::Maintenance);
        assert_eq!(change.map(|c| c.reason), Some(Reason::MaintenanceSet));
        let (r, _) = saved(expire_lease(&r, t(11)));
        assert_eq!(r.status, Status::Critical);
        let (r, _) = saved(heartbeat(&r, t(12)));
        assert_eq!(
            r.status,
            Status::Maintenance,
            "maintenance survives the outage"
        );
        let (r, change) = saved(set_maintenance(&r, false, t(13)));
        assert_eq!(r.status, Status::Passing);
        assert_eq!(change.map(|c| c.reason), Some(Reason::MaintenanceCleared));
        assert_eq!(set_maintenance(&r, false, t(14)), Mutation::Unchanged);
    }

    #[test]
    fn a_maintenance_reason_lasts_while_maintenance_does() {
        let (r, _) = saved(register(None, &spec(10), t(0)));
        let (r, change) = saved(set_maintenance_because(
            &r,
            true,
            Some("deploy".into()),
            t(1),
        ));
        assert_eq!(r.maintenance_reason.as_deref(), Some("deploy"));
        assert_eq!(change.map(|c| c.reason), Some(Reason::MaintenanceSet));
        let (r, change) = saved(set_maintenance_because(
            &r,
            true,
            Some("migrate".into()),
            t(2),
        ));
        assert_eq!(
            change.map(|c| c.kind),
            Some(EventKind::Updated),
            "a new reason is shown"
        );
        assert_eq!(
            set_maintenance_because(&r, true, Some("migrate".into()), t(3)),
            Mutation::Unchanged
        );
        let (r, _) = saved(set_maintenance(&r, false, t(4)));
        assert_eq!(r.maintenance_reason, None, "cleared with maintenance");
        assert_eq!(
            set_maintenance_because(&r, false, Some("ignored".into()), t(5)),
            Mutation::Unchanged
        );
    }

    #[test]
    fn deregister_removes_with_the_last_status() {
        let (r, _) = saved(register(None, &spec(10), t(0)));
        match deregister(&r) {
            Mutation::Delete { change } => {
                assert_eq!(change.kind, EventKind::Removed);
                assert_eq!((change.from, change.to), (Some(Status::Passing), None));
            }
            other => panic!("expected a removal, got {other:?}"),
        }
    }
}
