//! Circuit breakers: one per target instance, so that callers stop sending work to an
//! instance that keeps failing or answering slowly, and give it room to recover.
//!
//! Why a breaker on top of health checks: the registry learns that an instance is sick only
//! at its next heartbeat or check, seconds later, and an instance can pass its health check
//! while failing real calls. Meanwhile round robin keeps sending it a share of the traffic,
//! and every one of those calls costs the caller a timeout. The breaker judges from the
//! caller's own results, per instance (failures are usually local to one process or host),
//! and answers in microseconds.
//!
//! How it behaves (DESIGN section 6, after resilience4j):
//!
//! - **Closed**: calls go through and their outcomes fill a sliding window, either the last
//!   N calls ([`SlidingWindow::Count`]) or the calls of the last D
//!   ([`SlidingWindow::Time`]). Once the window holds the minimum number of calls, the
//!   breaker opens when the failure rate or the slow-call rate reaches its threshold.
//! - **Open**: calls are refused with [`NotPermitted`] (which says how long is left) until
//!   the open wait has passed; the next [`CircuitBreaker::try_acquire`] then moves to
//!   half-open. The move is lazy: nothing ticks in the background, so [`CircuitBreaker::state`]
//!   keeps reporting `Open` until that acquire, while [`CircuitBreaker::would_admit`]
//!   already answers `true`.
//! - **HalfOpen**: a fixed number of probe calls is let through, the rest refused. When all
//!   the probes are recorded they are judged like the window: bad enough and the breaker
//!   opens again with the wait doubled (up to a cap), otherwise it closes with a fresh window
//!   and the wait back at its base.
//!
//! A call holds a [`Permit`], owned (it keeps the breaker's state alive) so that it can move
//! into a spawned task. Recording consumes it; dropping it unrecorded (the call was
//! cancelled, e.g. by a timeout around the future) counts as nothing and gives a half-open
//! probe slot back, so a cancelled probe cannot wedge the breaker. Each permit remembers the
//! state period it was granted in, and a result that arrives after the breaker has moved on
//! is discarded: a slow call started while closed must not be judged as a half-open probe.
//!
//! The time window keeps per-bucket counts (twenty buckets per window) rather than one entry
//! per call, so its memory does not grow with traffic. A call therefore leaves the window
//! when its bucket does: never older than D, after at least 95% of D.
//!
//! Every transition is logged (warn when opening, info otherwise), counted in
//! [`BreakerSnapshot::transitions_total`] and broadcast as a [`Transition`] to
//! [`CircuitBreaker::subscribe`]rs (and to [`Breakers::subscribe`]rs of the set the breaker
//! belongs to), in the order they happen. A set can also be given a [`StateReport`], told
//! the state of each of its breakers at creation and at every transition: that is how the
//! `ServiceClient`'s breakers reach the `registry_client_breaker_state` metric, without
//! this module knowing about metrics.
//!
//! All time is [`tokio::time::Instant`], so tests drive the breaker with paused time.
//!
//! ```
//! use std::time::Duration;
//! use registry_client::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
//!
//! let breaker = CircuitBreaker::new("http://10.0.0.7:4040", BreakerConfig::default());
//! for _ in 0..10 {
//!     let permit = breaker.try_acquire().expect("closed breakers admit calls");
//!     // ... make the call, then report how it went:
//!     permit.record(Outcome::Failure, Duration::from_millis(30));
//! }
//! assert_eq!(breaker.state(), BreakerState::Open);
//! let refused = breaker.try_acquire().expect_err("open breakers refuse calls");
//! assert!(refused.retry_in.is_some_and(|wait| wait <= Duration::from_secs(5)));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

/// How many transitions a slow subscriber of one breaker may fall behind before it misses
/// some (it then gets `RecvError::Lagged` and can read a snapshot instead).
const BREAKER_CHANNEL_CAPACITY: usize = 64;

/// The same for a whole [`Breakers`] set, which carries the transitions of many breakers.
const SET_CHANNEL_CAPACITY: usize = 1024;

/// Buckets per time window: the window's resolution is a twentieth of its span.
const TIME_WINDOW_BUCKETS: u128 = 20;

/// Each half-open period whose probes fail multiplies the open wait by this.
const OPEN_WAIT_MULTIPLIER: u32 = 2;

/// A function told the state of a breaker (by name) when it is created and each time it
/// changes, under the breaker's lock so that reports come in the order of the changes.
/// It must be quick and must not use the breaker.
///
/// ```
/// use registry_client::breaker::{BreakerConfig, BreakerState, Breakers};
///
/// fn print_state(breaker: &str, state: BreakerState) {
///     println!("{breaker} is {state}");
/// }
/// let breakers = Breakers::new(BreakerConfig::default()).with_state_report(print_state);
/// breakers.get("sum/sum-1"); // prints "sum/sum-1 is closed"
/// ```
pub type StateReport = fn(breaker: &str, state: BreakerState);

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

/// How a [`CircuitBreaker`] judges calls; build one with [`BreakerConfig::builder`].
///
/// The [`Default`] is DESIGN section 6: a count window of 20 calls judged from 10 calls on,
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
    sliding_window: SlidingWindow,
    minimum_calls: u32,
    failure_rate_threshold: f64,
    slow_call_rate_threshold: f64,
    slow_call_duration: Duration,
    wait_in_open: Duration,
    max_wait_in_open: Duration,
    permitted_calls_in_half_open: u32,
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
    fn effective_minimum(&self) -> u64 {
        let minimum = match self.sliding_window {
            SlidingWindow::Count(size) => self.minimum_calls.min(size),
            SlidingWindow::Time(_) => self.minimum_calls,
        };
        u64::from(minimum)
    }

    fn is_slow(&self, duration: Duration) -> bool {
        duration > self.slow_call_duration
    }

    /// Whether these counts call for opening.
    fn trips(&self, tally: Tally) -> bool {
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

/// The state of a [`CircuitBreaker`].
///
/// ```
/// use registry_client::breaker::BreakerState;
///
/// assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
/// assert_eq!(BreakerState::Open.to_string(), "open");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through and are judged.
    Closed,
    /// Calls are refused until the open wait has passed.
    Open,
    /// A few probe calls go through; their outcome decides between closed and open.
    HalfOpen,
}

