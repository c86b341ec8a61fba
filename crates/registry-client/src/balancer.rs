//! Load balancing: which instance of a service gets the next call.
//!
//! Round robin rather than random or least-loaded: the registry already tells us which
//! instances are healthy and the circuit breaker tells us which ones are failing for us, so
//! what is left is to spread calls evenly, predictably and without shared state between
//! processes. Three rules shape it:
//!
//! - Only `passing` instances take traffic while any of them is admitted; `warning` ones
//!   (throttling, HTTP 429) are the last resort; `critical` and `maintenance` ones never do
//!   (maintenance means "alive, send no traffic": the instance is draining).
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
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// Service name -> id of the instance picked last.
    last: Mutex<HashMap<String, String>>,
}

impl RoundRobin {
    /// A balancer that has picked nothing yet.
    ///
    /// ```
    /// let balancer = registry_client::balancer::RoundRobin::new();
    /// assert!(balancer.pick("sum", &[], |_| true).is_none());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Next instance of `service` in round-robin order among the `passing` instances that
    /// `admits` accepts; when none is left, among the `warning` ones; never `critical` or
    /// `maintenance` ones. `None` when nothing qualifies.
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
        let tier = |status: Status| {
            let mut candidates: Vec<&'a Instance> = instances
                .iter()
                .filter(|i| i.status == status && admits(i))
                .collect();
            candidates.sort_by(|a, b| a.id.cmp(&b.id));
            candidates
        };
        let mut candidates = tier(Status::Passing);
        if candidates.is_empty() {
            candidates = tier(Status::Warning);
        }
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
}
