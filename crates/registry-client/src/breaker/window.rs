//! The calls a closed breaker judges, kept as counts: the last N calls
//! ([`SlidingWindow::Count`]) or the calls of the last D ([`SlidingWindow::Time`]).
//!
//! A time window keeps one count per bucket (twenty buckets per window) rather than one
//! entry per call, so that its memory does not grow with traffic. A call therefore leaves
//! the window when its bucket does: never older than D, after at least 95% of D.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::SlidingWindow;

/// Buckets per time window: the window's resolution is a twentieth of its span.
const TIME_WINDOW_BUCKETS: u128 = 20;

/// Counted calls, failed ones and slow ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) calls: u64,
    pub(super) failed: u64,
    pub(super) slow: u64,
}

impl Tally {
    pub(super) fn add(&mut self, other: Tally) {
        self.calls += other.calls;
        self.failed += other.failed;
        self.slow += other.slow;
    }

    fn remove(&mut self, other: Tally) {
        self.calls -= other.calls;
        self.failed -= other.failed;
        self.slow -= other.slow;
    }

    pub(super) fn one(failed: bool, slow: bool) -> Self {
        Self {
            calls: 1,
            failed: u64::from(failed),
            slow: u64::from(slow),
        }
    }

    /// Failure and slow-call rates; zero for no calls (never judged then anyway).
    pub(super) fn rates(self) -> (f64, f64) {
        if self.calls == 0 {
            return (0.0, 0.0);
        }
        let calls = self.calls as f64;
        (self.failed as f64 / calls, self.slow as f64 / calls)
    }
}

/// The calls of the closed state, by count or by time.
#[derive(Debug)]
pub(super) enum Window {
    Count {
        size: usize,
        calls: VecDeque<Tally>,
        total: Tally,
    },
    Time {
        span_nanos: u128,
        bucket_nanos: u128,
        /// Bucket `i` covers `[origin + i * bucket, origin + (i + 1) * bucket)`.
        origin: Instant,
        /// Oldest first, only buckets that received calls.
        buckets: VecDeque<(u128, Tally)>,
        total: Tally,
    },
}

impl Window {
    pub(super) fn new(kind: SlidingWindow, now: Instant) -> Self {
        match kind {
            SlidingWindow::Count(size) => Self::Count {
                size: size as usize,
                calls: VecDeque::new(),
                total: Tally::default(),
            },
            SlidingWindow::Time(span) => {
                let span_nanos = span.as_nanos();
                Self::Time {
                    span_nanos,
                    bucket_nanos: (span_nanos / TIME_WINDOW_BUCKETS).max(1),
                    origin: now,
                    buckets: VecDeque::new(),
                    total: Tally::default(),
                }
            }
        }
    }

    pub(super) fn reset(&mut self, now: Instant) {
        *self = match self {
            Self::Count { size, .. } => Self::Count {
                size: *size,
                calls: VecDeque::new(),
                total: Tally::default(),
            },
            Self::Time {
                span_nanos,
                bucket_nanos,
                ..
            } => Self::Time {
                span_nanos: *span_nanos,
                bucket_nanos: *bucket_nanos,
                origin: now,
                buckets: VecDeque::new(),
                total: Tally::default(),
            },
        };
    }

    pub(super) fn record(&mut self, now: Instant, call: Tally) {
        match self {
            Self::Count { size, calls, total } => {
                if calls.len() >= *size
                    && let Some(oldest) = calls.pop_front()
                {
                    total.remove(oldest);
                }
                calls.push_back(call);
                total.add(call);
            }
            Self::Time {
                bucket_nanos,
                origin,
                buckets,
                total,
                ..
            } => {
                let index = now.saturating_duration_since(*origin).as_nanos() / *bucket_nanos;
                match buckets.back_mut() {
                    Some((last, tally)) if *last == index => tally.add(call),
                    _ => buckets.push_back((index, call)),
                }
                total.add(call);
                self.evict(now);
            }
        }
    }

    /// The counts of the calls still in the window at `now`.
    pub(super) fn tally(&mut self, now: Instant) -> Tally {
        self.evict(now);
        match self {
            Self::Count { total, .. } | Self::Time { total, .. } => *total,
        }
    }

    /// Drops the buckets that started a whole span ago or more: every call left is younger
    /// than the span.
    fn evict(&mut self, now: Instant) {
        if let Self::Time {
            span_nanos,
            bucket_nanos,
            origin,
            buckets,
            total,
        } = self
        {
            let elapsed = now.saturating_duration_since(*origin).as_nanos();
            while let Some(&(index, tally)) = buckets.front() {
                if index * *bucket_nanos + *span_nanos > elapsed {
                    break;
                }
                total.remove(tally);
                buckets.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SUCCESS: Tally = Tally {
        calls: 1,
        failed: 0,
        slow: 0,
    };
    const FAILURE: Tally = Tally {
        calls: 1,
        failed: 1,
        slow: 0,
    };

    fn counts(tally: Tally) -> (u64, u64) {
        (tally.calls, tally.failed)
    }

    #[test]
    fn a_count_window_keeps_the_last_n_calls() {
        let now = Instant::now();
        let mut window = Window::new(SlidingWindow::Count(4), now);
        for call in [FAILURE, SUCCESS, SUCCESS, SUCCESS] {
            window.record(now, call);
        }
        assert_eq!(counts(window.tally(now)), (4, 1));
        window.record(now, SUCCESS); // the failure leaves
        assert_eq!(counts(window.tally(now)), (4, 0));
        window.record(now, FAILURE);
        window.record(now, FAILURE);
        assert_eq!(counts(window.tally(now)), (4, 2));
        window.reset(now);
        assert_eq!(counts(window.tally(now)), (0, 0));
    }

    #[test]
    fn a_time_window_forgets_calls_older_than_its_span() {
        let start = Instant::now();
        let at = |millis| start + Duration::from_millis(millis);
        let mut window = Window::new(SlidingWindow::Time(Duration::from_secs(10)), start);
        for _ in 0..4 {
            window.record(at(0), FAILURE);
        }
        for _ in 0..5 {
            window.record(at(3_000), SUCCESS);
        }
        assert_eq!(counts(window.tally(at(9_900))), (9, 4));
        assert_eq!(
            counts(window.tally(at(10_000))),
            (5, 0),
            "the failures are 10 s old"
        );
        window.record(at(10_000), FAILURE);
        assert_eq!(
            counts(window.tally(at(13_000))),
            (1, 1),
            "the successes too"
        );
        assert_eq!(counts(window.tally(at(20_000))), (0, 0));
        window.reset(at(20_000));
        window.record(at(20_000), SUCCESS);
        assert_eq!(
            counts(window.tally(at(29_999))),
            (1, 0),
            "reset moves the origin"
        );
    }

    #[test]
    fn a_time_window_has_no_size_cap() {
        let start = Instant::now();
        let mut window = Window::new(SlidingWindow::Time(Duration::from_secs(1)), start);
        for step in 0..100 {
            window.record(start + Duration::from_millis(5 * step), SUCCESS);
        }
        assert_eq!(window.tally(start + Duration::from_millis(500)).calls, 100);
    }
}
