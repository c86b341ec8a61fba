//! The registry state the tests of this crate print: one system of two services, and
//! events of one instance, at fixed times.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use registry_api::{
    Check, CheckResult, Event, EventKind, Instance, Reason, ServiceStatus, Status, SystemStatus,
};

pub(crate) fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 0)
        .single()
        .expect("valid")
        + TimeDelta::seconds(secs)
}

pub(crate) fn instance(id: &str, status: Status, heartbeat_age: i64) -> Instance {
    Instance {
        id: id.into(),
        service: "sum".into(),
        url: format!("http://{id}:4040"),
        status,
        tags: vec![],
        metadata: BTreeMap::new(),
        ttl_seconds: 10,
        check: None,
        registered_at: t(-1000),
        last_heartbeat_at: t(-heartbeat_age),
        lease_expires_at: Some(t(10 - heartbeat_age)),
        status_changed_at: t(-1000),
        last_check: None,
        lease_held: false,
        deregister_critical_after: None,
        lease_status: None,
        lease_output: None,
        maintenance_reason: None,
    }
}

pub(crate) fn system() -> SystemStatus {
    let mut checked = instance("sum-2", Status::Critical, 65);
    checked.check = Some(Check {
        http: Some("/status".into()),
        tcp: None,
        interval_seconds: 5,
        timeout_seconds: 2,
        expect_json: None,
    });
    checked.last_check = Some(CheckResult {
        at: t(-1),
        status: Status::Critical,
        detail: "timed out after 2s\n\x1b[2J".into(),
    });
    let mut unchecked = instance("concat-1", Status::Maintenance, 0);
    unchecked.ttl_seconds = 0;
    unchecked.check = checked.check.clone();
    SystemStatus {
        index: 42,
        at: t(0),
        history_starts_at: None,
        epoch: None,
        self_preservation: Default::default(),
        services: vec![
            ServiceStatus {
                name: "concat".into(),
                status: Status::Maintenance,
                instances: vec![unchecked],
            },
            ServiceStatus {
                name: "sum".into(),
                status: Status::Warning,
                instances: vec![instance("sum-1", Status::Passing, 3), checked],
            },
        ],
        next_cursor: None,
    }
}

pub(crate) fn event(
    index: u64,
    kind: EventKind,
    from: Option<Status>,
    to: Option<Status>,
) -> Event {
    Event {
        index,
        at: t(0),
        service: "sum".into(),
        instance: "sum-1".into(),
        kind,
        from,
        to,
        reason: Reason::LeaseExpired,
        snapshot: instance("sum-1", Status::Critical, 12),
    }
}
