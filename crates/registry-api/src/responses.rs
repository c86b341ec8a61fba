//! Response bodies of the read routes, shared with the client so both sides decode the
//! same types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Event, Instance, Status};

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    pub index: u64,
    pub services: Vec<ServiceSummary>,
}

/// One service with its instance count per status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub instances: u64,
    pub passing: u64,
    pub warning: u64,
    pub critical: u64,
    pub maintenance: u64,
}

/// `GET /v1/services/{service}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceInstances {
    pub index: u64,
    pub name: String,
    pub instances: Vec<Instance>,
}

/// `GET /v1/status`: the whole system at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SystemStatus {
    pub index: u64,
    #[serde(serialize_with = "crate::time::serialize")]
    pub at: DateTime<Utc>,
    /// The oldest moment `GET /v1/status?at=` answers for (where the kept history
    /// starts); absent when the database could not be asked.
    #[serde(default)]
    #[serde(serialize_with = "crate::time::serialize_option")]
    pub history_starts_at: Option<DateTime<Utc>>,
    /// The database's epoch (the `Registry-Epoch` header); absent from registries older
    /// than it.
    #[serde(default)]
    pub epoch: Option<String>,
    /// Whether the registry held lease lapses at that moment (docs/operations.md,
    /// Self-preservation).
    #[serde(default)]
    pub self_preservation: SelfPreservation,
    pub services: Vec<ServiceStatus>,
}

/// The registry's self-preservation: while `active`, lease lapses are held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SelfPreservation {
    pub active: bool,
    /// When it began; `null` when not active.
    #[serde(serialize_with = "crate::time::serialize_option")]
    pub since: Option<DateTime<Utc>>,
    /// Instances whose lapse is held now (`lease_held: true`).
    pub held: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceStatus {
    pub name: String,
    pub status: Status,
    pub instances: Vec<Instance>,
}

impl ServiceStatus {
    /// Rolls instance statuses up: `critical` if none is passing or warning, `maintenance`
    /// if all are in maintenance, `warning` if any is not passing, else `passing`.
    pub fn roll_up(instances: &[Instance]) -> Status {
        let all_maintenance =
            !instances.is_empty() && instances.iter().all(|i| i.status == Status::Maintenance);
        if all_maintenance {
            return Status::Maintenance;
        }
        let any_up = instances
            .iter()
            .any(|i| matches!(i.status, Status::Passing | Status::Warning));
        if !any_up {
            Status::Critical
        } else if instances.iter().any(|i| i.status != Status::Passing) {
            Status::Warning
        } else {
            Status::Passing
        }
    }
}

/// `PUT .../heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    pub status: Status,
    #[serde(serialize_with = "crate::time::serialize_option")]
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// `GET /v1/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub events: Vec<Event>,
}
