//! Running counts of the system's statuses, kept by the view as each instance changes, so
//! that the summary of `GET /v1/status` costs the same at a million instances as at ten:
//! a change updates a few counters (and, for a critical instance, one ordered set), a
//! summary reads them and the first critical instances.

use std::collections::BTreeSet;

use registry_api::{Status, StatusCounts};

/// The counts of the whole system: instances per status, services per rolled-up status,
/// and which instances are critical.
#[derive(Debug, Default)]
pub struct Tally {
    instances: StatusCounts,
    services: StatusCounts,
    /// `(service, id)` of every critical instance, in the order the summary lists them.
    critical: BTreeSet<(String, String)>,
}

impl Tally {
    /// Counts instance `id` of `service` going from `before` to `after` (`None`: absent).
    /// `counts` are the service's own instance counts, updated here too; a service
    /// without instances is not counted among the services.
    pub fn instance_changed(
        &mut self,
        (service, id): (&str, &str),
        counts: &mut StatusCounts,
        before: Option<Status>,
        after: Option<Status>,
    ) {
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

    #[test]
    fn a_service_is_counted_by_its_rolled_up_status_while_it_has_instances() {
        let mut tally = Tally::default();
        let mut sum = StatusCounts::default();
        tally.instance_changed(("sum", "a"), &mut sum, None, Some(Status::Passing));
        tally.instance_changed(("sum", "b"), &mut sum, None, Some(Status::Critical));
        assert_eq!(tally.services().warning, 1);
        assert_eq!(
            (tally.instances().total, tally.instances().critical),
            (2, 1)
        );
        assert_eq!(tally.critical().collect::<Vec<_>>(), [("sum", "b")]);

        tally.instance_changed(("sum", "a"), &mut sum, Some(Status::Passing), None);
        assert_eq!((tally.services().total, tally.services().critical), (1, 1));
        tally.instance_changed(("sum", "b"), &mut sum, Some(Status::Critical), None);
        assert_eq!(tally.services(), StatusCounts::default());
        assert_eq!(tally.instances(), StatusCounts::default());
        assert_eq!(tally.critical_total(), 0);
    }
}
