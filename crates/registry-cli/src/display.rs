//! Text tables of the registry's state for people at a terminal: `registry status`,
//! `registry services` and `registry watch` print them, and so does the demo client.
//! Pure functions (data in, text out), so they are tested without a server.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use registry_api::{Event, Instance, ServiceList, SystemStatus};

/// The table of `registry status`: a header line, then each service with its rolled-up
/// status, each instance indented under it with its status, URL, age of its last heartbeat
/// and last check. Ages are measured from the snapshot time `status.at` (the registry's
/// clock), so they are right for a past moment too and immune to local clock skew.
///
/// ```
/// use registry_cli::display::format_status;
/// use registry_api::{CheckResult, ServiceStatus};
/// use registry_api::SystemStatus;
/// # use chrono::{DateTime, Utc};
/// # use registry_api::{Instance, Status};
/// # fn instance(id: &str, status: Status, ttl_seconds: u32, heartbeat: DateTime<Utc>) -> Instance {
/// #     Instance {
/// #         id: id.into(), service: "sum".into(), url: format!("http://{id}:4040"), status,
/// #         tags: vec![], metadata: Default::default(), ttl_seconds, check: None,
/// #         registered_at: heartbeat, last_heartbeat_at: heartbeat, lease_expires_at: None,
/// #         status_changed_at: heartbeat, last_check: None, lease_held: false,
/// #         deregister_critical_after: None, lease_status: None, lease_output: None, maintenance_reason: None,
/// #     }
/// # }
///
/// let at: DateTime<Utc> = "2024-05-01T12:00:00Z".parse()?;
/// let mut throttled = instance("sum-2", Status::Warning, 0, at);
/// throttled.last_check = Some(CheckResult {
///     at,
///     status: Status::Warning,
///     detail: "HTTP 429".into(),
/// });
/// let status = SystemStatus {
///     index: 42,
///     at,
///     history_starts_at: None,
///     epoch: None,
///     self_preservation: Default::default(),
///     services: vec![ServiceStatus {
///         name: "sum".into(),
///         status: Status::Warning,
///         instances: vec![
///             instance("sum-1", Status::Passing, 10, at - chrono::TimeDelta::seconds(3)),
///             throttled,
///         ],
///     }],
///     next_cursor: None,
/// };
/// assert_eq!(
///     format_status(&status),
///     "index 42 at 2024-05-01T12:00:00Z\n\
///      NAME     STATUS   URL                HEARTBEAT  LAST CHECK\n\
///      sum      warning  2 instances\n\
///      \x20 sum-1  passing  http://sum-1:4040  3s ago     -\n\
///      \x20 sum-2  warning  http://sum-2:4040  no lease   HTTP 429\n"
/// );
/// # Ok::<(), chrono::ParseError>(())
/// ```
pub fn format_status(status: &SystemStatus) -> String {
    let mut text = format!("index {} at {}\n", status.index, timestamp(status.at));
    let preservation = &status.self_preservation;
    if preservation.active {
        let since = preservation.since.map_or_else(|| "-".to_owned(), timestamp);
        text.push_str(&format!(
            "SELF-PRESERVATION since {since}: lease lapses are held ({} held)\n",
            preservation.held
        ));
    }
    if status.services.is_empty() {
        text.push_str("no service is registered\n");
        return text;
    }
    let mut rows = vec![cells(["NAME", "STATUS", "URL", "HEARTBEAT", "LAST CHECK"])];
    for service in &status.services {
        let count = match service.instances.len() {
            1 => "1 instance".to_owned(),
            n => format!("{n} instances"),
        };
        rows.push(vec![
            clean(&service.name),
            service.status.as_str().to_owned(),
            count,
        ]);
        for instance in &service.instances {
            rows.push(instance_row(instance, status.at));
        }
    }
    for line in align(&rows, &[]) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

fn instance_row(instance: &Instance, now: DateTime<Utc>) -> Vec<String> {
    let heartbeat = if instance.ttl_seconds == 0 {
        // Without a lease heartbeats mean nothing; the active check decides.
        "no lease".to_owned()
    } else if instance.lease_held {
        format!("{} (held)", format_age(now - instance.last_heartbeat_at))
    } else {
        format_age(now - instance.last_heartbeat_at)
    };
    let check = match (&instance.check, &instance.last_check) {
        (_, Some(result)) => clean(&result.detail),
        (Some(_), None) => "not run yet".to_owned(),
        (None, None) => "-".to_owned(),
    };
    vec![
        format!("  {}", clean(&instance.id)),
        instance.status.as_str().to_owned(),
        clean(&instance.url),
        heartbeat,
        check,
    ]
}

/// The table of `registry services`: NAME INSTANCES PASSING WARNING CRITICAL MAINTENANCE,
/// counts right-aligned.
///
/// ```
/// use registry_cli::display::format_services;
/// use registry_api::ServiceList;
/// use registry_api::ServiceSummary;
///
/// let list = ServiceList {
///     index: 7,
///     services: vec![
///         ServiceSummary {
///             name: "concat".into(),
///             instances: 1,
///             passing: 1,
///             warning: 0,
///             critical: 0,
///             maintenance: 0,
///         },
///         ServiceSummary {
///             name: "sum".into(),
///             instances: 12,
///             passing: 10,
///             warning: 1,
///             critical: 0,
///             maintenance: 1,
///         },
///     ],
///     next_cursor: None,
/// };
/// assert_eq!(
///     format_services(&list),
///     "NAME    INSTANCES  PASSING  WARNING  CRITICAL  MAINTENANCE\n\
///      concat          1        1        0         0            0\n\
///      sum            12       10        1         0            1\n"
/// );
/// assert_eq!(
///     format_services(&ServiceList { index: 3, services: vec![], next_cursor: None }),
///     "no service is registered (index 3)\n"
/// );
/// ```
pub fn format_services(list: &ServiceList) -> String {
    if list.services.is_empty() {
        return format!("no service is registered (index {})\n", list.index);
    }
    let mut rows = vec![cells([
        "NAME",
        "INSTANCES",
        "PASSING",
        "WARNING",
        "CRITICAL",
        "MAINTENANCE",
    ])];
    for s in &list.services {
        rows.push(vec![
            clean(&s.name),
            s.instances.to_string(),
            s.passing.to_string(),
            s.warning.to_string(),
            s.critical.to_string(),
            s.maintenance.to_string(),
        ]);
    }
    let mut text = String::new();
    for line in align(&rows, &[1, 2, 3, 4, 5]) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// One event on one line: `#index at service/instance kind from -> to (reason)`, with `-`
/// for the missing side of a registration (no `from`) or a removal (no `to`).
///
/// ```
/// use registry_cli::display::format_event;
/// use registry_api::{Event, EventKind, Reason};
/// # use chrono::{DateTime, Utc};
/// # use registry_api::{Instance, Status};
/// # fn instance(id: &str, status: Status, ttl_seconds: u32, heartbeat: DateTime<Utc>) -> Instance {
/// #     Instance {
/// #         id: id.into(), service: "sum".into(), url: format!("http://{id}:4040"), status,
/// #         tags: vec![], metadata: Default::default(), ttl_seconds, check: None,
/// #         registered_at: heartbeat, last_heartbeat_at: heartbeat, lease_expires_at: None,
/// #         status_changed_at: heartbeat, last_check: None, lease_held: false,
/// #         deregister_critical_after: None, lease_status: None, lease_output: None, maintenance_reason: None,
/// #     }
/// # }
///
/// let at: DateTime<Utc> = "2024-05-01T12:00:00Z".parse()?;
/// let event = Event {
///     index: 43,
///     at,
///     service: "sum".into(),
///     instance: "sum-1".into(),
///     kind: EventKind::Status,
///     from: Some(Status::Passing),
///     to: Some(Status::Critical),
///     reason: Reason::LeaseExpired,
///     snapshot: instance("sum-1", Status::Critical, 10, at),
/// };
/// assert_eq!(
///     format_event(&event),
///     "#43 2024-05-01T12:00:00Z sum/sum-1 status passing -> critical (lease_expired)"
/// );
///
/// let removed = Event {
///     index: 44,
///     kind: EventKind::Removed,
///     from: Some(Status::Critical),
///     to: None,
///     reason: Reason::Deregistered,
///     ..event
/// };
/// assert_eq!(
///     format_event(&removed),
///     "#44 2024-05-01T12:00:00Z sum/sum-1 removed critical -> - (deregistered)"
/// );
/// # Ok::<(), chrono::ParseError>(())
/// ```
pub fn format_event(event: &Event) -> String {
    let status = |s: Option<registry_api::Status>| s.map_or("-", |s| s.as_str());
    format!(
        "#{} {} {}/{} {} {} -> {} ({})",
        event.index,
        timestamp(event.at),
        clean(&event.service),
        clean(&event.instance),
        event.kind.as_str(),
        status(event.from),
        status(event.to),
        event.reason.as_str(),
    )
}

/// `3s ago`, `2m5s ago`, `1h4m ago`, `3d2h ago`; `just now` under a second (or when the
/// registry's clock says the heartbeat is in the future).
///
/// ```
/// use chrono::TimeDelta;
/// use registry_cli::display::format_age;
///
/// assert_eq!(format_age(TimeDelta::milliseconds(400)), "just now");
/// assert_eq!(format_age(TimeDelta::seconds(-5)), "just now");
/// assert_eq!(format_age(TimeDelta::seconds(3)), "3s ago");
/// assert_eq!(format_age(TimeDelta::seconds(125)), "2m5s ago");
/// assert_eq!(format_age(TimeDelta::seconds(3_840)), "1h4m ago");
/// assert_eq!(format_age(TimeDelta::seconds(266_400)), "3d2h ago");
/// ```
pub fn format_age(elapsed: TimeDelta) -> String {
    let secs = elapsed.num_seconds();
    if secs < 1 {
        return "just now".to_owned();
    }
    let (days, hours, minutes, seconds) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    let age = if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    };
    format!("{age} ago")
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Makes text safe for one terminal line: check details and names come from the network,
/// and a newline or an escape sequence in them must not break or repaint the table.
fn clean(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(cleaned, "{}", c.escape_default());
        } else {
            cleaned.push(c);
        }
    }
    cleaned
}

