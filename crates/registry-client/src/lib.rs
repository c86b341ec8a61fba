//! Client library of central-registry.
//!
//! Services and tools talk to the registry through this crate rather than through ad-hoc
//! HTTP so that every caller agrees with the server on routes, bodies and errors (the wire
//! types come from [`registry_api`], shared with the server).
//!
//! The low-level layer is [`RegistryApi`], one typed async method per route of the v1
//! API, and [`EventStream`], the parsed change feed of `GET /v1/events`. The registration
//! handle, discovery cache, load balancer, circuit breaker and service caller are built on
//! top of it (docs/architecture.md, The client library).
//!
//! ```no_run
//! # async fn demo() -> Result<(), registry_client::ClientError> {
//! use registry_client::{InstanceSpec, RegistryApi};
//!
//! let api = RegistryApi::new("http://localhost:8000")?.with_token("s3cret");
//! let registered = api
//!     .register("sum", "sum-1", &InstanceSpec::new("http://10.0.0.7:4040"))
//!     .await?;
//! println!("created: {}, status: {:?}", registered.created, registered.instance.status);
//! let sum = api.service("sum", None).await?;
//! println!("{} instance(s) at index {}", sum.instances.len(), sum.index);
//! # Ok(())
//! # }
//! ```

mod api;
pub mod balancer;
pub mod breaker;
pub mod caller;
pub mod discovery;
mod error;
mod events;
pub mod metrics;
pub mod registration;
pub mod trace;

pub use api::{PageRequest, Registered, RegistryApi};
pub use error::{ClientError, Result};
pub use events::{EventStream, StreamItem};
// Re-exports of the layers above RegistryApi (one line per module):
pub use balancer::RoundRobin;
pub use breaker::{
    BreakerConfig, BreakerConfigBuilder, BreakerSnapshot, BreakerState, Breakers, CircuitBreaker,
    NotPermitted, Outcome, Permit, SlidingWindow, StateReport, Transition,
};
pub use caller::{CallError, CallResponse, CallerOptions, ServiceClient};
pub use discovery::{Discovery, DiscoveryOptions, Resolved};
pub use registration::{Registration, RegistrationOptions, RegistrationState};

/// The wire types, re-exported so that a caller of this crate names them without a second
/// dependency.
pub use registry_api;
pub use registry_api::{
    Event, EventKind, HeartbeatResponse, History, Instance, InstanceSpec, Reason, ServiceInstances,
    ServiceList, Status, StatusCounts, StatusSummary, SystemStatus,
};