impl BreakerState {
    /// The name used in logs and metric labels: `closed`, `open` or `half_open`.
    ///
    /// ```
    /// use registry_client::breaker::BreakerState;
    ///
    /// assert_eq!(BreakerState::Closed.as_str(), "closed");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call went, as the caller judges it.
///
/// DESIGN section 6: connect errors, timeouts and 5xx answers are failures; 4xx answers
/// are the caller's own fault and are successes as far as the target's health goes.
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::{BreakerConfig, CircuitBreaker, Outcome};
///
/// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
/// let status = 503;
/// let outcome = if status >= 500 { Outcome::Failure } else { Outcome::Success };
/// breaker
///     .try_acquire()
///     .expect("closed")
///     .record(outcome, Duration::from_millis(12));
/// assert_eq!(breaker.snapshot().failed_calls, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The target did its job (slow or not).
    Success,
    /// The target failed: counts toward the failure rate.
    Failure,
    /// Says nothing about the target (e.g. the call was abandoned for a reason of the
    /// caller's own): not counted at all, and in half-open it gives the probe slot back.
    Ignored,
}

/// A change of state of one breaker, as broadcast to subscribers.
///
/// The rates (fractions in 0..=1) are those the decision was made on: the window's when
/// closed trips to open, the probes' when half-open settles, and for open to half-open the
/// rates that had opened the breaker.
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
///
/// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
/// let mut transitions = breaker.subscribe();
/// for _ in 0..10 {
///     breaker.try_acquire().expect("closed").record(Outcome::Failure, Duration::ZERO);
/// }
/// let transition = transitions.try_recv().expect("one transition");
/// assert_eq!((transition.from, transition.to), (BreakerState::Closed, BreakerState::Open));
/// assert_eq!(transition.breaker, "sum/sum-1");
/// assert_eq!(transition.failure_rate, 1.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The name of the breaker (its target).
    pub breaker: String,
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
    /// The failure rate the decision was made on.
    pub failure_rate: f64,
    /// The slow-call rate the decision was made on.
    pub slow_call_rate: f64,
}

/// A consistent picture of one breaker, for metrics and status output.
///
/// The counts are those of the window while closed, of the probes recorded so far while
/// half-open, and, while open, of the window or probes that opened it. The rates are `Some`
/// only when they have been judged: while closed once the window holds the minimum number
/// of calls, while open always (the rates that opened it), while half-open never (the
/// probes are judged only all together, at which point the breaker leaves half-open).
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
///
/// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
/// breaker.try_acquire().expect("closed").record(Outcome::Success, Duration::from_secs(3));
/// let snapshot = breaker.snapshot();
/// assert_eq!(snapshot.state, BreakerState::Closed);
/// assert_eq!((snapshot.buffered_calls, snapshot.slow_calls), (1, 1));
/// assert_eq!(snapshot.failure_rate, None); // fewer than the 10 minimum calls
/// assert_eq!(snapshot.open_wait, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    /// The current state (an open breaker whose wait has passed still reads `Open` until
    /// the next acquire moves it to half-open).
    pub state: BreakerState,
    /// The failure rate as a fraction in 0..=1, when judged (see above).
    pub failure_rate: Option<f64>,
    /// The slow-call rate as a fraction in 0..=1, when judged (see above).
    pub slow_call_rate: Option<f64>,
    /// Calls counted (Ignored and unrecorded calls are not).
    pub buffered_calls: u64,
    /// Of those, the failures.
    pub failed_calls: u64,
    /// Of those, the slow ones (a slow failure is in both counts).
    pub slow_calls: u64,
    /// The open wait in force: the one being served while open, else the one the next
    /// opening will use.
    pub open_wait: Duration,
    /// Transitions since the breaker was created.
    pub transitions_total: u64,
}

/// The refusal of [`CircuitBreaker::try_acquire`].
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
/// for _ in 0..10 {
///     breaker.try_acquire().expect("closed").record(Outcome::Failure, Duration::ZERO);
/// }
/// let refused = breaker.try_acquire().expect_err("open");
/// assert_eq!(refused.state, BreakerState::Open);
/// assert_eq!(refused.to_string(), "circuit breaker sum/sum-1 is open, retry in 5s");
/// tokio::time::advance(Duration::from_secs(5)).await;
/// assert!(breaker.try_acquire().is_ok()); // a half-open probe
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotPermitted {
    /// The name of the breaker (its target).
    pub breaker: String,
    /// `Open`, or `HalfOpen` when every probe slot is taken.
    pub state: BreakerState,
    /// While open, the time left before probes are let through; `None` in half-open, where
    /// a slot frees up when a probe ends.
    pub retry_in: Option<Duration>,
}

