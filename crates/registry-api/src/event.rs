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
    Reaped,
    Deregistered,
}

/// One change of state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub index: u64,
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
