//! The delays between retries, computed one way for every loop that retries the registry
//! or its database: the client's registration and discovery, the operator's `registry
//! watch` and the server's change feed.
//!
//! A retry loop keeps its own count of failures in a row and asks [`Backoff::delay`] for
//! the wait before the next attempt; nothing here sleeps or keeps state, so the delays are
//! tested without a clock.

use std::time::Duration;

/// How much of each delay is random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// None: the delay is the step itself. For a single process (an operator's terminal,
    /// a server's own feed), where nobody else retries in step with it.
    None,
    /// "Equal jitter": half the step fixed, half drawn at random. The fixed half keeps a
    /// crowd of clients from hammering a registry that comes back; the random half spreads
    /// them out, so that clients cut off together do not retry together.
    Equal,
}

/// Exponential backoff: a step that starts at `initial` and is multiplied by `factor`
/// after each failure, up to `max`, with some [`Jitter`] on each delay.
///
/// ```
/// use std::time::Duration;
/// use registry_api::{Backoff, Jitter};
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// let steps: Vec<u128> = (1..=8).map(|n| backoff.step(n).as_millis()).collect();
/// assert_eq!(steps, [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
///
/// let jittered = backoff.with_jitter(Jitter::Equal);
/// let delay = jittered.delay(3);
/// assert!(delay >= Duration::from_millis(200) && delay <= Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: u32,
    jitter: Jitter,
}

impl Backoff {
    /// Doubling from `initial` up to `max`, without jitter. A `max` below `initial` caps
    /// every step at `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            factor: 2,
            jitter: Jitter::None,
        }
    }

    /// The same backoff with each step `factor` times the previous one (2 by default).
    #[must_use]
    pub const fn with_factor(mut self, factor: u32) -> Self {
        self.factor = factor;
        self
    }

    /// The same backoff with `jitter` on each delay.
    #[must_use]
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first step.
    pub const fn initial(&self) -> Duration {
        self.initial
    }

    /// The cap on every step.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The step of attempt number `attempt` of a run of failures (1 for the first retry):
    /// `initial × factor^(attempt − 1)`, capped at `max`. Attempt 0 is treated as 1.
    pub fn step(&self, attempt: u32) -> Duration {
        let mut step = self.initial.min(self.max);
        // Stops as soon as the step no longer grows (the cap, a zero step or a factor of
        // 1), so a run of millions of failures costs a few multiplications.
        for _ in 1..attempt {
            let next = step.saturating_mul(self.factor).min(self.max);
            if next == step {
                break;
            }
            step = next;
        }
        step
    }

    /// The delay before attempt number `attempt` (1 for the first retry): its
    /// [`step`](Self::step), with the jitter drawn from the thread's random generator.
    pub fn delay(&self, attempt: u32) -> Duration {
        let step = self.step(attempt);
        match self.jitter {
            Jitter::None => step,
            Jitter::Equal => {
                let half = step / 2;
                let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
                half.saturating_add(Duration::from_nanos(rand::random_range(0..=spread)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn steps_grow_by_the_factor_up_to_the_cap() {
        let backoff = Backoff::new(ms(500), ms(10_000));
        let steps: Vec<Duration> = (1..=8).map(|n| backoff.step(n)).collect();
        assert_eq!(
            steps,
            [500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000].map(ms)
        );
        assert_eq!(backoff.step(0), ms(500), "attempt 0 does not underflow");
        assert_eq!(backoff.step(u32::MAX), ms(10_000));

        let tripling = backoff.with_factor(3);
        let steps: Vec<Duration> = (1..=5).map(|n| tripling.step(n)).collect();
        assert_eq!(steps, [500, 1_500, 4_500, 10_000, 10_000].map(ms));
    }

    #[test]
    fn degenerate_settings_neither_loop_nor_overflow() {
        assert_eq!(Backoff::new(ms(0), ms(0)).delay(5), Duration::ZERO);
        assert_eq!(
            Backoff::new(ms(0), ms(100))
                .with_jitter(Jitter::Equal)
                .delay(u32::MAX),
            Duration::ZERO
        );
        assert_eq!(Backoff::new(ms(300), ms(100)).step(1), ms(100));
        assert_eq!(
            Backoff::new(ms(300), ms(1_000)).with_factor(1).step(9),
            ms(300)
        );
        let huge = Backoff::new(Duration::from_secs(1), Duration::MAX);
        assert_eq!(huge.step(u32::MAX), Duration::MAX);
        assert!(huge.with_jitter(Jitter::Equal).delay(u32::MAX) >= Duration::MAX / 2);
    }

    #[test]
    fn no_jitter_waits_the_step() {
        let backoff = Backoff::new(ms(100), ms(5_000));
        for attempt in 1..=10 {
            assert_eq!(backoff.delay(attempt), backoff.step(attempt));
        }
    }

    #[test]
    fn equal_jitter_stays_between_half_the_step_and_the_step() {
        let backoff = Backoff::new(ms(100), ms(5_000)).with_jitter(Jitter::Equal);
        for attempt in [1, 2, 3, 6, 7, 10, 31, 32, 33, 1_000, u32::MAX] {
            let step = backoff.step(attempt);
            for _ in 0..200 {
                let delay = backoff.delay(attempt);
                assert!(
                    delay >= step / 2 && delay <= step,
                    "attempt {attempt}: {delay:?} outside [{:?}, {step:?}]",
                    step / 2
                );
            }
        }
    }

    #[test]
    fn equal_jitter_spreads_delays() {
        let backoff = Backoff::new(ms(100), ms(5_000)).with_jitter(Jitter::Equal);
        let delays: BTreeSet<Duration> = (0..20).map(|_| backoff.delay(6)).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
