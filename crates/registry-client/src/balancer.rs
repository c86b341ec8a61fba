//! Load balancing: which instance of a service gets the next call.
//!
//! Round robin rather than random or least-loaded: the registry already tells us which
//! instances are healthy and the circuit breaker tells us which ones are failing for us, so
//! what is left is to spread calls evenly, predictably and without shared state between
//! processes. Three rules shape it:
//!
//! - Only `passing` instances take traffic while any of them is admitted; `warning` ones
//!   (throttling, HTTP 429) are the last resort; `critical` ones do not, outside panic
//!   (below); `maintenance` ones never do, panic or not (maintenance means "alive, send no
//!   traffic": the instance is draining).
//! - Panic (Envoy's panic threshold): when fewer than a share of a service's known,
//!   non-maintenance instances are available (`passing` or `warning`), the registry's
//!   view is more likely wrong than most of the instances dead: a network fault between
//!   the registry and the instances, or a registry that lost its state. Calls then spread
//!   over every non-maintenance instance, `critical` ones included, and the circuit
//!   breakers (through `admits`) keep them away from instances that really fail. Without
//!   it, a registry that wrongly marks most instances critical would pile the whole load
//!   on the few it still believes in, turning its mistake into an outage.
//! - The caller decides what else disqualifies an instance through `admits`: the circuit
//!   breaker's `would_admit`, and "not already tried" for a retry on another instance.
//! - The rotation remembers the id it picked last, not a position, and candidates are
//!   sorted by id. The discovery view is rebuilt whenever the registry answers, in whatever
//!   order it answers, so a position would skip or repeat instances whenever the list
//!   changes; "the next id after the last one" stays fair across rebuilds, additions and
//!   removals. The first pick of a service starts at a random instance so that a fleet of
//!   clients started together does not send its first calls to the same instance.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use registry_api::{Instance, Status};

/// The share of available instances below which a service is routed in panic, unless
/// configured otherwise: Envoy's default.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;

/// How the instances of a service are chosen for one call (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// `passing` instances, `warning` ones as the last resort.
    Normal,
    /// Every non-maintenance instance alike: too few are available to trust the statuses.
    Panic,
}

/// Whether `instances` are too few available to trust the statuses: fewer than
/// `threshold` of the non-maintenance ones are `passing` or `warning`. A threshold of 0
/// (or less, or not a number) turns panic off; a service with no non-maintenance instance
/// is never in panic (there is nothing to spread the calls over).
///
/// ```
/// use registry_client::balancer::{Routing, routing};
/// # use registry_client::{Instance, Status};
/// # fn instance(id: &str, status: Status) -> Instance {
/// #     let now = chrono::Utc::now();
/// #     Instance {
/// #         id: id.into(), service: "sum".into(), url: format!("http://{id}:4040"), status,
/// #         tags: vec![], metadata: Default::default(), ttl_seconds: 10, check: None,
/// #         registered_at: now, last_heartbeat_at: now, lease_expires_at: None,
/// #         status_changed_at: now, last_check: None, lease_held: false,
/// #         deregister_critical_after: None, lease_status: None, lease_output: None, maintenance_reason: None,
/// #     }
/// # }
///
/// let instances = vec![
///     instance("sum-1", Status::Passing),
///     instance("sum-2", Status::Critical),
///     instance("sum-3", Status::Critical),
///     instance("sum-4", Status::Maintenance),
/// ];
/// // 1 available of 3 non-maintenance instances: below half.
/// assert_eq!(routing(&instances, 0.5), Routing::Panic);
/// assert_eq!(routing(&instances, 0.3), Routing::Normal);
/// assert_eq!(routing(&instances, 0.0), Routing::Normal); // panic off
/// ```
pub fn routing(instances: &[Instance], threshold: f64) -> Routing {
    // NaN turns panic off too.
    if threshold.is_nan() || threshold <= 0.0 {
        return Routing::Normal;
    }
    let (available, known) = availability(instances);
    // Counts are small: the conversion to f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    let below = (available as f64) < threshold * (known as f64);
    if known > 0 && below {
        Routing::Panic
    } else {
        Routing::Normal
    }
}

