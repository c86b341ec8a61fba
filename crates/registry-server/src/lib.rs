//! The central-registry server as a library; `main.rs` is a thin wrapper around it.

pub mod clock;
pub mod lifecycle;
pub mod record;
pub mod store;
#[doc(hidden)]
pub mod testing;
