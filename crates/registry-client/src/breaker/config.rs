//! How a breaker judges calls: which calls count ([`SlidingWindow`]), the thresholds that
//! open it, how long it stays open and how many probes half-open lets through, with the
//! defaults and the checks every configuration passes before a breaker uses it.

use std::time::Duration;

use super::window::Tally;

/// Which calls the failure and slow-call rates are computed over while closed.
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::{BreakerConfig, SlidingWindow};
///
/// let by_count = BreakerConfig::builder().sliding_window(SlidingWindow::Count(50)).build();
/// let by_time = BreakerConfig::builder()
///     .sliding_window(SlidingWindow::Time(Duration::from_secs(10)))
///     .build();
/// assert!(by_count.is_ok() && by_time.is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last N calls recorded.
    Count(u32),
    /// The calls recorded during the last D (to a resolution of D/20, see the module docs).
    Time(Duration),
}

/// How a [`CircuitBreaker`](super::CircuitBreaker) judges calls; build one with [`BreakerConfig::builder`].
///
/// The [`Default`] (docs/architecture.md, the client library): a count window of 20 calls judged from 10 calls on,
/// open at 50% failures or when every call is slow (over 2 s), 5 s in open doubling up to
/// 60 s while probes fail, 3 probe calls in half-open.
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::BreakerConfig;
///
/// let config = BreakerConfig::builder()
///     .failure_rate_threshold(0.25)
///     .wait_in_open(Duration::from_secs(1))
///     .build()
///     .expect("a valid configuration");
/// assert_ne!(config, BreakerConfig::default());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub(super) sliding_window: SlidingWindow,
    minimum_calls: u32,
    failure_rate_threshold: f64,
    slow_call_rate_threshold: f64,
    slow_call_duration: Duration,
    pub(super) wait_in_open: Duration,
    pub(super) max_wait_in_open: Duration,
    pub(super) permitted_calls_in_half_open: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            sliding_window: SlidingWindow::Count(20),
            minimum_calls: 10,
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 1.0,
            slow_call_duration: Duration::from_secs(2),
            wait_in_open: Duration::from_secs(5),
            max_wait_in_open: Duration::from_secs(60),
            permitted_calls_in_half_open: 3,
        }
    }
}

