//! Running counts of the system's statuses, kept by the view as each instance changes, so
//! that the summary of `GET /v1/status` costs the same at a million instances as at ten:
//! a change updates a few counters (and, for a critical instance, one ordered set), a
//! summary reads them and the first critical instances. The leases are counted here too,
//! for the self-preservation survey: counting them in the database took a scan of every
//! instance, four times a second on each replica.

use std::collections::BTreeSet;

use registry_api::{Instance, Status, StatusCounts};

/// The counts of the whole system: instances per status, services per rolled-up status,
/// and which instances are critical.
#[derive(Debug, Default)]
pub struct Tally {
    instances: StatusCounts,
    services: StatusCounts,
    /// `(service, id)` of every critical instance, in the order the summary lists them.
    critical: BTreeSet<(String, String)>,
    leases: Leases,
}

/// The leases the self-preservation rule weighs (docs/operations.md, Self-preservation).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Leases {
    /// Live leases: of passing or warning instances, not lapsed (held ones included).
    pub live: u64,
    /// Leases whose lapse is held, whatever the instance's status.
    pub held: u64,
    /// Of the held ones, those that are live: they count as silent.
    pub held_live: u64,
}

impl Leases {
    /// What one instance adds to the counts. A lapsed lease makes its instance critical,
    /// so a live lease is a lease of a passing or warning instance.
    pub fn of(instance: &Instance) -> Self {
        let live = instance.ttl_seconds > 0
            && matches!(instance.status, Status::Passing | Status::Warning);
        let held = instance.lease_held;
        Self {
            live: u64::from(live),
            held: u64::from(held),
            held_live: u64::from(held && live),
        }
    }

    pub fn plus(self, other: Self) -> Self {
        Self {
            live: self.live + other.live,
            held: self.held + other.held,
            held_live: self.held_live + other.held_live,
        }
    }

    fn minus(self, other: Self) -> Self {
        Self {
            live: self.live.saturating_sub(other.live),
            held: self.held.saturating_sub(other.held),
            held_live: self.held_live.saturating_sub(other.held_live),
        }
    }
}

/// What the tally counts of one instance: its status and its leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub status: Status,
    pub leases: Leases,
}

impl Counted {
    pub fn of(instance: &Instance) -> Self {
        Self {
            status: instance.status,
            leases: Leases::of(instance),
        }
    }
}

impl Tally {
    /// Counts instance `id` of `service` going from `before` to `after` ([`Counted::of`];
    /// `None`: absent), its status and its leases.
    /// `counts` are the service's own instance counts, updated here too; a service
    /// without instances is not counted among the services.
    pub fn instance_changed(
        &mut self,
        (service, id): (&str, &str),
        counts: &mut StatusCounts,
        before: Option<Counted>,
        after: Option<Counted>,
    ) {
        let leases = |counted: Option<Counted>| counted.map_or(Leases::default(), |c| c.leases);
        self.leases = self.leases.plus(leases(after)).minus(leases(before));
        let (before, after) = (before.map(|c| c.status), after.map(|c| c.status));
        if before == after {
            return;
        }
        let service_before = rolled_up(counts);
        if let Some(status) = before {
            counts.remove(status);
            self.instances.remove(status);
        }
        if let Some(status) = after {
            counts.add(status);
            self.instances.add(status);
        }
        let service_after = rolled_up(counts);
        if service_before != service_after {
            if let Some(status) = service_before {
                self.services.remove(status);
            }
            if let Some(status) = service_after {
                self.services.add(status);
            }
        }
        let critical = Some(Status::Critical);
        if after == critical {
            self.critical.insert((service.to_owned(), id.to_owned()));
        } else if before == critical {
            self.critical.remove(&(service.to_owned(), id.to_owned()));
        }
    }

    pub fn leases(&self) -> Leases {
        self.leases
    }

    pub fn instances(&self) -> StatusCounts {
        self.instances
    }