/// How many of `instances` are available (`passing` or `warning`), and how many are
/// known apart from those in maintenance.
fn availability(instances: &[Instance]) -> (usize, usize) {
    let available = instances
        .iter()
        .filter(|i| matches!(i.status, Status::Passing | Status::Warning))
        .count();
    let known = instances
        .iter()
        .filter(|i| i.status != Status::Maintenance)
        .count();
    (available, known)
}

/// Round-robin choice among the instances of each service.
///
/// One `RoundRobin` serves every service (it keeps one position per service name); share
/// it (for example in an `Arc`) between the tasks that call the same services so they
/// rotate together.
///
/// ```
/// use registry_client::balancer::RoundRobin;
/// # use registry_client::{Instance, Status};
/// # fn instance(id: &str, status: Status) -> Instance {
/// #     let now = chrono::Utc::now();
/// #     Instance {
/// #         id: id.into(), service: "sum".into(), url: format!("http://{id}:4040"), status,
/// #         tags: vec![], metadata: Default::default(), ttl_seconds: 10, check: None,
/// #         registered_at: now, last_heartbeat_at: now, lease_expires_at: None,
/// #         status_changed_at: now, last_check: None, lease_held: false,
/// #         deregister_critical_after: None, lease_status: None, lease_output: None, maintenance_reason: None,
/// #     }
/// # }
///
/// let instances = vec![
///     instance("sum-1", Status::Passing),
///     instance("sum-2", Status::Passing),
///     instance("sum-3", Status::Critical),
/// ];
/// let balancer = RoundRobin::new();
/// let first = balancer.pick("sum", &instances, |_| true).map(|i| i.id.clone());
/// let second = balancer.pick("sum", &instances, |_| true).map(|i| i.id.clone());
/// assert_ne!(first, second); // alternates between sum-1 and sum-2, never sum-3
/// ```
#[derive(Debug)]
pub struct RoundRobin {
    /// Service name -> id of the instance picked last.
    last: Mutex<HashMap<String, String>>,
    /// Services routed in panic by the last [`routing_of`](Self::routing_of), so that
    /// entering and leaving panic are logged once each.
    panicking: Mutex<HashMap<String, bool>>,
    panic_threshold: f64,
}

impl Default for RoundRobin {
    fn default() -> Self {
        Self::with_panic_threshold(DEFAULT_PANIC_THRESHOLD)
    }
}

impl RoundRobin {
    /// A balancer that has picked nothing yet, with the default panic threshold
    /// ([`DEFAULT_PANIC_THRESHOLD`]).
    ///
    /// ```
    /// let balancer = registry_client::balancer::RoundRobin::new();
    /// assert!(balancer.pick("sum", &[], |_| true).is_none());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// A balancer that routes a service in panic when fewer than `threshold` (a share,
    /// from 0 to 1) of its non-maintenance instances are available; 0 turns panic off
    /// (the statuses are always followed).
    ///
    /// ```
    /// use registry_client::balancer::RoundRobin;
    ///
    /// let never_panics = RoundRobin::with_panic_threshold(0.0);
    /// assert_eq!(never_panics.panic_threshold(), 0.0);
    /// ```
    pub fn with_panic_threshold(threshold: f64) -> Self {
        Self {
            last: Mutex::new(HashMap::new()),
            panicking: Mutex::new(HashMap::new()),
            panic_threshold: threshold,
        }
    }

    /// The share of available instances below which a service is routed in panic.
    pub fn panic_threshold(&self) -> f64 {
        self.panic_threshold
    }

