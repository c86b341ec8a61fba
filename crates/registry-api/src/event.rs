//! Events: every change of state appends one, with the global index it was given. They
//! are the history, and what blocking queries, event streams and other replicas follow
//! (docs/api.md, Index and events).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Instance, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Registered,
    Updated,
    Status,
    Removed,
    /// A kind this client does not know (sent by a newer registry): skip it.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// The name on the wire (`registered`), also used in the CLI, metric labels and the
    /// database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Updated => "updated",
            Self::Status => "status",
            Self::Removed => "removed",
            Self::Unknown => "unknown",
        }
    }
}

/// Why a change happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Registered,
    Updated,
    Heartbeat,
    MaintenanceSet,
    MaintenanceCleared,
    CheckPassed,
    CheckFailed,
    CheckThrottled,
    LeaseExpired,
    /// The lease ran out during self-preservation: the lapse is held, the status kept.
    LeaseHeld,
    Reaped,
    Deregistered,
    /// A reason this client does not know (sent by a newer registry).
    #[serde(other)]
    Unknown,
}

impl Reason {
    /// The name on the wire (`lease_expired`), also used in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Updated => "updated",
            Self::Heartbeat => "heartbeat",
            Self::MaintenanceSet => "maintenance_set",
            Self::MaintenanceCleared => "maintenance_cleared",
            Self::CheckPassed => "check_passed",
            Self::CheckFailed => "check_failed",
            Self::CheckThrottled => "check_throttled",
            Self::LeaseExpired => "lease_expired",
            Self::LeaseHeld => "lease_held",
            Self::Reaped => "reaped",
            Self::Deregistered => "deregistered",
            Self::Unknown => "unknown",
        }
    }
}

/// One change of state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub index: u64,
    #[serde(serialize_with = "crate::time::serialize")]
    pub at: DateTime<Utc>,
    pub service: String,
    /// The instance id.
    pub instance: String,
    pub kind: EventKind,
    /// `null` on `registered`.
    pub from: Option<Status>,
    /// `null` on `removed`.
    pub to: Option<Status>,
    pub reason: Reason,
    /// The instance after the change (its last state on removal).
    pub snapshot: Instance,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_str` and serde must never disagree: the CLI and the metrics speak the API's words.
    fn wire(value: impl Serialize) -> String {
        match serde_json::to_value(value) {
            Ok(serde_json::Value::String(name)) => name,
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn names_are_the_wire_names() {
        for kind in [
            EventKind::Registered,
            EventKind::Updated,
            EventKind::Status,
            EventKind::Removed,
        ] {
            assert_eq!(wire(kind), kind.as_str());
        }
        for reason in [
            Reason::Registered,
            Reason::Updated,
            Reason::Heartbeat,
            Reason::MaintenanceSet,
            Reason::MaintenanceCleared,
            Reason::CheckPassed,
            Reason::CheckFailed,
            Reason::CheckThrottled,
            Reason::LeaseExpired,
            Reason::LeaseHeld,
            Reason::Reaped,
            Reason::Deregistered,
        ] {
            assert_eq!(wire(reason), reason.as_str());
        }
    }

    #[test]
    fn kinds_and_reasons_of_a_newer_registry_read_as_unknown() {
        let kind: EventKind = serde_json::from_str("\"renamed\"").expect("kind");
        assert_eq!(kind, EventKind::Unknown);
        let reason: Reason = serde_json::from_str("\"moved_zone\"").expect("reason");
        assert_eq!(reason, Reason::Unknown);
    }
}
