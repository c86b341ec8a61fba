//! [`Breakers`]: one breaker per target, created on first use with a shared configuration,
//! so that a caller of many instances keeps one breaker for each without managing them, and
//! follows all their transitions on one channel.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use super::{BreakerConfig, BreakerSnapshot, CircuitBreaker, StateReport, Transition};

/// How many transitions a slow subscriber of a whole set may fall behind before it misses
/// some: the set carries the transitions of many breakers.
const SET_CHANNEL_CAPACITY: usize = 1024;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::advance;

    use super::*;
    use crate::breaker::{BreakerState, Outcome};

    const FAST: Duration = Duration::from_millis(10);

    fn calls(breaker: &CircuitBreaker, n: usize, outcome: Outcome, duration: Duration) {
        for _ in 0..n {
            breaker
                .try_acquire()
                .expect("the breaker admits the call")
                .record(outcome, duration);
        }
    }

    fn next(receiver: &mut broadcast::Receiver<Transition>) -> (BreakerState, BreakerState) {
        let transition = receiver.try_recv().expect("a transition was broadcast");
        (transition.from, transition.to)
    }

    fn config() -> crate::breaker::BreakerConfigBuilder {
        BreakerConfig::builder()
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
}
