//! The per-client write rate limit (`REGISTRY_WRITE_RATE_LIMIT`): one token bucket per
//! client address, so that one misbehaving client (a deployment crash-looping through
//! registrations, a script gone wrong) cannot take the database's write capacity from
//! everyone else. Off by default; reads are never limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked clients, full buckets (clients quiet for a while) are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// Token buckets by client address: `per_second` writes a second, bursts of as many.
#[derive(Debug)]
pub struct WriteRateLimit {
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl WriteRateLimit {
    /// A limit of `per_second` writes per client; `None` for 0 (no limit).
    pub fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            per_second: f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one write from `client`'s bucket at `now`: `Ok` when it may go ahead,
    /// otherwise how long until it may.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let capacity = self.per_second;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, bucket| bucket.refilled(now, capacity).tokens < capacity);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        *bucket = bucket.refilled(now, capacity);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / capacity))
        }
    }
}

impl Bucket {
    /// The bucket at `now`: refilled at `capacity` tokens a second, never above it.
    fn refilled(self, now: Instant, capacity: f64) -> Self {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        Self {
            tokens: (self.tokens + elapsed * capacity).min(capacity),
            updated: now.max(self.updated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn zero_means_no_limit() {
        assert!(WriteRateLimit::new(0).is_none());
    }

    #[test]
    fn a_burst_of_the_rate_then_one_per_interval() {
        let limit = WriteRateLimit::new(5).expect("limit");
        let start = Instant::now();
        for _ in 0..5 {
            assert!(limit.admit(A, start).is_ok());
        }
        let wait = limit.admit(A, start).expect_err("the sixth write waits");
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(limit.admit(A, start + Duration::from_millis(200)).is_ok());
        assert!(limit.admit(A, start + Duration::from_millis(200)).is_err());
    }

    #[test]
    fn clients_have_buckets_of_their_own() {
        let limit = WriteRateLimit::new(1).expect("limit");
        let now = Instant::now();
        assert!(limit.admit(A, now).is_ok());
        assert!(limit.admit(A, now).is_err());
        assert!(limit.admit(B, now).is_ok());
    }

    #[test]
    fn a_quiet_client_gets_no_more_than_one_burst() {
        let limit = WriteRateLimit::new(2).expect("limit");
        let start = Instant::now();
        let later = start + Duration::from_secs(3600);
        assert!(limit.admit(A, start).is_ok());
        assert!(limit.admit(A, later).is_ok());
        assert!(limit.admit(A, later).is_ok());
        assert!(limit.admit(A, later).is_err());
    }
}
