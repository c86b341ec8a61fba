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
    /// Where the next page starts (`cursor=`); only in a paged answer that has one more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
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
    /// Where the next page starts (`cursor=`); only in a paged answer that has one more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/status?summary=true`: the whole system counted, with its critical instances
/// first, instead of every instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusSummary {
    pub index: u64,
    #[serde(serialize_with = "crate::time::serialize")]
    pub at: DateTime<Utc>,
    /// As in [`SystemStatus`].
    #[serde(default)]
    #[serde(serialize_with = "crate::time::serialize_option")]
    pub history_starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default)]
    pub self_preservation: SelfPreservation,
    /// Instances per status.
    pub instances: StatusCounts,
    /// Services (those with instances) per rolled-up status ([`ServiceStatus::roll_up`]).
    pub services: StatusCounts,
    /// The critical instances in service then id order, at most
    /// [`StatusSummary::MAX_CRITICAL`] of them.
    pub critical: Vec<Instance>,
    /// How many instances are critical, listed or not.
    pub critical_total: u64,
}

impl StatusSummary {
    /// Most critical instances one summary lists.
    pub const MAX_CRITICAL: usize = 100;
}

/// How many of something (instances, services) have each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusCounts {
    pub total: u64,
    pub passing: u64,
    pub warning: u64,
    pub critical: u64,
    pub maintenance: u64,
}

impl StatusCounts {
    /// The counts of these statuses.
    pub fn of(statuses: impl IntoIterator<Item = Status>) -> Self {
        let mut counts = Self::default();
        for status in statuses {
            counts.add(status);
        }
        counts
    }

    pub fn add(&mut self, status: Status) {
        self.total += 1;
        *self.slot(status) += 1;
    }

    pub fn remove(&mut self, status: Status) {
        self.total = self.total.saturating_sub(1);
        let slot = self.slot(status);
        *slot = slot.saturating_sub(1);
    }

    fn slot(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Passing => &mut self.passing,
            Status::Warning => &mut self.warning,
            Status::Critical => &mut self.critical,
            Status::Maintenance => &mut self.maintenance,
        }
    }

    /// The status of a service whose instances are counted here: `maintenance` if all are
    /// in maintenance, `critical` if none is passing or warning, `warning` if any is not
    /// passing, else `passing`.
    pub fn roll_up(&self) -> Status {
        if self.total > 0 && self.maintenance == self.total {
            Status::Maintenance
        } else if self.passing + self.warning == 0 {
            Status::Critical
        } else if self.passing < self.total {
            Status::Warning
        } else {
            Status::Passing
        }
    }
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
    /// Rolls instance statuses up, as [`StatusCounts::roll_up`] says.
    pub fn roll_up(instances: &[Instance]) -> Status {
        StatusCounts::of(instances.iter().map(|i| i.status)).roll_up()
    }
}

/// `PUT .../heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    pub status: Status,
    #[serde(serialize_with = "crate::time::serialize_option")]
    pub lease_expires_at: Option<DateTime<Utc>>,
}

impl HeartbeatResponse {
    /// The answer's JSON, the bytes its `Serialize` writes, written by hand: it is the
    /// registry's most frequent answer, and serde's way (its escaping, chrono's formatting
    /// into a `String`) cost about a twelfth of a heartbeat's instructions. Neither a
    /// status nor a time has a character JSON escapes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(72);
        out.extend_from_slice(br#"{"status":""#);
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.extend_from_slice(br#"","lease_expires_at":"#);
        match self.lease_expires_at {
            Some(at) => {
                out.push(b'"');
                crate::time::append(&mut out, at);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        out
    }
}

/// `GET /v1/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_answer_is_written_as_serde_writes_it() {
        let statuses = [
            Status::Passing,
            Status::Warning,
            Status::Critical,
            Status::Maintenance,
        ];
        let times = [
            0,
            1_000,
            1_800_000_000_123,
            1_800_000_000_000,
            4_102_444_799_999,
        ]
        .map(DateTime::from_timestamp_millis)
        .into_iter()
        .chain([None, DateTime::from_timestamp(1_800_000_000, 123_456_789)]);
        for lease_expires_at in times {
            for status in statuses {
                let answer = HeartbeatResponse {
                    status,
                    lease_expires_at,
                };
                assert_eq!(
                    String::from_utf8(answer.to_json()).expect("UTF-8"),
                    serde_json::to_string(&answer).expect("serialize"),
                    "{answer:?}"
                );
            }
        }
    }
}
