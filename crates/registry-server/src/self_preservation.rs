//! Self-preservation: when many leases go silent at once, the registry suspects its own
//! network rather than the instances, and holds lease lapses instead of turning a partial
//! fault into an outage (docs/operations.md, Self-preservation).
//!
//! This module owns the rule, as a pure function of what the store counted; the lease
//! sweep ([`crate::workers`]) asks the store, applies the decision, and holds or expires
//! leases accordingly. The mode lives in the database so that replicas agree.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::tally::Leases;

/// The mode as the database holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// When it began; `None` while off.
    pub since: Option<DateTime<Utc>>,
    /// False after the mode ended at its maximum, until the silent share has once fallen
    /// below the threshold: it cannot start again before.
    pub armed: bool,
}

impl Mode {
    pub const OFF: Self = Self {
        since: None,
        armed: true,
    };

    pub fn active(self) -> bool {
        self.since.is_some()
    }
}

/// What one sweep read in the database, before any lapse is applied: the mode, and the
/// silent leases among those still running (whose lapse is not held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSurvey {
    pub mode: Mode,
    pub silent_running: u64,
}

/// What the rule weighs: the database's survey with the view's counts of the leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSurvey {
    pub mode: Mode,
    /// Live leases: passing or warning instances with a lease that has not lapsed (held
    /// lapses included).
    pub leased: u64,
    /// Of those, the ones whose last sign of life (heartbeat, registration, or the end of
    /// an outage grace) is older than half their TTL, or whose lapse is held.
    pub silent: u64,
    /// Instances whose lapse is held now.
    pub held: u64,
}

impl LeaseSurvey {
    /// The survey of `stored`, with the leases counted in the view. Counting the live
    /// leases in the database read every instance, each sweep: the view keeps them
    /// counted as it changes, at most the change feed's delay behind the database.
    pub fn new(stored: StoredSurvey, leases: Leases) -> Self {
        Self {
            mode: stored.mode,
            leased: leases.live,
            silent: stored.silent_running + leases.held_live,
            held: leases.held,
        }
    }
}

/// `REGISTRY_SELF_PRESERVATION_*`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Share of silent leases above which the registry suspects itself; 0 turns it off.
    pub threshold: f64,
    /// Fewest silent leases that can start it (a small system losing two instances is
    /// not a network fault).
    pub min: u64,
    /// Longest it lasts; then the held lapses apply.
    pub max: Duration,
}

impl Limits {
    /// Whether silent leases can start the mode or keep it (not when it is turned off):
    /// if not, the sweep need not count them.
    pub fn weighs_silence(&self) -> bool {
        self.threshold > 0.0
    }

    /// The defaults of the settings (docs/operations.md argues for them).
    pub const DEFAULT: Self = Self {
        threshold: 0.5,
        min: 5,
        max: Duration::from_secs(15 * 60),
    };
}

/// What the sweep does with the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Leave the mode as it is.
    Keep,
    /// Enter at `now`.
    Enter,
    /// Leave: the heartbeats came back.
    Leave,
    /// Leave at the maximum, not to start again until the silence ends.
    GiveUp,
    /// The silence ended after a give-up: the mode may start again.
    Rearm,
}

impl Decision {
    /// The mode after this decision, taken at `now` from `mode`.
    pub fn apply(self, mode: Mode, now: DateTime<Utc>) -> Mode {
        match self {
            Self::Keep => mode,
            Self::Enter => Mode {
                since: Some(now),
                armed: true,
            },
            Self::Leave | Self::Rearm => Mode::OFF,
            Self::GiveUp => Mode {
                since: None,
                armed: false,
            },
        }
    }
}

/// The rule: suspect the registry when more than `threshold` of the live leases, and at
/// least `min` of them, are silent.
pub fn decide(survey: &LeaseSurvey, limits: &Limits, now: DateTime<Utc>) -> Decision {
    let suspect = limits.weighs_silence()
        && survey.silent >= limits.min.max(1)
        && survey.silent as f64 > limits.threshold * survey.leased as f64;
    match (survey.mode.since, suspect) {
        (None, true) if survey.mode.armed => Decision::Enter,
        (None, false) if !survey.mode.armed => Decision::Rearm,
        (Some(_), false) => Decision::Leave,
        (Some(since), true) if lasted(since, now) >= limits.max => Decision::GiveUp,
        _ => Decision::Keep,
    }
}

fn lasted(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid time")
    }

    const LIMITS: Limits = Limits::DEFAULT;

    fn survey(mode: Mode, leased: u64, silent: u64) -> LeaseSurvey {
        LeaseSurvey {
            mode,
            leased,
            silent,
            held: 0,
        }
    }

    #[test]
    fn it_starts_above_the_threshold_with_at_least_the_minimum() {
        assert_eq!(
            decide(&survey(Mode::OFF, 10, 6), &LIMITS, t(0)),
            Decision::Enter
        );
        assert_eq!(
            decide(&survey(Mode::OFF, 10, 5), &LIMITS, t(0)),
            Decision::Keep,
            "half is not more than half"
        );
        assert_eq!(
            decide(&survey(Mode::OFF, 6, 4), &LIMITS, t(0)),
            Decision::Keep,
            "below the minimum"
        );
        assert_eq!(
            decide(&survey(Mode::OFF, 0, 0), &LIMITS, t(0)),
            Decision::Keep
        );
        let off = Limits {
            threshold: 0.0,
            ..LIMITS
        };
        assert_eq!(
            decide(&survey(Mode::OFF, 10, 10), &off, t(0)),
            Decision::Keep,
            "0 turns it off"
        );
    }

    #[test]
    fn it_ends_when_the_heartbeats_return_or_at_the_maximum() {
        let on = Decision::Enter.apply(Mode::OFF, t(0));
        assert_eq!(decide(&survey(on, 10, 8), &LIMITS, t(899)), Decision::Keep);
        assert_eq!(decide(&survey(on, 10, 2), &LIMITS, t(10)), Decision::Leave);
        assert_eq!(
            decide(&survey(on, 10, 8), &LIMITS, t(900)),
            Decision::GiveUp
        );
    }

    #[test]
    fn after_the_maximum_it_waits_for_the_silence_to_end_before_starting_again() {
        let given_up = Decision::GiveUp.apply(Decision::Enter.apply(Mode::OFF, t(0)), t(900));
        assert!(!given_up.active());
        assert_eq!(
            decide(&survey(given_up, 10, 8), &LIMITS, t(901)),
            Decision::Keep
        );
        assert_eq!(
            decide(&survey(given_up, 10, 1), &LIMITS, t(902)),
            Decision::Rearm
        );
        let rearmed = Decision::Rearm.apply(given_up, t(902));
        assert_eq!(
            decide(&survey(rearmed, 10, 8), &LIMITS, t(903)),
            Decision::Enter
        );
    }
}
