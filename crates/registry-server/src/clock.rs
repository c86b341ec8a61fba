//! The registry's wall clock, at the precision we store (milliseconds, so a time written
//! and read back compares equal). Every time the registry dates (registrations, leases,
//! lapses, the outage grace, `?at=`) comes from the one `Clock` in its settings, so a test
//! about leases can move that clock forward instead of waiting for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

/// The system's time, plus however far a test has moved it forward (always zero outside
/// tests: nothing but [`Clock::advance`] changes it).
#[derive(Clone, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now, in whole milliseconds. Counted from the system's time in milliseconds: through
    /// chrono's `Utc::now` a date is made, taken apart and made again at the precision,
    /// twice the work, on every heartbeat.
    pub fn now(&self) -> DateTime<Utc> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let millis = i64::try_from(since_epoch.as_millis())
            .unwrap_or(i64::MAX)
            .saturating_add(self.ahead_ms.load(Ordering::Relaxed));
        DateTime::from_timestamp_millis(millis).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Moves this clock, and every copy of it, `by` forward: for tests, which share one
    /// clock between the registries they start.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ahead_ms.fetch_add(by, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ahead = Duration::from_millis(self.ahead_ms.load(Ordering::Relaxed).unsigned_abs());
        write!(f, "Clock {{ ahead: {ahead:?} }}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_one_clock_and_times_are_whole_milliseconds() {
        let clock = Clock::default();
        let copy = clock.clone();
        let before = clock.now();
        copy.advance(Duration::from_secs(60));
        let after = clock.now();
        assert!(after - before >= chrono::Duration::seconds(60));
        assert!(after - before < chrono::Duration::seconds(70));
        assert_eq!(after.timestamp_subsec_nanos() % 1_000_000, 0);
    }

    #[test]
    fn now_is_the_system_time_to_the_millisecond() {
        let clock = Clock::default();
        let before = Utc::now();
        let now = clock.now();
        let after = Utc::now();
        assert!(now.timestamp_millis() >= before.timestamp_millis());
        assert!(now <= after, "{now} after {after}");
    }
}