impl fmt::Display for NotPermitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            BreakerState::HalfOpen => write!(
                f,
                "circuit breaker {} is half-open and all its probe calls are in flight",
                self.breaker
            ),
            state => {
                write!(f, "circuit breaker {} is {state}", self.breaker)?;
                match self.retry_in {
                    Some(retry_in) => write!(f, ", retry in {retry_in:?}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for NotPermitted {}

/// A circuit breaker guarding one target; see the module docs for how it behaves.
///
/// `Send + Sync`: share it behind an [`Arc`] (as [`Breakers`] does). Each call takes a
/// [`Permit`] with [`try_acquire`](Self::try_acquire) and records its outcome on it.
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::{BreakerConfig, CircuitBreaker, Outcome};
///
/// let breaker = CircuitBreaker::new("http://10.0.0.7:4040", BreakerConfig::default());
/// match breaker.try_acquire() {
///     Ok(permit) => {
///         let started = tokio::time::Instant::now();
///         // ... the call ...
///         permit.record(Outcome::Success, started.elapsed());
///     }
///     Err(refused) => eprintln!("skipping: {refused}"),
/// }
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    /// A closed breaker named after its target (the name appears in logs, transitions and
    /// refusals).
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
    ///
    /// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
    /// assert_eq!(breaker.state(), BreakerState::Closed);
    /// ```
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        Self::with_set(name.into(), config, None, None)
    }

    fn with_set(
        name: String,
        config: BreakerConfig,
        set: Option<broadcast::Sender<Transition>>,
        report: Option<StateReport>,
    ) -> Self {
        let now = Instant::now();
        let core = Core {
            phase: Phase::Closed,
            window: Window::new(config.sliding_window, now),
            epoch: 0,
            open_wait: config.wait_in_open,
            transitions_total: 0,
        };
        let (own, _) = broadcast::channel(BREAKER_CHANNEL_CAPACITY);
        if let Some(report) = report {
            report(&name, BreakerState::Closed);
        }
        Self {
            shared: Arc::new(Shared {
                name,
                config,
                core: Mutex::new(core),
                own,
                set,
                report,
            }),
        }
    }

    /// The breaker's name.
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, CircuitBreaker};
    ///
    /// assert_eq!(CircuitBreaker::new("sum/sum-1", BreakerConfig::default()).name(), "sum/sum-1");
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Asks to make a call: a [`Permit`] to record its outcome on, or the reason it may not
    /// be made now. While open and once the wait has passed, this moves the breaker to
    /// half-open and takes the first probe slot.
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_client::breaker::{BreakerConfig, CircuitBreaker, Outcome};
    ///
    /// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
    /// let permit = breaker.try_acquire().expect("closed");
    /// permit.record(Outcome::Success, Duration::from_millis(8));
    /// ```
    pub fn try_acquire(&self) -> Result<Permit, NotPermitted> {
        let now = Instant::now();
        let mut core = self.shared.lock();
        match core.phase {
            Phase::Closed => {}
            Phase::Open { until, tripped } => {
                if now < until {
                    return Err(self.refusal(BreakerState::Open, Some(until - now)));
                }
                let phase = Phase::HalfOpen {
                    issued: 1,
                    probes: Tally::default(),
                };
                self.shared.enter(&mut core, phase, tripped.rates());
            }
            Phase::HalfOpen { ref mut issued, .. } => {
                if *issued >= self.shared.config.permitted_calls_in_half_open {
                    return Err(self.refusal(BreakerState::HalfOpen, None));
                }
                *issued += 1;
            }
        }
        Ok(Permit {
            shared: Arc::clone(&self.shared),
            epoch: core.epoch,
            settled: false,
        })
    }

    fn refusal(&self, state: BreakerState, retry_in: Option<Duration>) -> NotPermitted {
        NotPermitted {
            breaker: self.shared.name.clone(),
            state,
            retry_in,
        }
    }

    /// Whether [`try_acquire`](Self::try_acquire) would succeed now, without taking a slot
    /// or changing state (for a load balancer choosing among targets). Another caller may
    /// take the last slot in between, so the acquire can still be refused.
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, CircuitBreaker};
    ///
    /// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
    /// assert!(breaker.would_admit());
    /// ```
    pub fn would_admit(&self) -> bool {
        let core = self.shared.lock();
        match core.phase {
            Phase::Closed => true,
            Phase::Open { until, .. } => Instant::now() >= until,
            Phase::HalfOpen { issued, .. } => {
                issued < self.shared.config.permitted_calls_in_half_open
            }
        }
    }

    /// The current state. The move from open to half-open happens at the first acquire
    /// after the wait, so until then an open breaker whose wait has passed reports `Open`
    /// (and [`would_admit`](Self::would_admit) reports `true`).
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
    ///
    /// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
    /// assert_eq!(breaker.state(), BreakerState::Closed);
    /// ```
    pub fn state(&self) -> BreakerState {
        self.shared.lock().phase.state()
    }

    /// The state, counts, rates and open wait, read at once (see [`BreakerSnapshot`]).
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, CircuitBreaker};
    ///
    /// let snapshot = CircuitBreaker::new("sum/sum-1", BreakerConfig::default()).snapshot();
    /// assert_eq!((snapshot.buffered_calls, snapshot.transitions_total), (0, 0));
    /// ```
    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = Instant::now();
        let mut core = self.shared.lock();
        let (tally, judged) = match core.phase {
            Phase::Closed => {
                let tally = core.window.tally(now);
                (tally, tally.calls >= self.shared.config.effective_minimum())
            }
            Phase::Open { tripped, .. } => (tripped, true),
            Phase::HalfOpen { probes, .. } => (probes, false),
        };
        let (failure_rate, slow_call_rate) = tally.rates();
        BreakerSnapshot {
            state: core.phase.state(),
            failure_rate: judged.then_some(failure_rate),
            slow_call_rate: judged.then_some(slow_call_rate),
            buffered_calls: tally.calls,
            failed_calls: tally.failed,
            slow_calls: tally.slow,
            open_wait: core.open_wait,
            transitions_total: core.transitions_total,
        }
    }

    /// A receiver of this breaker's transitions from now on.
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, CircuitBreaker};
    ///
    /// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
    /// let mut transitions = breaker.subscribe();
    /// assert!(transitions.try_recv().is_err()); // nothing has happened yet
    /// ```
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.shared.own.subscribe()
    }
}

/// The right to make one call through a [`CircuitBreaker`], to be consumed by
/// [`record`](Self::record).
///
/// Owned and `Send`, so it can travel into a spawned task. Dropping it without recording
/// (the call was cancelled) counts as nothing and gives a half-open probe slot back.
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::{BreakerConfig, CircuitBreaker, Outcome};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
/// let permit = breaker.try_acquire().expect("closed");
/// tokio::spawn(async move {
///     // ... the call ...
///     permit.record(Outcome::Success, Duration::from_millis(5));
/// })
/// .await
/// .expect("the task ran");
/// assert_eq!(breaker.snapshot().buffered_calls, 1);
/// # }
/// ```
#[must_use = "a permit dropped unrecorded counts as nothing; record the call's outcome on it"]
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    /// The state period the permit was granted in; results from an earlier one are stale.
    epoch: u64,
    settled: bool,
}

impl Permit {
    /// Records how the call went and how long it took (which decides whether it was slow).
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_client::breaker::{BreakerConfig, CircuitBreaker, Outcome};
    ///
    /// let breaker = CircuitBreaker::new("sum/sum-1", BreakerConfig::default());
    /// breaker.try_acquire().expect("closed").record(Outcome::Ignored, Duration::ZERO);
    /// assert_eq!(breaker.snapshot().buffered_calls, 0);
    /// ```
    pub fn record(mut self, outcome: Outcome, duration: Duration) {
        self.settled = true;
        self.shared.record(self.epoch, outcome, duration);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.release(self.epoch);
        }
    }
}

