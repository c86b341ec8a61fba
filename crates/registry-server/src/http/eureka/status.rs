//! Eureka's instance statuses on the model (docs/eureka.md, Statuses).
//!
//! `UP` is passing and `DOWN` critical (a reported status, held across renewals as
//! Eureka holds it). The three statuses that mean "alive, send no traffic" are the
//! model's maintenance, told apart by the maintenance reason: `STARTING` and `UNKNOWN`
//! are the client's own (its next registration replaces them), anything else is an
//! override (`OUT_OF_SERVICE`, or maintenance set through another API), which outlives
//! the client's registrations until it is removed, as Eureka's overrides do.

use chrono::{DateTime, Utc};
use registry_api::{EventKind, Instance, Reason, Status};

use super::wire::EurekaStatus;
use crate::lifecycle::{Change, Mutation};
use crate::record::InstanceRecord;

/// The maintenance reason of an instance that said it is starting.
pub const STARTING: &str = "STARTING";
/// The maintenance reason of an instance whose override was removed without a value: its
/// next renewal answers 404, so the client registers again.
pub const UNKNOWN: &str = "UNKNOWN";
/// The maintenance reason of a Eureka `OUT_OF_SERVICE` override.
pub const OUT_OF_SERVICE: &str = "OUT_OF_SERVICE";

fn is_clients_own(reason: Option<&str>) -> bool {
    matches!(reason, Some(STARTING | UNKNOWN))
}

/// An instance's status as Eureka shows it.
pub fn of(instance: &Instance) -> EurekaStatus {
    match instance.status {
        Status::Passing | Status::Warning => EurekaStatus::Up,
        Status::Critical => EurekaStatus::Down,
        Status::Maintenance => match instance.maintenance_reason.as_deref() {
            Some(STARTING) => EurekaStatus::Starting,
            Some(UNKNOWN) => EurekaStatus::Unknown,
            _ => EurekaStatus::OutOfService,
        },
    }
}

/// The override Eureka shows (`overriddenstatus`): `OUT_OF_SERVICE` while one holds.
pub fn override_of(instance: &Instance) -> EurekaStatus {
    if instance.status == Status::Maintenance
        && !is_clients_own(instance.maintenance_reason.as_deref())
    {
        EurekaStatus::OutOfService
    } else {
        EurekaStatus::Unknown
    }
}

/// Whether a renewal must answer 404 so that the client registers again.
pub fn needs_registration(instance: &Instance) -> bool {
    instance.status == Status::Maintenance
        && instance.maintenance_reason.as_deref() == Some(UNKNOWN)
}

/// Sets `status` on a record: as the client's own (`forced` false: an override holds) or
/// as an override (`forced` true).
fn set(record: &mut InstanceRecord, status: EurekaStatus, forced: bool) {
    let overridden = record.maintenance && !is_clients_own(record.maintenance_reason.as_deref());
    let keep_override = overridden && !forced;
    let maintenance = |record: &mut InstanceRecord, reason: Option<&str>| {
        if !keep_override {
            record.maintenance = reason.is_some();
            record.maintenance_reason = reason.map(str::to_owned);
        }
    };
    match status {
        EurekaStatus::Up => {
            record.lease_status = None;
            maintenance(record, None);
        }
        EurekaStatus::Down => {
            record.lease_status = Some(Status::Critical);
            maintenance(record, None);
        }
        EurekaStatus::Starting => {
            record.lease_status = None;
            maintenance(record, Some(STARTING));
        }
        EurekaStatus::Unknown => {
            record.lease_status = None;
            maintenance(record, Some(UNKNOWN));
        }
        EurekaStatus::OutOfService => {
            record.maintenance = true;
            record.maintenance_reason = Some(OUT_OF_SERVICE.to_owned());
        }
    }
}

