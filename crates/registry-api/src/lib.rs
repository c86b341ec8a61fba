//! Wire types and input validation of the central-registry HTTP API.
//!
//! Shared by the server and the client so that both sides agree on every field by
//! construction. Nothing here does I/O. Beside the wire types sits the little that every
//! crate computes alike without I/O: the delays between retries ([`Backoff`]) and the W3C
//! `traceparent` header ([`TraceParent`]).

mod backoff;
mod duration;
mod error;
mod event;
mod instance;
mod names;
mod responses;
mod seed;
pub mod time;
mod trace_parent;

pub use backoff::{Backoff, Jitter};
pub use duration::{format_duration, parse_duration};
pub use error::{ErrorBody, ErrorCode, ErrorDetail, FieldError};
pub use event::{Event, EventKind, Reason};
pub use instance::{
    Check, CheckResult, CheckSpec, Instance, InstanceSpec, Status, StatusChange, URL_PATTERN,
    Validated, limits, validate_metadata, validate_url,
};
pub use names::{InstanceId, ServiceName};
pub use responses::{
    HeartbeatResponse, History, SelfPreservation, ServiceInstances, ServiceList, ServiceStatus,
    ServiceSummary, StatusCounts, StatusSummary, SystemStatus,
};
pub use seed::{SeedLookup, SeedRegistration, SeedService, SeedServiceSpec};
pub use trace_parent::TraceParent;

/// Name of the response header carrying a service's index on `GET /v1/services/{service}`
/// (`Registry-Index`; header names are case-insensitive, and written in lower case so
/// that servers can make them at compile time).
pub const INDEX_HEADER: &str = "registry-index";

/// Name of the response header carrying the database's epoch on every v1 answer: a random
/// id made when the registry's database was first initialised, shared by every replica on
/// it. A client that sees it change knows the registry lost its state (docs/api.md).
/// `Registry-Epoch`, in lower case as [`INDEX_HEADER`].
pub const EPOCH_HEADER: &str = "registry-epoch";