/// One breaker per target, created on first use with a shared configuration.
///
/// Keys are whatever identifies a target to the caller (an instance URL, or
/// `service/instance-id`); each breaker is named after its key.
///
/// ```
/// use std::sync::Arc;
/// use registry_client::breaker::{BreakerConfig, Breakers};
///
/// let breakers = Breakers::new(BreakerConfig::default());
/// let a = breakers.get("http://10.0.0.7:4040");
/// assert!(Arc::ptr_eq(&a, &breakers.get("http://10.0.0.7:4040")));
/// assert_eq!(a.name(), "http://10.0.0.7:4040");
/// ```
#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    breakers: Mutex<BTreeMap<String, Arc<CircuitBreaker>>>,
    events: broadcast::Sender<Transition>,
    report: Option<StateReport>,
}

impl Breakers {
    /// An empty set whose breakers will all use `config`.
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, Breakers};
    ///
    /// let breakers = Breakers::new(BreakerConfig::default());
    /// assert!(breakers.snapshot().is_empty());
    /// ```
    pub fn new(config: BreakerConfig) -> Self {
        let (events, _) = broadcast::channel(SET_CHANNEL_CAPACITY);
        Self {
            config,
            breakers: Mutex::new(BTreeMap::new()),
            events,
            report: None,
        }
    }

    /// The same set, with `report` told the state of each breaker it creates from now on,
    /// at creation and at every transition.
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, BreakerState, Breakers};
    ///
    /// fn log_state(breaker: &str, state: BreakerState) {
    ///     eprintln!("{breaker}: {state}");
    /// }
    /// let breakers = Breakers::new(BreakerConfig::default()).with_state_report(log_state);
    /// # drop(breakers);
    /// ```
    #[must_use]
    pub fn with_state_report(mut self, report: StateReport) -> Self {
        self.report = Some(report);
        self
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<CircuitBreaker>>> {
        // Nothing panics while the map is held, so a poisoned lock still guards a sound map.
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The breaker of `key`, created closed on first use.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use registry_client::breaker::{BreakerConfig, Breakers};
    ///
    /// let breakers = Breakers::new(BreakerConfig::default());
    /// assert!(!Arc::ptr_eq(&breakers.get("sum/sum-1"), &breakers.get("sum/sum-2")));
    /// ```
    pub fn get(&self, key: &str) -> Arc<CircuitBreaker> {
        let mut breakers = self.lock();
        if let Some(breaker) = breakers.get(key) {
            return Arc::clone(breaker);
        }
        let breaker = Arc::new(CircuitBreaker::with_set(
            key.to_owned(),
            self.config.clone(),
            Some(self.events.clone()),
            self.report,
        ));
        breakers.insert(key.to_owned(), Arc::clone(&breaker));
        breaker
    }

    /// Forgets the breaker of `key` (e.g. when its instance has left the registry), so
    /// the set does not grow without bound as instances come and go. Holders of the
    /// breaker keep using it; a later [`get`](Self::get) starts a fresh one.
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, Breakers};
    ///
    /// let breakers = Breakers::new(BreakerConfig::default());
    /// breakers.get("sum/sum-1");
    /// assert!(breakers.remove("sum/sum-1").is_some());
    /// assert!(breakers.snapshot().is_empty());
    /// ```
    pub fn remove(&self, key: &str) -> Option<Arc<CircuitBreaker>> {
        self.lock().remove(key)
    }

    /// Every breaker's snapshot, sorted by key.
    ///
    /// ```
    /// use registry_client::breaker::{BreakerConfig, Breakers};
    ///
    /// let breakers = Breakers::new(BreakerConfig::default());
    /// breakers.get("b");
    /// breakers.get("a");
    /// let keys: Vec<String> = breakers.snapshot().into_iter().map(|(key, _)| key).collect();
    /// assert_eq!(keys, ["a", "b"]);
    /// ```
    pub fn snapshot(&self) -> Vec<(String, BreakerSnapshot)> {
        // Clone the breakers out first so that no breaker lock is taken under the map's.
        let breakers: Vec<(String, Arc<CircuitBreaker>)> = self
            .lock()
            .iter()
            .map(|(key, breaker)| (key.clone(), Arc::clone(breaker)))
            .collect();
        breakers
            .into_iter()
            .map(|(key, breaker)| (key, breaker.snapshot()))
            .collect()
    }

    /// A receiver of the transitions of every breaker in the set (present and future) from
    /// now on.
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_client::breaker::{BreakerConfig, Breakers, Outcome};
    ///
    /// let breakers = Breakers::new(BreakerConfig::default());
    /// let mut transitions = breakers.subscribe();
    /// let breaker = breakers.get("sum/sum-1");
    /// for _ in 0..10 {
    ///     breaker.try_acquire().expect("closed").record(Outcome::Failure, Duration::ZERO);
    /// }
    /// assert_eq!(transitions.try_recv().expect("opened").breaker, "sum/sum-1");
    /// ```
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.events.subscribe()
    }
}

/// What a breaker and its permits share.
#[derive(Debug)]
struct Shared {
    name: String,
    config: BreakerConfig,
    core: Mutex<Core>,
    own: broadcast::Sender<Transition>,
    /// The channel of the [`Breakers`] set this breaker belongs to, if any.
    set: Option<broadcast::Sender<Transition>>,
    /// The state report of that set, if it has one.
    report: Option<StateReport>,
}

#[derive(Debug)]
struct Core {
    phase: Phase,
    /// The closed state's window; emptied on opening so that closing finds it fresh.
    window: Window,
    /// Bumped at every transition; permits carry the value they were granted under.
    epoch: u64,
    /// The wait the current (or next) open period lasts.
    open_wait: Duration,
    transitions_total: u64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        until: Instant,
        /// The counts that opened the breaker, kept for snapshots and the next transition.
        tripped: Tally,
    },
    HalfOpen {
        /// Probe permits granted and not given back: in flight plus recorded.
        issued: u32,
        probes: Tally,
    },
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self {
            Self::Closed => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// Counted calls, failed ones and slow ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    calls: u64,
    failed: u64,
    slow: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.calls += other.calls;
        self.failed += other.failed;
        self.slow += other.slow;
    }

    fn remove(&mut self, other: Tally) {
        self.calls -= other.calls;
        self.failed -= other.failed;
        self.slow -= other.slow;
    }

    fn one(failed: bool, slow: bool) -> Self {
        Self {
            calls: 1,
            failed: u64::from(failed),
            slow: u64::from(slow),
        }
    }

    /// Failure and slow-call rates; zero for no calls (never judged then anyway).
    fn rates(self) -> (f64, f64) {
        if self.calls == 0 {
            return (0.0, 0.0);
        }
        let calls = self.calls as f64;
        (self.failed as f64 / calls, self.slow as f64 / calls)
    }
}