    pub fn services(&self) -> StatusCounts {
        self.services
    }

    /// The critical instances as `(service, id)`, in service then id order.
    pub fn critical(&self) -> impl Iterator<Item = (&str, &str)> {
        self.critical
            .iter()
            .map(|(service, id)| (service.as_str(), id.as_str()))
    }

    pub fn critical_total(&self) -> u64 {
        u64::try_from(self.critical.len()).unwrap_or(u64::MAX)
    }
}

/// A service's status from its counts; `None` while it has no instance.
fn rolled_up(counts: &StatusCounts) -> Option<Status> {
    (counts.total > 0).then(|| counts.roll_up())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instance of `status` without a lease.
    fn counted(status: Status) -> Option<Counted> {
        Some(Counted {
            status,
            leases: Leases::default(),
        })
    }

    #[test]
    fn a_service_is_counted_by_its_rolled_up_status_while_it_has_instances() {
        let mut tally = Tally::default();
        let mut sum = StatusCounts::default();
        tally.instance_changed(("sum", "a"), &mut sum, None, counted(Status::Passing));
        tally.instance_changed(("sum", "b"), &mut sum, None, counted(Status::Critical));
        assert_eq!(tally.services().warning, 1);
        assert_eq!(
            (tally.instances().total, tally.instances().critical),
            (2, 1)
        );
        assert_eq!(tally.critical().collect::<Vec<_>>(), [("sum", "b")]);

        tally.instance_changed(("sum", "a"), &mut sum, counted(Status::Passing), None);
        assert_eq!((tally.services().total, tally.services().critical), (1, 1));
        tally.instance_changed(("sum", "b"), &mut sum, counted(Status::Critical), None);
        assert_eq!(tally.services(), StatusCounts::default());
        assert_eq!(tally.instances(), StatusCounts::default());
        assert_eq!(tally.critical_total(), 0);
    }

    #[test]
    fn a_live_lease_is_a_lease_of_a_passing_or_warning_instance() {
        let instance = |status, ttl_seconds, lease_held| {
            let mut instance: Instance = serde_json::from_value(serde_json::json!({
                "id": "a", "service": "sum", "url": "http://10.0.0.1:4040", "status": "passing",
                "tags": [], "metadata": {}, "ttl_seconds": 10, "check": null,
                "registered_at": "2026-12-05T00:00:00Z", "last_heartbeat_at": "2026-12-05T00:00:00Z",
                "lease_expires_at": "2026-12-05T00:00:10Z", "status_changed_at": "2026-12-05T00:00:00Z",
                "last_check": null
            }))
            .expect("an instance");
            instance.status = status;
            instance.ttl_seconds = ttl_seconds;
            instance.lease_held = lease_held;
            Leases::of(&instance)
        };
        let counts = |live, held, held_live| Leases {
            live,
            held,
            held_live,
        };
        assert_eq!(instance(Status::Passing, 10, false), counts(1, 0, 0));
        assert_eq!(instance(Status::Warning, 10, true), counts(1, 1, 1));
        assert_eq!(
            instance(Status::Passing, 0, false),
            counts(0, 0, 0),
            "no lease"
        );
        assert_eq!(
            instance(Status::Critical, 10, true),
            counts(0, 1, 0),
            "held, but a check failed it"
        );
        assert_eq!(instance(Status::Maintenance, 10, false), counts(0, 0, 0));

        let mut tally = Tally::default();
        let mut sum = StatusCounts::default();
        let passing = |leases| {
            Some(Counted {
                status: Status::Passing,
                leases,
            })
        };
        tally.instance_changed(("sum", "a"), &mut sum, None, passing(counts(1, 1, 1)));
        tally.instance_changed(
            ("sum", "a"),
            &mut sum,
            passing(counts(1, 1, 1)),
            passing(counts(1, 0, 0)),
        );
        assert_eq!(tally.leases(), counts(1, 0, 0));
    }
}