fn cells<const N: usize>(texts: [&str; N]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

/// Pads cells into columns two spaces apart; rows may be shorter than others. Columns in
/// `right` are right-aligned (numbers). Trailing spaces are trimmed.
fn align(rows: &[Vec<String>], right: &[usize]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let pad = widths[c].saturating_sub(cell.chars().count());
                if right.contains(&c) {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use registry_api::{EventKind, Reason, ServiceList, ServiceSummary, Status, SystemStatus};

    use super::*;
    use crate::fixtures::{event, system, t};

    #[test]
    fn status_table_shows_services_and_indented_instances() {
        let expected = "\
index 42 at 2026-05-01T10:00:00Z
NAME        STATUS       URL                   HEARTBEAT  LAST CHECK
concat      maintenance  1 instance
  concat-1  maintenance  http://concat-1:4040  no lease   not run yet
sum         warning      2 instances
  sum-1     passing      http://sum-1:4040     3s ago     -
  sum-2     critical     http://sum-2:4040     1m5s ago   timed out after 2s\\n\\u{1b}[2J
";
        assert_eq!(format_status(&system()), expected);
    }

    #[test]
    fn self_preservation_is_the_first_thing_said() {
        let mut status = system();
        status.self_preservation = registry_api::SelfPreservation {
            active: true,
            since: Some(t(-30)),
            held: 1,
        };
        status.services[1].instances[0].lease_held = true;
        let text = format_status(&status);
        let mut lines = text.lines().skip(1);
        assert_eq!(
            lines.next(),
            Some("SELF-PRESERVATION since 2026-05-01T09:59:30Z: lease lapses are held (1 held)")
        );
        assert!(text.contains("3s ago (held)"), "{text}");
    }

    #[test]
    fn empty_system_says_so() {
        let empty = SystemStatus {
            index: 0,
            at: t(0),
            history_starts_at: None,
            epoch: None,
            self_preservation: Default::default(),
            services: vec![],
            next_cursor: None,
        };
        assert_eq!(
            format_status(&empty),
            "index 0 at 2026-05-01T10:00:00Z\nno service is registered\n"
        );
        let none = ServiceList {
            index: 3,
            services: vec![],
            next_cursor: None,
        };
        assert_eq!(
            format_services(&none),
            "no service is registered (index 3)\n"
        );
    }

    #[test]
    fn services_table_right_aligns_counts() {
        let summary = |name: &str, n: u64| ServiceSummary {
            name: name.into(),
            instances: n,
            passing: n,
            warning: 0,
            critical: 0,
            maintenance: 0,
        };
        let list = ServiceList {
            index: 9,
            services: vec![summary("concat", 1), summary("sum", 12)],
            next_cursor: None,
        };
        let expected = "\
NAME    INSTANCES  PASSING  WARNING  CRITICAL  MAINTENANCE
concat          1        1        0         0            0
sum            12       12        0         0            0
";
        assert_eq!(format_services(&list), expected);
    }

    #[test]
    fn events_are_one_line_each() {
        let change = event(
            43,
            EventKind::Status,
            Some(Status::Passing),
            Some(Status::Critical),
        );
        assert_eq!(
            format_event(&change),
            "#43 2026-05-01T10:00:00Z sum/sum-1 status passing -> critical (lease_expired)"
        );
        let mut new = event(44, EventKind::Registered, None, Some(Status::Passing));
        new.reason = Reason::Registered;
        assert_eq!(
            format_event(&new),
            "#44 2026-05-01T10:00:00Z sum/sum-1 registered - -> passing (registered)"
        );
        let mut gone = event(45, EventKind::Removed, Some(Status::Critical), None);
        gone.reason = Reason::Reaped;
        assert!(format_event(&gone).ends_with("removed critical -> - (reaped)"));
    }

    #[test]
    fn ages_read_naturally() {
        let age = |s| format_age(TimeDelta::seconds(s));
        assert_eq!(age(-5), "just now");
        assert_eq!(age(0), "just now");
        assert_eq!(age(3), "3s ago");
        assert_eq!(age(125), "2m5s ago");
        assert_eq!(age(3_600 + 240), "1h4m ago");
        assert_eq!(age(3 * 86_400 + 7_200), "3d2h ago");
    }
}