#[derive(Debug)]
enum Window {
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
    fn new(kind: SlidingWindow, now: Instant) -> Self {
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

    fn reset(&mut self, now: Instant) {
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

    fn record(&mut self, now: Instant, call: Tally) {
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
    fn tally(&mut self, now: Instant) -> Tally {
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // Nothing panics while the state is held (the only calls out are logging and a
        // non-blocking send), so a poisoned lock still guards a consistent state.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, epoch: u64, outcome: Outcome, duration: Duration) {
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => return self.release(epoch),
        };
        let call = Tally::one(failed, self.config.is_slow(duration));
        let now = Instant::now();
        let mut core = self.lock();
        if core.epoch != epoch {
            // Granted in a state the breaker has since left: it tells nothing about the
            // current one.
            return;
        }
        match core.phase {
            Phase::Closed => {
                core.window.record(now, call);
                let tally = core.window.tally(now);
                if tally.calls >= self.config.effective_minimum() && self.config.trips(tally) {
                    core.window.reset(now);
                    let until = now + core.open_wait;
                    let phase = Phase::Open {
                        until,
                        tripped: tally,
                    };
                    self.enter(&mut core, phase, tally.rates());
                }
            }
            // Permits are never granted while open, so no permit of this epoch exists.
            Phase::Open { .. } => {}
            Phase::HalfOpen { issued, mut probes } => {
                probes.add(call);
                if probes.calls < u64::from(self.config.permitted_calls_in_half_open) {
                    core.phase = Phase::HalfOpen { issued, probes };
                } else if self.config.trips(probes) {
                    core.open_wait = core
                        .open_wait
                        .saturating_mul(OPEN_WAIT_MULTIPLIER)
                        .min(self.config.max_wait_in_open);
                    let until = now + core.open_wait;
                    let phase = Phase::Open {
                        until,
                        tripped: probes,
                    };
                    self.enter(&mut core, phase, probes.rates());
                } else {
                    core.open_wait = self.config.wait_in_open;
                    core.window.reset(now);
                    self.enter(&mut core, Phase::Closed, probes.rates());
                }
            }
        }
    }

    /// A permit ends without a counted outcome: only a half-open slot needs giving back.
    fn release(&self, epoch: u64) {
        let mut core = self.lock();
        if core.epoch != epoch {
            return;
        }
        if let Phase::HalfOpen { issued, .. } = &mut core.phase {
            *issued = issued.saturating_sub(1);
        }
    }

    /// Moves to `phase`, then logs, counts, reports and broadcasts the transition. Done
    /// under the lock so that subscribers see transitions in the order they happened.
    fn enter(&self, core: &mut Core, phase: Phase, (failure_rate, slow_call_rate): (f64, f64)) {
        let from = core.phase.state();
        core.phase = phase;
        core.epoch += 1;
        core.transitions_total += 1;
        let to = phase.state();
        let open_wait = core.open_wait;
        match to {
            BreakerState::Open => tracing::warn!(
                breaker = %self.name,
                from = from.as_str(),
                to = to.as_str(),
                failure_rate,
                slow_call_rate,
                ?open_wait,
                "circuit breaker opened"
            ),
            BreakerState::HalfOpen => tracing::info!(
                breaker = %self.name,
                from = from.as_str(),
                to = to.as_str(),
                failure_rate,
                slow_call_rate,
                "circuit breaker half-open, letting probe calls through"
            ),
            BreakerState::Closed => tracing::info!(
                breaker = %self.name,
                from = from.as_str(),
                to = to.as_str(),
                failure_rate,
                slow_call_rate,
                "circuit breaker closed"
            ),
        }
        if let Some(report) = self.report {
            report(&self.name, to);
        }
        let transition = Transition {
            breaker: self.name.clone(),
            from,
            to,
            failure_rate,
            slow_call_rate,
        };
        // A send fails only when nobody is subscribed, which is fine.
        if let Some(set) = &self.set {
            let _ = set.send(transition.clone());
        }
        let _ = self.own.send(transition);
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::broadcast::error::TryRecvError;
    use tokio::time::advance;

    use super::*;

    const FAST: Duration = Duration::from_millis(10);
    const SLOW: Duration = Duration::from_millis(2001);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new("target", BreakerConfig::default())
    }

    fn config() -> BreakerConfigBuilder {
        BreakerConfig::builder()
    }

    fn call(breaker: &CircuitBreaker, outcome: Outcome, duration: Duration) {
        breaker
            .try_acquire()
            .expect("the breaker admits the call")
            .record(outcome, duration);
    }

    fn calls(breaker: &CircuitBreaker, n: usize, outcome: Outcome, duration: Duration) {
        for _ in 0..n {
            call(breaker, outcome, duration);
        }
    }

    /// Opens a default breaker with ten failures.
    fn trip(breaker: &CircuitBreaker) {
        calls(breaker, 10, Outcome::Failure, FAST);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    fn retry_in(breaker: &CircuitBreaker) -> Option<Duration> {
        breaker
            .try_acquire()
            .expect_err("the breaker refuses the call")
            .retry_in
    }

    fn next(receiver: &mut broadcast::Receiver<Transition>) -> (BreakerState, BreakerState) {
        let transition = receiver.try_recv().expect("a transition was broadcast");
        (transition.from, transition.to)
    }

    /// Takes the half-open probes and records them with these outcomes.
    fn probe(breaker: &CircuitBreaker, outcomes: &[Outcome]) {
        let permits: Vec<Permit> = outcomes
            .iter()
            .map(|_| breaker.try_acquire().expect("a probe slot"))
            .collect();
        for (permit, outcome) in permits.into_iter().zip(outcomes) {
            permit.record(*outcome, FAST);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_failure_rate_threshold() {
        let breaker = breaker();
        let mut transitions = breaker.subscribe();
        calls(&breaker, 5, Outcome::Success, FAST);
        calls(&breaker, 4, Outcome::Failure, FAST);
        assert_eq!(breaker.state(), BreakerState::Closed);
        call(&breaker, Outcome::Failure, FAST); // 5 of 10: 50%
        assert_eq!(breaker.state(), BreakerState::Open);

        let transition = transitions.try_recv().expect("a transition");
        assert_eq!(
            transition,
            Transition {
                breaker: "target".to_owned(),
                from: BreakerState::Closed,
                to: BreakerState::Open,
                failure_rate: 0.5,
                slow_call_rate: 0.0,
            }
        );
        let snapshot = breaker.snapshot();
        assert_eq!(snapshot.failure_rate, Some(0.5));
        assert_eq!((snapshot.buffered_calls, snapshot.failed_calls), (10, 5));
        assert_eq!(snapshot.transitions_total, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_failure_rate_threshold_stays_closed() {
        let breaker = breaker();
        calls(&breaker, 6, Outcome::Success, FAST);
        calls(&breaker, 4, Outcome::Failure, FAST);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.snapshot().failure_rate, Some(0.4));
    }

    #[tokio::test(start_paused = true)]
    async fn respects_the_minimum_number_of_calls() {
        let breaker = breaker();
        calls(&breaker, 9, Outcome::Failure, FAST);
        assert_eq!(breaker.state(), BreakerState::Closed);
        let snapshot = breaker.snapshot();
        assert_eq!(
            (snapshot.failure_rate, snapshot.slow_call_rate),
            (None, None)
        );
        assert_eq!(snapshot.failed_calls, 9);
        call(&breaker, Outcome::Failure, FAST);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_slow_call_rate_threshold() {
        let breaker = breaker();
        let mut transitions = breaker.subscribe();
        // Exactly the slow duration is not slow, and one fast call keeps the default 100%
        // threshold out of reach.
        call(&breaker, Outcome::Success, Duration::from_secs(2));
        calls(&breaker, 9, Outcome::Success, SLOW);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.snapshot().slow_call_rate, Some(0.9));

        let breaker = CircuitBreaker::new("target", BreakerConfig::default());
        let mut transitions_2 = breaker.subscribe();
        calls(&breaker, 10, Outcome::Success, SLOW);
        assert_eq!(breaker.state(), BreakerState::Open);
        let transition = transitions_2.try_recv().expect("a transition");
        assert_eq!(
            (transition.failure_rate, transition.slow_call_rate),
            (0.0, 1.0)
        );
        assert!(matches!(transitions.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_failure_counts_as_both() {
        let config = config()
            .slow_call_rate_threshold(0.5)
            .failure_rate_threshold(0.9)
            .build()
            .expect("valid");
        let breaker = CircuitBreaker::new("target", config);
        calls(&breaker, 4, Outcome::Failure, SLOW);
        calls(&breaker, 5, Outcome::Success, FAST);
        let snapshot = breaker.snapshot();
        assert_eq!(
            (
                snapshot.buffered_calls,
                snapshot.failed_calls,
                snapshot.slow_calls
            ),
            (9, 4, 4)
        );
        call(&breaker, Outcome::Failure, SLOW); // 5 of 10 slow: 50%
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn open_refuses_calls_until_the_wait_has_passed() {
        let breaker = breaker();
        trip(&breaker);
        assert_eq!(retry_in(&breaker), Some(Duration::from_secs(5)));
        assert!(!breaker.would_admit());

        advance(Duration::from_secs(2)).await;
        let refused = breaker.try_acquire().expect_err("still open");
        assert_eq!(
            refused,
            NotPermitted {
                breaker: "target".to_owned(),
                state: BreakerState::Open,
                retry_in: Some(Duration::from_secs(3)),
            }
        );
        assert_eq!(
            refused.to_string(),
            "circuit breaker target is open, retry in 3s"
        );

        advance(Duration::from_millis(2999)).await;
        assert_eq!(retry_in(&breaker), Some(Duration::from_millis(1)));
        assert_eq!(breaker.snapshot().open_wait, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn moves_to_half_open_at_the_first_acquire_after_the_wait() {
        let breaker = breaker();
        let mut transitions = breaker.subscribe();
        trip(&breaker);
        assert_eq!(
            next(&mut transitions),
            (BreakerState::Closed, BreakerState::Open)
        );

        advance(Duration::from_secs(5)).await;
        // Lazy: eligible, but nothing has moved yet.
        assert!(breaker.would_admit());
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(matches!(transitions.try_recv(), Err(TryRecvError::Empty)));

        let permit = breaker.try_acquire().expect("the first probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let transition = transitions.try_recv().expect("a transition");
        assert_eq!(
            (transition.from, transition.to),
            (BreakerState::Open, BreakerState::HalfOpen)
        );
        // The rates that opened the breaker.
        assert_eq!(transition.failure_rate, 1.0);
        let snapshot = breaker.snapshot();
        assert_eq!((snapshot.buffered_calls, snapshot.failure_rate), (0, None));
        drop(permit);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_the_permitted_probes() {
        let breaker = breaker();
        trip(&breaker);
        advance(Duration::from_secs(5)).await;
        let permits: Vec<Permit> = (0..3)
            .map(|_| breaker.try_acquire().expect("a probe slot"))
            .collect();
        assert!(!breaker.would_admit());
        let refused = breaker.try_acquire().expect_err("the fourth probe");
        assert_eq!(refused.state, BreakerState::HalfOpen);
        assert_eq!(refused.retry_in, None);
        assert_eq!(
            refused.to_string(),
            "circuit breaker target is half-open and all its probe calls are in flight"
        );

        // Recording two of three does not settle anything, nor free a slot.
        let mut permits = permits.into_iter();
        for permit in permits.by_ref().take(2) {
            permit.record(Outcome::Success, FAST);
        }
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.try_acquire().is_err());
        assert_eq!(breaker.snapshot().buffered_calls, 2);
        for permit in permits {
            permit.record(Outcome::Success, FAST);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn successful_probes_close_with_a_fresh_window() {
        let breaker = breaker();
        let mut transitions = breaker.subscribe();
        trip(&breaker);
        advance(Duration::from_secs(5)).await;
        // One failure in three is under 50%.
        probe(
            &breaker,
            &[Outcome::Success, Outcome::Failure, Outcome::Success],
        );
        assert_eq!(breaker.state(), BreakerState::Closed);

        let all: Vec<Transition> = std::iter::from_fn(|| transitions.try_recv().ok()).collect();
        let steps: Vec<(BreakerState, BreakerState)> = all.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            steps,
            [
                (BreakerState::Closed, BreakerState::Open),
                (BreakerState::Open, BreakerState::HalfOpen),
                (BreakerState::HalfOpen, BreakerState::Closed),
            ]
        );
        assert!((all[2].failure_rate - 1.0 / 3.0).abs() < 1e-9);

        let snapshot = breaker.snapshot();
        assert_eq!(snapshot.buffered_calls, 0);
        assert_eq!(snapshot.transitions_total, 3);
        assert_eq!(snapshot.open_wait, Duration::from_secs(5));
        // Fresh: it takes the minimum number of calls again to open.
        calls(&breaker, 9, Outcome::Failure, FAST);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_reopen_with_the_wait_doubled_up_to_the_cap() {
        let breaker = breaker();
        let mut transitions = breaker.subscribe();
        trip(&breaker);
        let mut waits = Vec::new();
        let mut wait = Duration::from_secs(5);
        for _ in 0..6 {
            advance(wait).await;
            probe(
                &breaker,
                &[Outcome::Failure, Outcome::Failure, Outcome::Success],
            );
            assert_eq!(breaker.state(), BreakerState::Open);
            wait = retry_in(&breaker).expect("open");
            assert_eq!(breaker.snapshot().open_wait, wait);
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [10, 20, 40, 60, 60, 60]);

        next(&mut transitions); // closed -> open
        assert_eq!(
            next(&mut transitions),
            (BreakerState::Open, BreakerState::HalfOpen)
        );
        let transition = transitions.try_recv().expect("a transition");
        assert_eq!(
            (transition.from, transition.to),
            (BreakerState::HalfOpen, BreakerState::Open)
        );
        assert!((transition.failure_rate - 2.0 / 3.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_probes_reopen_too() {
        let breaker = breaker();
        trip(&breaker);
        advance(Duration::from_secs(5)).await;
        let permits: Vec<Permit> = (0..3)
            .map(|_| breaker.try_acquire().expect("a probe slot"))
            .collect();
        for permit in permits {
            permit.record(Outcome::Success, SLOW);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.snapshot().slow_call_rate, Some(1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_resets_the_open_wait() {
        let breaker = breaker();
        trip(&breaker);
        advance(Duration::from_secs(5)).await;
        probe(&breaker, &[Outcome::Failure; 3]);
        assert_eq!(retry_in(&breaker), Some(Duration::from_secs(10)));
        advance(Duration::from_secs(10)).await;
        probe(&breaker, &[Outcome::Success; 3]);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.snapshot().open_wait, Duration::from_secs(5));
        trip(&breaker);
        assert_eq!(retry_in(&breaker), Some(Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_window_forgets_calls_older_than_its_size() {
        // A count window smaller than minimum_calls is judged once full.
        let config = config()
            .sliding_window(SlidingWindow::Count(4))
            .build()
            .expect("valid");
        let breaker = CircuitBreaker::new("target", config);
        call(&breaker, Outcome::Failure, FAST);
        calls(&breaker, 3, Outcome::Success, FAST); // F S S S: 25%
        assert_eq!(breaker.snapshot().failure_rate, Some(0.25));
        call(&breaker, Outcome::Success, FAST); // S S S S: the failure is gone
        let snapshot = breaker.snapshot();
        assert_eq!((snapshot.buffered_calls, snapshot.failed_calls), (4, 0));
        call(&breaker, Outcome::Failure, FAST); // S S S F: 25%
        assert_eq!(breaker.state(), BreakerState::Closed);
        // S S F F: 50%, where the 7 calls seen would be 3/7.
        call(&breaker, Outcome::Failure, FAST);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_window_forgets_calls_older_than_its_span() {
        let config = config()
            .sliding_window(SlidingWindow::Time(Duration::from_secs(10)))
            .build()
            .expect("valid");

        // Within the span, old and new calls add up.
        let breaker = CircuitBreaker::new("target", config.clone());
        calls(&breaker, 9, Outcome::Failure, FAST);
        advance(Duration::from_millis(9_900)).await;
        assert_eq!(breaker.snapshot().buffered_calls, 9);
        call(&breaker, Outcome::Failure, FAST);
        assert_eq!(breaker.state(), BreakerState::Open);

        // Past it, they are gone.
        let breaker = CircuitBreaker::new("target", config);
        calls(&breaker, 4, Outcome::Failure, FAST);
        advance(Duration::from_secs(3)).await;
        calls(&breaker, 5, Outcome::Success, FAST);
        advance(Duration::from_secs(7)).await; // the failures are now 10 s old
        let snapshot = breaker.snapshot();
        assert_eq!((snapshot.buffered_calls, snapshot.failed_calls), (5, 0));
        calls(&breaker, 4, Outcome::Failure, FAST);
        call(&breaker, Outcome::Success, FAST);
        // 4 of 10; with the forgotten calls it would be 8 of 14, over 50%.
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.snapshot().failure_rate, Some(0.4));
        advance(Duration::from_secs(3)).await; // the first successes go too
        let snapshot = breaker.snapshot();
        assert_eq!((snapshot.buffered_calls, snapshot.failed_calls), (5, 4));
        assert_eq!(snapshot.failure_rate, None);
        advance(Duration::from_secs(7)).await;
        assert_eq!(breaker.snapshot().buffered_calls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_window_has_no_size_cap() {
        let config = config()
            .sliding_window(SlidingWindow::Time(Duration::from_secs(1)))
            .minimum_calls(10)
            .build()
            .expect("valid");
        let breaker = CircuitBreaker::new("target", config);
        for _ in 0..100 {
            call(&breaker, Outcome::Success, FAST);
            advance(Duration::from_millis(5)).await;
        }
        assert_eq!(breaker.snapshot().buffered_calls, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_permit_releases_its_half_open_slot() {
        let breaker = breaker();
        trip(&breaker);
        advance(Duration::from_secs(5)).await;
        let first = breaker.try_acquire().expect("probe 1");
        let second = breaker.try_acquire().expect("probe 2");
        let third = breaker.try_acquire().expect("probe 3");
        assert!(!breaker.would_admit());
        drop(second); // cancelled
        assert!(breaker.would_admit());
        let fourth = breaker.try_acquire().expect("the freed slot");
        assert!(breaker.try_acquire().is_err());
        for permit in [first, third, fourth] {
            permit.record(Outcome::Success, FAST);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_permit_counts_as_nothing_when_closed() {
        let breaker = breaker();
        for _ in 0..20 {
            drop(breaker.try_acquire().expect("closed"));
        }
        assert_eq!(breaker.snapshot().buffered_calls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ignored_calls_do_not_count() {
        let breaker = breaker();
        calls(&breaker, 30, Outcome::Ignored, SLOW);
        let snapshot = breaker.snapshot();
        assert_eq!((snapshot.buffered_calls, snapshot.slow_calls), (0, 0));
        // Nor do they push counted calls out of the count window.
        calls(&breaker, 9, Outcome::Failure, FAST);
        calls(&breaker, 30, Outcome::Ignored, FAST);
        assert_eq!(breaker.snapshot().failed_calls, 9);
        assert_eq!(breaker.state(), BreakerState::Closed);

        // In half-open an ignored probe gives its slot back.
        call(&breaker, Outcome::Failure, FAST);
        assert_eq!(breaker.state(), BreakerState::Open);
        advance(Duration::from_secs(5)).await;
        let permits: Vec<Permit> = (0..3)
            .map(|_| breaker.try_acquire().expect("a probe slot"))
            .collect();
        let mut permits = permits.into_iter();
        if let Some(permit) = permits.next() {
            permit.record(Outcome::Ignored, FAST);
        }
        assert!(breaker.would_admit());
        let replacement = breaker.try_acquire().expect("the freed slot");
        assert_eq!(breaker.snapshot().buffered_calls, 0);
        for permit in permits.chain([replacement]) {
            permit.record(Outcome::Success, FAST);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn would_admit_takes_nothing() {
        let breaker = breaker();
        assert!(breaker.would_admit());
        trip(&breaker);
        advance(Duration::from_secs(5)).await;
        for _ in 0..10 {
            assert!(breaker.would_admit());
        }
        assert_eq!(breaker.snapshot().transitions_total, 1);
        let permits: Vec<Permit> = (0..3)
            .map(|_| {
                assert!(breaker.would_admit());
                breaker.try_acquire().expect("a probe slot")
            })
            .collect();
        assert!(!breaker.would_admit());
        drop(permits);
    }

    #[tokio::test(start_paused = true)]
    async fn results_from_an_earlier_state_are_discarded() {
        let breaker = breaker();
        let late = breaker.try_acquire().expect("closed");
        trip(&breaker);
        advance(Duration::from_secs(5)).await;
        let probes: Vec<Permit> = (0..3)
            .map(|_| breaker.try_acquire().expect("a probe slot"))
            .collect();
        // The call started while closed ends now: it is neither a probe nor a slot.
        late.record(Outcome::Failure, FAST);
        let snapshot = breaker.snapshot();
        assert_eq!(
            (snapshot.state, snapshot.buffered_calls),
            (BreakerState::HalfOpen, 0)
        );
        assert!(!breaker.would_admit());
        for permit in probes {
            permit.record(Outcome::Success, FAST);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_moves_into_a_spawned_task() {
        let breaker = Arc::new(breaker());
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let permit = breaker.try_acquire().expect("closed");
                tokio::spawn(async move { permit.record(Outcome::Failure, FAST) })
            })
            .collect();
        for task in tasks {
            task.await.expect("the task ran");
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn breakers_keep_one_breaker_per_key_with_the_shared_config() {
        let config = config().minimum_calls(2).build().expect("valid");
        let breakers = Breakers::new(config);
        let mut transitions = breakers.subscribe();
        let a = breakers.get("http://a");
        assert!(Arc::ptr_eq(&a, &breakers.get("http://a")));
        let b = breakers.get("http://b");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!((a.name(), b.name()), ("http://a", "http://b"));

        // Both use minimum_calls 2; tripping one leaves the other alone.
        calls(&b, 2, Outcome::Failure, FAST);
        assert_eq!(
            (a.state(), b.state()),
            (BreakerState::Closed, BreakerState::Open)
        );
        calls(&a, 2, Outcome::Failure, FAST);
        assert_eq!(a.state(), BreakerState::Open);

        let names: Vec<String> = std::iter::from_fn(|| transitions.try_recv().ok())
            .map(|t| t.breaker)
            .collect();
        assert_eq!(names, ["http://b", "http://a"]);
        // A breaker's own subscribers are served too.
        let mut own = a.subscribe();
        advance(Duration::from_secs(5)).await;
        drop(a.try_acquire().expect("a probe"));
        assert_eq!(next(&mut own), (BreakerState::Open, BreakerState::HalfOpen));

        breakers.get("http://0");
        let snapshot = breakers.snapshot();
        let keys: Vec<&str> = snapshot.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["http://0", "http://a", "http://b"]);
        assert_eq!(snapshot[1].1.state, BreakerState::HalfOpen);
        assert_eq!(snapshot[2].1.state, BreakerState::Open);

        assert!(breakers.remove("http://a").is_some());
        assert!(breakers.remove("http://a").is_none());
        assert_eq!(breakers.get("http://a").state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_set_reports_the_state_of_its_breakers() {
        static REPORTED: Mutex<Vec<(String, BreakerState)>> = Mutex::new(Vec::new());
        fn report(breaker: &str, state: BreakerState) {
            REPORTED
                .lock()
                .expect("not poisoned")
                .push((breaker.to_owned(), state));
        }
        let config = config().minimum_calls(2).build().expect("valid");
        let breakers = Breakers::new(config.clone()).with_state_report(report);
        let breaker = breakers.get("sum/sum-1");
        calls(&breaker, 2, Outcome::Failure, FAST);
        advance(Duration::from_secs(5)).await;
        drop(breaker.try_acquire().expect("a probe"));
        // A breaker of no set reports nothing.
        calls(
            &CircuitBreaker::new("alone", config),
            2,
            Outcome::Failure,
            FAST,
        );

        let reported = REPORTED.lock().expect("not poisoned").clone();
        let states: Vec<BreakerState> = reported.iter().map(|(_, state)| *state).collect();
        assert_eq!(
            states,
            [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen
            ]
        );
        assert!(reported.iter().all(|(name, _)| name == "sum/sum-1"));
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
    fn breakers_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<CircuitBreaker>();
        assert_send_sync::<Breakers>();
        assert_send_sync::<Permit>();
        assert_send_sync::<NotPermitted>();
    }
}