    /// How the next call to `service` is routed over `instances` ([`routing`] with this
    /// balancer's threshold). Logs when a service enters or leaves panic, once per change.
    ///
    /// ```
    /// use registry_client::balancer::{RoundRobin, Routing};
    /// # use registry_client::{Instance, Status};
    /// # fn instance(id: &str, status: Status) -> Instance {
    /// #     let now = chrono::Utc::now();
    /// #     Instance {
    /// #         id: id.into(), service: "sum".into(), url: format!("http://{id}:4040"), status,
    /// #         tags: vec![], metadata: Default::default(), ttl_seconds: 10, check: None,
    /// #         registered_at: now, last_heartbeat_at: now, lease_expires_at: None,
    /// #         status_changed_at: now, last_check: None, lease_held: false,
    /// #         deregister_critical_after: None, lease_status: None, lease_output: None, maintenance_reason: None,
    /// #     }
    /// # }
    ///
    /// let instances = vec![
    ///     instance("sum-1", Status::Passing),
    ///     instance("sum-2", Status::Critical),
    ///     instance("sum-3", Status::Critical),
    /// ];
    /// let balancer = RoundRobin::new();
    /// let routing = balancer.routing_of("sum", &instances);
    /// assert_eq!(routing, Routing::Panic);
    /// // In panic, the critical instances take their share too.
    /// let picked = balancer.pick_routed(routing, "sum", &instances, |i| i.id != "sum-1");
    /// assert!(picked.is_some_and(|i| i.status == Status::Critical));
    /// ```
    pub fn routing_of(&self, service: &str, instances: &[Instance]) -> Routing {
        let routing = routing(instances, self.panic_threshold);
        let panic = routing == Routing::Panic;
        let mut panicking = self
            .panicking
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was = panicking.get(service).copied().unwrap_or(false);
        if was != panic {
            let (available, known) = availability(instances);
            if panic {
                tracing::warn!(
                    service,
                    available,
                    known,
                    threshold = self.panic_threshold,
                    "too few instances available: routing in panic over every non-maintenance instance"
                );
            } else {
                tracing::info!(
                    service,
                    available,
                    known,
                    "enough instances available again: routing by status"
                );
            }
            panicking.insert(service.to_owned(), panic);
        }
        routing
    }