impl BreakerConfig {
    /// A builder starting from the defaults.
    ///
    /// ```
    /// use registry_client::breaker::BreakerConfig;
    ///
    /// let config = BreakerConfig::builder().build().expect("the defaults are valid");
    /// assert_eq!(config, BreakerConfig::default());
    /// ```
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            config: Self::default(),
        }
    }

    /// The number of calls the window must hold before its rates mean anything: a count
    /// window smaller than `minimum_calls` is judged as soon as it is full.
    pub(super) fn effective_minimum(&self) -> u64 {
        let minimum = match self.sliding_window {
            SlidingWindow::Count(size) => self.minimum_calls.min(size),
            SlidingWindow::Time(_) => self.minimum_calls,
        };
        u64::from(minimum)
    }

    pub(super) fn is_slow(&self, duration: Duration) -> bool {
        duration > self.slow_call_duration
    }

    /// Whether these counts call for opening.
    pub(super) fn trips(&self, tally: Tally) -> bool {
        let (failure_rate, slow_call_rate) = tally.rates();
        failure_rate >= self.failure_rate_threshold
            || slow_call_rate >= self.slow_call_rate_threshold
    }

    fn validate(&self) -> Result<(), String> {
        fn check_rate(name: &str, rate: f64) -> Result<(), String> {
            // Written so that NaN fails too.
            if rate > 0.0 && rate <= 1.0 {
                Ok(())
            } else {
                Err(format!("{name} must be in (0, 1], got {rate}"))
            }
        }
        match self.sliding_window {
            SlidingWindow::Count(0) => {
                return Err("a count sliding window must hold at least 1 call".to_owned());
            }
            SlidingWindow::Time(span) if span.is_zero() => {
                return Err("a time sliding window must span more than zero".to_owned());
            }
            _ => {}
        }
        if self.minimum_calls == 0 {
            return Err("minimum_calls must be at least 1".to_owned());
        }
        check_rate("failure_rate_threshold", self.failure_rate_threshold)?;
        check_rate("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        if self.wait_in_open.is_zero() {
            return Err("wait_in_open must be more than zero".to_owned());
        }
        if self.max_wait_in_open < self.wait_in_open {
            return Err(format!(
                "max_wait_in_open ({:?}) must be at least wait_in_open ({:?})",
                self.max_wait_in_open, self.wait_in_open
            ));
        }
        if self.permitted_calls_in_half_open == 0 {
            return Err("permitted_calls_in_half_open must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Builds a [`BreakerConfig`]; every setting left alone keeps its default.
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::{BreakerConfig, SlidingWindow};
///
/// let config = BreakerConfig::builder()
///     .sliding_window(SlidingWindow::Time(Duration::from_secs(10)))
///     .minimum_calls(5)
///     .failure_rate_threshold(0.5)
///     .slow_call_rate_threshold(0.8)
///     .slow_call_duration(Duration::from_secs(1))
///     .wait_in_open(Duration::from_secs(5))
///     .max_wait_in_open(Duration::from_secs(60))
///     .permitted_calls_in_half_open(3)
///     .build();
/// assert!(config.is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct BreakerConfigBuilder {
    config: BreakerConfig,
}

impl BreakerConfigBuilder {
    /// Which calls the rates are computed over (default: the last 20).
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, SlidingWindow};
    ///
    /// let config = BreakerConfig::builder().sliding_window(SlidingWindow::Count(100)).build();
    /// assert!(config.is_ok());
    /// ```
    #[must_use]
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.config.sliding_window = window;
        self
    }

    /// How many calls the window must hold before the rates are judged (default 10; a
    /// count window smaller than this is judged once full).
    ///
    /// ```
    /// use registry_client::breaker::BreakerConfig;
    ///
    /// assert!(BreakerConfig::builder().minimum_calls(0).build().is_err());
    /// assert!(BreakerConfig::builder().minimum_calls(5).build().is_ok());
    /// ```
    #[must_use]
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// The failure rate, as a fraction in (0, 1], at or above which the breaker opens
    /// (default 0.5).
    ///
    /// ```
    /// use registry_client::breaker::BreakerConfig;
    ///
    /// assert!(BreakerConfig::builder().failure_rate_threshold(0.3).build().is_ok());
    /// assert!(BreakerConfig::builder().failure_rate_threshold(50.0).build().is_err());
    /// ```
    #[must_use]
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.config.failure_rate_threshold = rate;
        self
    }

    /// The slow-call rate, as a fraction in (0, 1], at or above which the breaker opens
    /// (default 1.0: only when every call in the window is slow).
    ///
    /// ```
    /// use registry_client::breaker::BreakerConfig;
    ///
    /// assert!(BreakerConfig::builder().slow_call_rate_threshold(0.8).build().is_ok());
    /// assert!(BreakerConfig::builder().slow_call_rate_threshold(0.0).build().is_err());
    /// ```
    #[must_use]
    pub fn slow_call_rate_threshold(mut self, rate: f64) -> Self {
        self.config.slow_call_rate_threshold = rate;
        self
    }

    /// A call that took longer than this is slow (default 2 s). A slow call counts as slow
    /// whatever its outcome, and a slow failure counts as a failure too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_client::breaker::BreakerConfig;
    ///
    /// let config = BreakerConfig::builder().slow_call_duration(Duration::from_millis(500)).build();
    /// assert!(config.is_ok());
    /// ```
    #[must_use]
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.config.slow_call_duration = duration;
        self
    }

    /// How long the breaker first stays open before it lets probes through (default 5 s;
    /// must be more than zero).
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_client::breaker::BreakerConfig;
    ///
    /// assert!(BreakerConfig::builder().wait_in_open(Duration::from_secs(1)).build().is_ok());
    /// assert!(BreakerConfig::builder().wait_in_open(Duration::ZERO).build().is_err());
    /// ```
    #[must_use]
    pub fn wait_in_open(mut self, wait: Duration) -> Self {
        self.config.wait_in_open = wait;
        self
    }

    /// The cap on the open wait as it doubles while probes keep failing (default 60 s; must
    /// be at least [`wait_in_open`](Self::wait_in_open)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_client::breaker::BreakerConfig;
    ///
    /// let config = BreakerConfig::builder()
    ///     .wait_in_open(Duration::from_secs(10))
    ///     .max_wait_in_open(Duration::from_secs(5))
    ///     .build();
    /// assert!(config.is_err());
    /// ```
    #[must_use]
    pub fn max_wait_in_open(mut self, wait: Duration) -> Self {
        self.config.max_wait_in_open = wait;
        self
    }

    /// How many probe calls half-open lets through before it judges them (default 3).
    ///
    /// ```
    /// use registry_client::breaker::BreakerConfig;
    ///
    /// assert!(BreakerConfig::builder().permitted_calls_in_half_open(1).build().is_ok());
    /// assert!(BreakerConfig::builder().permitted_calls_in_half_open(0).build().is_err());
    /// ```
    #[must_use]
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.config.permitted_calls_in_half_open = calls;
        self
    }

    /// The configuration, or a message naming the first setting out of range: thresholds
    /// must be in (0, 1], the window, `minimum_calls` and `permitted_calls_in_half_open` at
    /// least 1 (a time window more than zero), `wait_in_open` more than zero and
    /// `max_wait_in_open` at least `wait_in_open`.
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, SlidingWindow};
    ///
    /// let error = BreakerConfig::builder()
    ///     .sliding_window(SlidingWindow::Count(0))
    ///     .build()
    ///     .expect_err("an empty window is refused");
    /// assert!(error.contains("window"));
    /// ```
    pub fn build(self) -> Result<BreakerConfig, String> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfigBuilder {
        BreakerConfig::builder()
    }

    #[test]
    fn builder_validates_ranges() {
        let error = |builder: BreakerConfigBuilder| builder.build().expect_err("invalid");
        assert!(error(config().sliding_window(SlidingWindow::Count(0))).contains("window"));
        assert!(
            error(config().sliding_window(SlidingWindow::Time(Duration::ZERO))).contains("window")
        );
        assert!(error(config().minimum_calls(0)).contains("minimum_calls"));
        for rate in [0.0, -0.1, 1.01, f64::NAN] {
            assert!(
                error(config().failure_rate_threshold(rate)).contains("failure_rate_threshold")
            );
            assert!(
                error(config().slow_call_rate_threshold(rate)).contains("slow_call_rate_threshold")
            );
        }
        assert!(error(config().wait_in_open(Duration::ZERO)).contains("wait_in_open"));
        assert!(
            error(config().max_wait_in_open(Duration::from_secs(4))).contains("max_wait_in_open")
        );
        assert!(
            error(config().permitted_calls_in_half_open(0))
                .contains("permitted_calls_in_half_open")
        );

        let edge = config()
            .failure_rate_threshold(1.0)
            .slow_call_rate_threshold(f64::MIN_POSITIVE)
            .wait_in_open(Duration::from_secs(7))
            .max_wait_in_open(Duration::from_secs(7))
            .sliding_window(SlidingWindow::Count(1))
            .minimum_calls(1)
            .permitted_calls_in_half_open(1)
            .build();
        assert!(edge.is_ok());
        assert_eq!(
            config().build().expect("the defaults are valid"),
            BreakerConfig::default()
        );
    }

    #[test]
    fn a_count_window_smaller_than_minimum_calls_is_judged_once_full() {
        let minimum = |window| {
            config()
                .sliding_window(window)
                .build()
                .expect("valid")
                .effective_minimum()
        };
        assert_eq!(BreakerConfig::default().effective_minimum(), 10);
        assert_eq!(minimum(SlidingWindow::Count(4)), 4);
        assert_eq!(minimum(SlidingWindow::Count(100)), 10);
        assert_eq!(minimum(SlidingWindow::Time(Duration::from_secs(1))), 10);
    }
}
