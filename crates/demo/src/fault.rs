//! Fault injection, so demos and tests can make an instance slow, flaky or dead on
//! demand: `PUT /admin/fault` at run time, or `FAULT_*` env vars at start.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What is wrong with this instance on purpose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Extra time before every business answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of business requests answered with HTTP 500 (0.0 to 1.0).
    #[serde(default)]
    pub error_rate: f64,
    /// Answer 503 to everything but `/admin/*` and stop heartbeats (the lease lapses):
    /// the instance plays dead.
    #[serde(default)]
    pub down: bool,
}

impl Fault {
    /// Reads `FAULT_LATENCY_MS`, `FAULT_ERROR_RATE` and `FAULT_DOWN`.
    pub fn from_env() -> Result<Self, String> {
        let read = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut fault = Self::default();
        if let Some(raw) = read("FAULT_LATENCY_MS") {
            fault.latency_ms = raw
                .parse()
                .map_err(|_| format!("FAULT_LATENCY_MS must be whole milliseconds, not '{raw}'"))?;
        }
        if let Some(raw) = read("FAULT_ERROR_RATE") {
            fault.error_rate = raw.parse().map_err(|_| {
                format!("FAULT_ERROR_RATE must be a number from 0 to 1, not '{raw}'")
            })?;
        }
        if let Some(raw) = read("FAULT_DOWN") {
            fault.down = matches!(raw.as_str(), "1" | "true" | "yes");
        }
        fault.validate()?;
        Ok(fault)
    }

    /// Checks the ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("error_rate must be from 0 to 1".into());
        }
        if self.latency_ms > 600_000 {
            return Err("latency_ms must be at most 600000".into());
        }
        Ok(())
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    /// Whether this request should fail, drawn at the configured rate.
    pub fn should_fail(&self) -> bool {
        self.error_rate > 0.0 && rand::random::<f64>() < self.error_rate
    }
}

/// The fault in force, shared by the handlers.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<RwLock<Fault>>);

impl FaultSwitch {
    pub fn new(fault: Fault) -> Self {
        Self(Arc::new(RwLock::new(fault)))
    }

    pub fn get(&self) -> Fault {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, fault: Fault) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let bad = Fault {
            error_rate: 1.5,
            ..Fault::default()
        };
        assert!(
            bad.validate()
                .expect_err("out of range")
                .contains("error_rate")
        );
        assert!(Fault::default().validate().is_ok());
    }

    #[test]
    fn error_rate_extremes() {
        let never = Fault::default();
        let always = Fault {
            error_rate: 1.0,
            ..Fault::default()
        };
        assert!((0..100).all(|_| !never.should_fail()));
        assert!((0..100).all(|_| always.should_fail()));
    }
}
