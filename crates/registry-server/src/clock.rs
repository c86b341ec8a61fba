//! Wall-clock time at the precision we store (milliseconds), so a time written and read
//! back compares equal.

use chrono::{DateTime, Utc};

/// Now, truncated to whole milliseconds.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}
