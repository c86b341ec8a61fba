//! The full stored state of one instance, including what the API does not show
//! (maintenance flag, lease and check bookkeeping), and the combined-status rule.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use registry_api::{Check, CheckResult, Instance, Status};
use serde::{Deserialize, Serialize};

/// One instance as the store keeps it. Stored as JSON, so both stores share one shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub service: String,
    pub id: String,
    pub url: String,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub ttl_seconds: u32,
    pub check: Option<Check>,
    #[serde(serialize_with = "registry_api::time::serialize")]
    pub registered_at: DateTime<Utc>,
    #[serde(serialize_with = "registry_api::time::serialize")]
    pub last_heartbeat_at: DateTime<Utc>,
    /// `None` when the instance has no lease.
    #[serde(serialize_with = "registry_api::time::serialize_option")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The lease ran out and no heartbeat came since.
    pub lease_expired: bool,
    /// The lease ran out during self-preservation: the lapse waits, the status stays
    /// (docs/operations.md, Self-preservation). Absent in records written before it existed.
    #[serde(default)]
    pub lease_held: bool,
    /// Set and cleared only through `PUT .../status`.
    pub maintenance: bool,
    /// Verdict of the active check; `None` until it first decides (or without a check).
    pub check_status: Option<Status>,
    /// Consecutive failed checks (two make the check critical).
    pub check_failures: u32,
    pub last_check: Option<CheckResult>,
    pub status: Status,
    #[serde(serialize_with = "registry_api::time::serialize")]
    pub status_changed_at: DateTime<Utc>,
    /// The instance's own reaping time in seconds; `None`: the registry's setting.
    #[serde(default)]
    pub deregister_critical_after: Option<u64>,
    /// The status the instance reported with its lease (`initial_status`, a Consul TTL
    /// check's `warn` or `fail`); cleared by a plain heartbeat or a `pass`.
    #[serde(default)]
    pub lease_status: Option<Status>,
    /// The note that came with the last report (a Consul TTL check's output).
    #[serde(default)]
    pub lease_output: Option<String>,
    /// Why the instance is in maintenance, when it was said (Consul's `reason`).
    #[serde(default)]
    pub maintenance_reason: Option<String>,
}

impl InstanceRecord {
    /// A lapsed lease, a failing check or a reported `critical` is `critical` (also in
    /// maintenance: dead is dead); else `maintenance` if set; else the worst of the check
    /// and the report (docs/api.md, Combined status).
    pub fn combined_status(&self) -> Status {
        let lease_lapsed = self.ttl_seconds > 0 && self.lease_expired;
        let says = |status| self.check_status == Some(status) || self.lease_status == Some(status);
        if lease_lapsed || says(Status::Critical) {
            Status::Critical
        } else if self.maintenance {
            Status::Maintenance
        } else if says(Status::Warning) {
            Status::Warning
        } else {
            Status::Passing
        }
    }

    /// The instance as the API shows it.
    pub fn to_instance(&self) -> Instance {
        Instance {
            id: self.id.clone(),
            service: self.service.clone(),
            url: self.url.clone(),
            status: self.status,
            tags: self.tags.clone(),
            metadata: self.metadata.clone(),
            ttl_seconds: self.ttl_seconds,
            check: self.check.clone(),
            registered_at: self.registered_at,
            last_heartbeat_at: self.last_heartbeat_at,
            lease_expires_at: self.lease_expires_at,
            status_changed_at: self.status_changed_at,
            last_check: self.last_check.clone(),
            deregister_critical_after: self
                .deregister_critical_after
                .map(|secs| registry_api::format_duration(std::time::Duration::from_secs(secs))),
            lease_status: self.lease_status,
            lease_output: self.lease_output.clone(),
            maintenance_reason: self.maintenance_reason.clone(),
            lease_held: self.lease_held,
        }
    }

    /// Since when the instance has been critical, for reaping.
    pub fn critical_since(&self) -> Option<DateTime<Utc>> {
        (self.status == Status::Critical).then_some(self.status_changed_at)
    }

    /// The lease deadline the expiry sweep looks at (`None`: nothing to expire, or the
    /// lapse is held).
    pub fn lease_deadline(&self) -> Option<DateTime<Utc>> {
        if self.lease_held {
            None
        } else {
            self.running_lease()
        }
    }

    /// The deadline of a lease whose lapse is held (`None` when none is held).
    pub fn held_lease_deadline(&self) -> Option<DateTime<Utc>> {
        if self.lease_held {
            self.running_lease()
        } else {
            None
        }
    }

    /// Whether the lease, held or not, ran out by `at`.
    pub fn lease_ran_out(&self, at: DateTime<Utc>) -> bool {
        self.running_lease().is_some_and(|deadline| deadline <= at)
    }

    /// The deadline of a lease that has not lapsed, held or not.
    fn running_lease(&self) -> Option<DateTime<Utc>> {
        if self.ttl_seconds == 0 || self.lease_expired {
            None
        } else {
            self.lease_expires_at
        }
    }
}
