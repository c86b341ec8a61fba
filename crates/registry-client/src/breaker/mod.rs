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
//! How it behaves (after resilience4j):
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

// This file is the state machine; the settings, the window and the set of breakers each
// have a file of their own.
mod config;
mod set;
mod window;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

pub use config::{BreakerConfig, BreakerConfigBuilder, SlidingWindow};
pub use set::Breakers;
use window::{Tally, Window};

/// How many transitions a slow subscriber of one breaker may fall behind before it misses
/// some (it then gets `RecvError::Lagged` and can read a snapshot instead).
const BREAKER_CHANNEL_CAPACITY: usize = 64;

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
/// Connect errors, timeouts and 5xx answers are failures; 4xx answers
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

    pub(super) fn with_set(
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

    #[test]
    fn breakers_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<CircuitBreaker>();
        assert_send_sync::<Breakers>();
        assert_send_sync::<Permit>();
        assert_send_sync::<NotPermitted>();
    }
}