/// `mutation` (a registration, or `Unchanged` for an override on `old`) with `status` set,
/// its status recomputed and its event made to say so.
pub fn with_status(
    old: Option<&InstanceRecord>,
    mutation: Mutation,
    status: EurekaStatus,
    forced: bool,
    now: DateTime<Utc>,
) -> Mutation {
    let (mut record, change, reschedule_check, saved) = match mutation {
        Mutation::Save {
            record,
            change,
            reschedule_check,
        } => (record, change, reschedule_check, true),
        Mutation::Unchanged => match old {
            Some(old) => (old.clone(), None, false, false),
            None => return Mutation::Unchanged,
        },
        delete @ Mutation::Delete { .. } => return delete,
    };
    let before = record.clone();
    set(&mut record, status, forced);
    let after = record.combined_status();
    if after != record.status {
        record.status = after;
        record.status_changed_at = now;
    }
    let moved = before.maintenance != record.maintenance
        || before.maintenance_reason != record.maintenance_reason
        || before.lease_status != record.lease_status;
    if !saved && !moved {
        // An override that is already in place: nothing to write.
        return Mutation::Unchanged;
    }
    let change = match change {
        Some(mut change) => {
            change.to = Some(after);
            if change.kind == EventKind::Status && change.from == Some(after) {
                change.kind = EventKind::Updated;
            }
            Some(change)
        }
        None if moved => {
            let from = old.map_or(before.status, |o| o.status);
            let reason = match (before.maintenance, record.maintenance) {
                (false, true) => Reason::MaintenanceSet,
                (true, false) => Reason::MaintenanceCleared,
                _ => Reason::Updated,
            };
            Some(Change {
                kind: if from == after {
                    EventKind::Updated
                } else {
                    EventKind::Status
                },
                reason,
                from: Some(from),
                to: Some(after),
            })
        }
        None => None,
    };
    Mutation::Save {
        record,
        change,
        reschedule_check,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_api::{InstanceId, InstanceSpec, ServiceName};

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    fn registered(status: EurekaStatus, old: Option<&InstanceRecord>) -> InstanceRecord {
        let now = at();
        let spec = InstanceSpec::new("http://10.0.0.1:8080")
            .validate(
                ServiceName::parse("sum").expect("name"),
                InstanceId::parse("a").expect("id"),
                30,
            )
            .expect("valid");
        let mutation = crate::lifecycle::register(old, &spec, now);
        match with_status(old, mutation, status, false, now) {
            Mutation::Save { record, .. } => record,
            other => panic!("not saved: {other:?}"),
        }
    }

    #[test]
    fn client_statuses_map_onto_the_model() {
        for (status, model) in [
            (EurekaStatus::Up, Status::Passing),
            (EurekaStatus::Down, Status::Critical),
            (EurekaStatus::Starting, Status::Maintenance),
            (EurekaStatus::OutOfService, Status::Maintenance),
            (EurekaStatus::Unknown, Status::Maintenance),
        ] {
            let record = registered(status, None);
            assert_eq!(record.status, model, "{status:?}");
            assert_eq!(of(&record.to_instance()), status);
        }
    }

    #[test]
    fn an_override_outlives_registrations_and_starting_does_not() {
        let now = at();
        let up = registered(EurekaStatus::Up, None);
        let out = match with_status(
            Some(&up),
            Mutation::Unchanged,
            EurekaStatus::OutOfService,
            true,
            now,
        ) {
            Mutation::Save { record, change, .. } => {
                assert_eq!(change.map(|c| c.to), Some(Some(Status::Maintenance)));
                record
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            with_status(
                Some(&out),
                Mutation::Unchanged,
                EurekaStatus::OutOfService,
                true,
                now
            ),
            Mutation::Unchanged
        );
        let again = registered(EurekaStatus::Up, Some(&out));
        assert_eq!(of(&again.to_instance()), EurekaStatus::OutOfService);
        assert_eq!(
            override_of(&again.to_instance()),
            EurekaStatus::OutOfService
        );
        let starting = registered(EurekaStatus::Starting, None);
        let started = registered(EurekaStatus::Up, Some(&starting));
        assert_eq!(started.status, Status::Passing);
    }

    #[test]
    fn an_override_removed_without_a_value_asks_for_a_registration() {
        let now = at();
        let up = registered(EurekaStatus::Up, None);
        let Mutation::Save { record, .. } = with_status(
            Some(&up),
            Mutation::Unchanged,
            EurekaStatus::Unknown,
            true,
            now,
        ) else {
            panic!("not saved");
        };
        assert!(needs_registration(&record.to_instance()));
        assert!(!needs_registration(
            &registered(EurekaStatus::Up, Some(&record)).to_instance()
        ));
    }
}