    /// Next instance of `service` in round-robin order among the `passing` instances that
    /// `admits` accepts; when none is left, among the `warning` ones; `critical` ones only
    /// in panic ([`routing_of`](Self::routing_of)), where every non-maintenance instance
    /// `admits` accepts qualifies alike; `maintenance` ones never. `None` when nothing
    /// qualifies.
    ///
    /// Candidates are ordered by id, so the rotation does not depend on the order of
    /// `instances` and stays fair when the list is rebuilt between calls. `admits` is
    /// called at most once per instance of the tiers examined.
    ///
    /// ```
    /// use registry_client::balancer::RoundRobin;
    /// # use registry_client::{Instance, Status};
    /// # fn instance(id: &str, status: Status) -> Instance {
    /// #     let now = chrono::Utc::now();
    /// #     Instance {
    /// #         id: id.into(), service: "sum".into(), url: format!("http://{id}:4040"), status,
    /// #         tags: vec![], metadata: Default::default(), ttl_seconds: 10, check: None,
    /// #         registered_at: now, last_heartbeat_at: now, lease_expires_at: None,
    /// #         status_changed_at: now, last_check: None, lease_held: false,
    /// #         deregister_critical_after: None, lease_status: None, lease_output: None, maintenance_reason: None,
    /// #     }
    /// # }
    ///
    /// let instances = vec![
    ///     instance("sum-1", Status::Passing),
    ///     instance("sum-2", Status::Warning),
    /// ];
    /// let balancer = RoundRobin::new();
    /// // sum-1's breaker is open (or sum-1 was just tried): the warning instance is the
    /// // last resort.
    /// let picked = balancer.pick("sum", &instances, |i| i.id != "sum-1");
    /// assert_eq!(picked.map(|i| i.id.as_str()), Some("sum-2"));
    /// ```
    pub fn pick<'a>(
        &self,
        service: &str,
        instances: &'a [Instance],
        admits: impl Fn(&Instance) -> bool,
    ) -> Option<&'a Instance> {
        let routing = self.routing_of(service, instances);
        self.pick_routed(routing, service, instances, admits)
    }

    /// [`pick`](Self::pick) with the routing decided beforehand (once per call by
    /// [`routing_of`](Self::routing_of), so that a retry is routed as the first attempt
    /// was).
    pub fn pick_routed<'a>(
        &self,
        routing: Routing,
        service: &str,
        instances: &'a [Instance],
        admits: impl Fn(&Instance) -> bool,
    ) -> Option<&'a Instance> {
        let tier = |wanted: &dyn Fn(Status) -> bool| {
            let mut candidates: Vec<&'a Instance> = instances
                .iter()
                .filter(|i| wanted(i.status) && admits(i))
                .collect();
            candidates.sort_by(|a, b| a.id.cmp(&b.id));
            candidates
        };
        let candidates = match routing {
            Routing::Panic => tier(&|status| status != Status::Maintenance),
            Routing::Normal => {
                let passing = tier(&|status| status == Status::Passing);
                if passing.is_empty() {
                    tier(&|status| status == Status::Warning)
                } else {
                    passing
                }
            }
        };
        let first = *candidates.first()?;

        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let chosen = match last.get_mut(service) {
            Some(previous) => {
                let next = candidates
                    .iter()
                    .copied()
                    .find(|i| i.id.as_str() > previous.as_str())
                    .unwrap_or(first);
                previous.clone_from(&next.id);
                next
            }
            None => {
                let start = candidates[rand::random_range(0..candidates.len())];
                last.insert(service.to_owned(), start.id.clone());
                start
            }
        };
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;

    fn instance(id: &str, status: Status) -> Instance {
        let now = Utc::now();
        Instance {
            id: id.to_owned(),
            service: "sum".to_owned(),
            url: format!("http://{id}:4040"),
            status,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            ttl_seconds: 10,
            check: None,
            registered_at: now,
            last_heartbeat_at: now,
            lease_expires_at: None,
            status_changed_at: now,
            last_check: None,
            lease_held: false,
            deregister_critical_after: None,
            lease_status: None,
            lease_output: None,
            maintenance_reason: None,
        }
    }

    fn picks(
        balancer: &RoundRobin,
        instances: &[Instance],
        n: usize,
        admits: impl Fn(&Instance) -> bool,
    ) -> Vec<String> {
        (0..n)
            .map(|_| {
                balancer
                    .pick("sum", instances, &admits)
                    .map(|i| i.id.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    fn count(picked: &[String], id: &str) -> usize {
        picked.iter().filter(|p| p.as_str() == id).count()
    }

    #[test]
    fn alternates_over_passing_instances() {
        let instances = vec![
            instance("sum-2", Status::Passing),
            instance("sum-1", Status::Passing),
            instance("sum-3", Status::Passing),
        ];
        let balancer = RoundRobin::new();
        let picked = picks(&balancer, &instances, 9, |_| true);
        // Whatever the random start, every window of three holds each instance once and
        // the order follows the ids.
        for window in picked.chunks(3) {
            let mut sorted = window.to_vec();
            sorted.sort();
            assert_eq!(sorted, ["sum-1", "sum-2", "sum-3"], "{picked:?}");
        }
        for pair in picked.windows(2) {
            let next = match pair[0].as_str() {
                "sum-1" => "sum-2",
                "sum-2" => "sum-3",
                _ => "sum-1",
            };
            assert_eq!(pair[1], next, "{picked:?}");
        }
    }

    #[test]
    fn instances_the_breaker_refuses_are_skipped() {
        let instances = vec![
            instance("sum-1", Status::Passing),
            instance("sum-2", Status::Passing),
            instance("sum-3", Status::Passing),
        ];
        let balancer = RoundRobin::new();
        let picked = picks(&balancer, &instances, 10, |i| i.id != "sum-2");
        assert_eq!(count(&picked, "sum-2"), 0, "{picked:?}");
        assert_eq!(count(&picked, "sum-1"), 5, "{picked:?}");
        assert_eq!(count(&picked, "sum-3"), 5, "{picked:?}");
    }

    #[test]
    fn warning_instances_only_when_no_passing_one_is_admitted() {
        let instances = vec![
            instance("sum-1", Status::Warning),
            instance("sum-2", Status::Passing),
            instance("sum-3", Status::Warning),
        ];
        let balancer = RoundRobin::new();
        let picked = picks(&balancer, &instances, 4, |_| true);
        assert!(picked.iter().all(|p| p == "sum-2"), "{picked:?}");

        // With sum-2's breaker open, the warning ones share the traffic.
        let picked = picks(&balancer, &instances, 6, |i| i.id != "sum-2");
        assert_eq!(count(&picked, "sum-1"), 3, "{picked:?}");
        assert_eq!(count(&picked, "sum-3"), 3, "{picked:?}");
    }

    #[test]
    fn critical_and_maintenance_never_take_traffic() {
        let instances = vec![
            instance("sum-1", Status::Critical),
            instance("sum-2", Status::Maintenance),
            instance("sum-3", Status::Warning),
        ];
        let balancer = RoundRobin::new();
        let picked = picks(&balancer, &instances, 5, |_| true);
        assert!(picked.iter().all(|p| p == "sum-3"), "{picked:?}");
    }

    #[test]
    fn none_when_nothing_qualifies() {
        let balancer = RoundRobin::new();
        assert!(balancer.pick("sum", &[], |_| true).is_none());
        let instances = vec![
            instance("sum-1", Status::Critical),
            instance("sum-2", Status::Maintenance),
            instance("sum-3", Status::Passing),
            instance("sum-4", Status::Warning),
        ];
        assert!(balancer.pick("sum", &instances, |_| false).is_none());
        assert!(
            balancer
                .pick("sum", &instances, |i| i.status != Status::Passing
                    && i.status != Status::Warning)
                .is_none()
        );
    }

    #[test]
    fn rotation_stays_fair_when_the_list_is_rebuilt_between_calls() {
        let ids = ["sum-1", "sum-2", "sum-3", "sum-4"];
        let balancer = RoundRobin::new();
        let mut picked = Vec::new();
        for round in 0..40 {
            // A fresh list every call, in a different order each time, as discovery
            // rebuilds it from each answer of the registry.
            let mut instances: Vec<Instance> =
                ids.iter().map(|id| instance(id, Status::Passing)).collect();
            instances.rotate_left(round % ids.len());
            if round % 3 == 0 {
                instances.reverse();
            }
            let chosen = balancer
                .pick("sum", &instances, |_| true)
                .map(|i| i.id.clone())
                .unwrap_or_default();
            picked.push(chosen);
        }
        for id in ids {
            assert_eq!(count(&picked, id), 10, "{id} in {picked:?}");
        }
    }

    #[test]
    fn an_added_instance_joins_the_rotation_without_a_repeat() {
        let balancer = RoundRobin::new();
        let two = vec![
            instance("sum-1", Status::Passing),
            instance("sum-3", Status::Passing),
        ];
        // Get to a known position: the last pick was sum-1.
        while balancer.pick("sum", &two, |_| true).map(|i| i.id.as_str()) != Some("sum-1") {}
        let three = vec![
            instance("sum-3", Status::Passing),
            instance("sum-2", Status::Passing),
            instance("sum-1", Status::Passing),
        ];
        let picked = picks(&balancer, &three, 3, |_| true);
        assert_eq!(picked, ["sum-2", "sum-3", "sum-1"]);
    }

    #[test]
    fn services_rotate_independently() {
        let balancer = RoundRobin::new();
        let instances = vec![
            instance("a-1", Status::Passing),
            instance("a-2", Status::Passing),
        ];
        let first = balancer
            .pick("a", &instances, |_| true)
            .map(|i| i.id.clone());
        let _ = balancer.pick("b", &instances, |_| true);
        let second = balancer
            .pick("a", &instances, |_| true)
            .map(|i| i.id.clone());
        assert_ne!(first, second);
    }

    #[test]
    fn panic_below_the_threshold_of_available_instances() {
        let statuses = |list: &[Status]| -> Vec<Instance> {
            list.iter()
                .enumerate()
                .map(|(n, status)| instance(&format!("sum-{n}"), *status))
                .collect()
        };
        use Status::{Critical, Maintenance, Passing, Warning};
        // 1 of 3 available: panic at the default threshold.
        let one_of_three = statuses(&[Passing, Critical, Critical]);
        assert_eq!(routing(&one_of_three, 0.5), Routing::Panic);
        // Warning counts as available (Envoy's degraded hosts).
        assert_eq!(
            routing(&statuses(&[Warning, Passing, Critical]), 0.5),
            Routing::Normal
        );
        // Exactly half is not below half.
        assert_eq!(
            routing(&statuses(&[Passing, Critical]), 0.5),
            Routing::Normal
        );
        // Maintenance instances are not counted at all: 1 of 2, not 1 of 4.
        assert_eq!(
            routing(
                &statuses(&[Passing, Critical, Maintenance, Maintenance]),
                0.5
            ),
            Routing::Normal
        );
        // Every instance critical: panic; none known (or only maintenance): nothing to
        // spread over.
        assert_eq!(
            routing(&statuses(&[Critical, Critical]), 0.5),
            Routing::Panic
        );
        assert_eq!(routing(&[], 0.5), Routing::Normal);
        assert_eq!(routing(&statuses(&[Maintenance]), 0.5), Routing::Normal);
        // 0 (and nonsense) turns panic off; a higher threshold panics sooner.
        assert_eq!(routing(&one_of_three, 0.0), Routing::Normal);
        assert_eq!(routing(&one_of_three, f64::NAN), Routing::Normal);
        assert_eq!(routing(&one_of_three, 0.3), Routing::Normal);
        assert_eq!(
            routing(&statuses(&[Passing, Passing, Critical]), 0.9),
            Routing::Panic
        );
    }

    #[test]
    fn in_panic_calls_spread_over_every_non_maintenance_instance() {
        let instances = vec![
            instance("sum-1", Status::Passing),
            instance("sum-2", Status::Critical),
            instance("sum-3", Status::Critical),
            instance("sum-4", Status::Maintenance),
        ];
        let balancer = RoundRobin::new();
        let picked = picks(&balancer, &instances, 9, |_| true);
        for id in ["sum-1", "sum-2", "sum-3"] {
            assert_eq!(count(&picked, id), 3, "{id} in {picked:?}");
        }
        assert_eq!(count(&picked, "sum-4"), 0, "maintenance never: {picked:?}");
    }

    #[test]
    fn in_panic_the_breakers_still_guard() {
        let instances = vec![
            instance("sum-1", Status::Critical),
            instance("sum-2", Status::Critical),
            instance("sum-3", Status::Passing),
        ];
        let balancer = RoundRobin::new();
        let picked = picks(&balancer, &instances, 6, |i| i.id != "sum-2");
        assert_eq!(count(&picked, "sum-2"), 0, "{picked:?}");
        assert_eq!((count(&picked, "sum-1"), count(&picked, "sum-3")), (3, 3));
        // Every breaker open: nothing to call, panic or not.
        assert!(balancer.pick("sum", &instances, |_| false).is_none());
    }

    #[test]
    fn with_panic_off_critical_instances_never_take_traffic() {
        let instances = vec![
            instance("sum-1", Status::Critical),
            instance("sum-2", Status::Critical),
            instance("sum-3", Status::Passing),
        ];
        let balancer = RoundRobin::with_panic_threshold(0.0);
        let picked = picks(&balancer, &instances, 6, |_| true);
        assert!(picked.iter().all(|p| p == "sum-3"), "{picked:?}");
        let all_critical = vec![
            instance("sum-1", Status::Critical),
            instance("sum-2", Status::Critical),
        ];
        assert!(balancer.pick("sum", &all_critical, |_| true).is_none());
    }

    #[test]
    fn routing_follows_the_statuses_in_and_out_of_panic() {
        let balancer = RoundRobin::new();
        let healthy = vec![
            instance("sum-1", Status::Passing),
            instance("sum-2", Status::Passing),
            instance("sum-3", Status::Critical),
        ];
        let mut lapsed = healthy.clone();
        lapsed[1].status = Status::Critical;
        assert_eq!(balancer.routing_of("sum", &healthy), Routing::Normal);
        assert_eq!(balancer.routing_of("sum", &lapsed), Routing::Panic);
        assert_eq!(balancer.routing_of("sum", &lapsed), Routing::Panic);
        // Another service is judged on its own instances.
        assert_eq!(balancer.routing_of("mult", &healthy), Routing::Normal);
        assert_eq!(balancer.routing_of("sum", &healthy), Routing::Normal);
        // Out of panic, the critical instance gets nothing again.
        let picked = picks(&balancer, &healthy, 4, |_| true);
        assert_eq!(count(&picked, "sum-3"), 0, "{picked:?}");
    }
}
