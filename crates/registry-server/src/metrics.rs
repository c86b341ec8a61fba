//! Prometheus metrics of the registry (prefix `registry_`; listed in docs/operations.md).
//!
//! One [`Registry`] of our own, not the `prometheus` crate's global default, so that only
//! what this module declares is served at `/metrics` and a library linked in cannot add
//! to it. The handles are process-wide: counters are bumped where things happen (the view
//! applying events, the check worker, the heartbeat route, the HTTP middleware, the store
//! call sites), and the gauges that describe the current state (instances, watchers,
//! index) are set from the view when scraped, so they can never drift from it.

mod striped;

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use registry_api::{Event, EventKind, Reason, ServiceList, Status, StatusCounts};
use striped::{StripedHistogram, StripedHistogramVec};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

struct Metrics {
    registry: Registry,
    instances: IntGaugeVec,
    instances_by_status: IntGaugeVec,
    registrations: IntCounter,
    heartbeats: IntCounter,
    expirations: IntCounter,
    check_results: IntCounterVec,
    events: IntCounterVec,
    watchers: IntGauge,
    index: IntGauge,
    self_preservation: IntGauge,
    held_lapses: IntCounter,
    http_duration: StripedHistogramVec,
    db_duration: HistogramVec,
    dns_queries: IntCounterVec,
    dns_duration: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Buckets for DNS answers, made from memory in microseconds.
const DNS_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1,
];

/// Buckets for database calls, which are mostly well under the HTTP defaults.
const DB_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let instances = IntGaugeVec::new(
            Opts::new(
                "registry_instances",
                "Registered instances by service and status.",
            ),
            &["service", "status"],
        )
        .expect("valid metric");
        let instances_by_status = IntGaugeVec::new(
            Opts::new(
                "registry_instances_by_status",
                "Registered instances by status, all services together.",
            ),
            &["status"],
        )
        .expect("valid metric");
        let registrations = IntCounter::new(
            "registry_registrations_total",
            "New instances registered (registered events applied).",
        )
        .expect("valid metric");
        let heartbeats = IntCounter::new(
            "registry_heartbeats_total",
            "Heartbeats received by this replica.",
        )
        .expect("valid metric");
        let expirations = IntCounter::new(
            "registry_expirations_total",
            "Instances whose lease expired (lease_expired events applied).",
        )
        .expect("valid metric");
        let check_results = IntCounterVec::new(
            Opts::new(
                "registry_check_results_total",
                "Health check probes run by this replica, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new(
                "registry_events_total",
                "Events applied to this replica's view, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let watchers = IntGauge::new(
            "registry_watchers",
            "Blocking queries and event streams waiting.",
        )
        .expect("valid metric");
        let index =
            IntGauge::new("registry_index", "The latest global index.").expect("valid metric");
        let self_preservation = IntGauge::new(
            "registry_self_preservation",
            "1 while the registry is in self-preservation (lease lapses held), else 0.",
        )
        .expect("valid metric");
        let held_lapses = IntCounter::new(
            "registry_self_preservation_held_total",
            "Lease lapses this replica held in self-preservation (once per lapse).",
        )
        .expect("valid metric");
        let http_duration = StripedHistogramVec::new(
            "registry_http_request_duration_seconds",
            "HTTP request duration by method, route template and status.",
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let db_duration = HistogramVec::new(
            HistogramOpts::new(
                "registry_db_query_duration_seconds",
                "Duration of database calls by operation.",
            )
            .buckets(DB_BUCKETS.to_vec()),
            &["operation"],
        )
        .expect("valid metric");
        let dns_queries = IntCounterVec::new(
            Opts::new(
                "registry_dns_queries_total",
                "DNS queries answered, by query type and response code.",
            ),
            &["qtype", "rcode"],
        )
        .expect("valid metric");
        let dns_duration = Histogram::with_opts(
            HistogramOpts::new(
                "registry_dns_query_duration_seconds",
                "Time from a DNS query read to its answer sent.",
            )
            .buckets(DNS_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        // Every result is shown from the start, at 0, so rates work before the first failure.
        for result in [Status::Passing, Status::Warning, Status::Critical] {
            check_results.with_label_values(&[result.as_str()]);
        }
        // So are the common DNS answers, so a dashboard shows 0 before the first query.
        for qtype in ["A", "AAAA", "SRV"] {
            for rcode in ["NOERROR", "NXDOMAIN", "REFUSED"] {
                dns_queries.with_label_values(&[qtype, rcode]);
            }
        }
        for collector in [
            Box::new(instances.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(instances_by_status.clone()),
            Box::new(registrations.clone()),
            Box::new(heartbeats.clone()),
            Box::new(expirations.clone()),
            Box::new(check_results.clone()),
            Box::new(events.clone()),
            Box::new(watchers.clone()),
            Box::new(index.clone()),
            Box::new(self_preservation.clone()),
            Box::new(held_lapses.clone()),
            Box::new(http_duration.clone()),
            Box::new(db_duration.clone()),
            Box::new(dns_queries.clone()),
            Box::new(dns_duration.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        Self {
            registry,
            instances,
            instances_by_status,
            registrations,
            heartbeats,
            expirations,
            check_results,
            events,
            watchers,
            index,
            self_preservation,
            held_lapses,
            http_duration,
            db_duration,
            dns_queries,
            dns_duration,
        }
    }
}

/// Most services for which `registry_instances` has a series per service and status. A
/// hundred thousand services made 400,000 series: 700 MB in every replica that was
/// scraped, and a 24 MB answer per scrape. Past it, only `registry_instances_by_status`.
pub const MAX_SERVICE_SERIES: u64 = 1_000;

/// Every registry metric in the Prometheus text format, with the gauges set from the
/// state given (the view's, as of now): `instances` by status, and each service's (made
/// by `services`) when the registry has at most [`MAX_SERVICE_SERIES`] of them.
pub fn render(
    instances: StatusCounts,
    service_count: u64,
    services: impl FnOnce() -> ServiceList,
    watchers: usize,
    index: u64,
    self_preservation: bool,
) -> String {
    // The gauges are shared by every view in the process (tests run several registries in
    // one process): one render at a time, so that a scrape reads the values it just set
    // and not those of another view's scrape in between.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _rendering = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let metrics = &*METRICS;
    let StatusCounts {
        passing,
        warning,
        critical,
        maintenance,
        ..
    } = instances;
    for (status, count) in per_status([passing, warning, critical, maintenance]) {
        metrics
            .instances_by_status
            .with_label_values(&[status.as_str()])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    // Services and statuses that are gone must not linger at their last value.
    metrics.instances.reset();
    let services = (service_count <= MAX_SERVICE_SERIES).then(services);
    for service in services.iter().flat_map(|list| &list.services) {
        let counts = [
            service.passing,
            service.warning,
            service.critical,
            service.maintenance,
        ];
        for (status, count) in per_status(counts) {
            metrics
                .instances
                .with_label_values(&[service.name.as_str(), status.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
    metrics
        .watchers
        .set(i64::try_from(watchers).unwrap_or(i64::MAX));
    metrics.index.set(i64::try_from(index).unwrap_or(i64::MAX));
    metrics.self_preservation.set(i64::from(self_preservation));
    let mut out = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&metrics.registry.gather(), &mut out) {
        tracing::warn!(%error, "could not encode the metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Counts of passing, warning, critical and maintenance instances, with their statuses.
fn per_status(counts: [u64; 4]) -> [(Status, u64); 4] {
    let statuses = [
        Status::Passing,
        Status::Warning,
        Status::Critical,
        Status::Maintenance,
    ];
    std::array::from_fn(|k| (statuses[k], counts[k]))
}

/// An event the view applied: counted by kind, and as a registration or an expiration.
pub fn event_applied(event: &Event) {
    METRICS
        .events
        .with_label_values(&[event.kind.as_str()])
        .inc();
    if event.kind == EventKind::Registered {
        METRICS.registrations.inc();
    }
    if event.reason == Reason::LeaseExpired {
        METRICS.expirations.inc();
    }
}

/// A lease lapse held in self-preservation.
pub fn lapse_held() {
    METRICS.held_lapses.inc();
}

/// A heartbeat received.
pub fn heartbeat() {
    METRICS.heartbeats.inc();
}

/// The result of one health check probe.
pub fn check_result(status: Status) {
    METRICS
        .check_results
        .with_label_values(&[status.as_str()])
        .inc();
}

/// One HTTP request answered.
pub fn http_request(method: &Method, route: &str, status: StatusCode, duration: Duration) {
    RECENT_HTTP_SERIES.with_borrow_mut(|recent| {
        recent.find(method, route, status).observe(duration);
    });
}

/// Most request-duration series a thread keeps at hand in [`RECENT_HTTP_SERIES`].
const RECENT_HTTP_SERIES_KEPT: usize = 32;

thread_local! {
    /// The request-duration series this thread used last. Finding a series in the vector
    /// by its labels hashes all three and takes the vector's lock on every request; a
    /// registry answers few distinct method, route and status triples, so a request
    /// almost always finds its series here, by comparing a number, a method and a route.
    static RECENT_HTTP_SERIES: std::cell::RefCell<RecentSeries> =
        const { std::cell::RefCell::new(RecentSeries { kept: Vec::new(), replaced: 0 }) };
}

/// The series kept by [`RECENT_HTTP_SERIES`], at most [`RECENT_HTTP_SERIES_KEPT`];
/// beyond that one is replaced in turn.
struct RecentSeries {
    kept: Vec<KeptSeries>,
    replaced: usize,
}

/// One series of the request durations, and its labels.
struct KeptSeries {
    status: StatusCode,
    method: Method,
    route: String,
    series: Arc<StripedHistogram>,
}

impl RecentSeries {
    fn find(&mut self, method: &Method, route: &str, status: StatusCode) -> &StripedHistogram {
        let found = self
            .kept
            .iter()
            .position(|kept| kept.status == status && kept.method == method && kept.route == route);
        let at = found.unwrap_or_else(|| {
            let series =
                METRICS
                    .http_duration
                    .with_label_values(&[method.as_str(), route, status.as_str()]);
            let kept = KeptSeries {
                status,
                method: method.clone(),
                route: route.to_owned(),
                series,
            };
            if self.kept.len() < RECENT_HTTP_SERIES_KEPT {
                self.kept.push(kept);
                self.kept.len() - 1
            } else {
                let at = self.replaced % RECENT_HTTP_SERIES_KEPT;
                self.replaced += 1;
                self.kept[at] = kept;
                at
            }
        });
        &self.kept[at].series
    }
}

/// One DNS query answered, by its type and the answer's code.
pub fn dns_query(
    qtype: hickory_server::proto::rr::RecordType,
    rcode: hickory_server::proto::op::ResponseCode,
    duration: Duration,
) {
    use hickory_server::proto::op::ResponseCode;
    let rcode = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "OTHER",
    };
    METRICS
        .dns_queries
        .with_label_values(&[<&'static str>::from(qtype), rcode])
        .inc();
    METRICS.dns_duration.observe(duration.as_secs_f64());
}

/// Runs one database call and records how long it took under `operation`, whatever its
/// result.
pub async fn timed<F: Future>(operation: &str, call: F) -> F::Output {
    let started = Instant::now();
    let output = call.await;
    METRICS
        .db_duration
        .with_label_values(&[operation])
        .observe(started.elapsed().as_secs_f64());
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_lands_in_the_series_of_its_labels_beyond_the_kept_ones() {
        let count = |route: &str, status: &str| {
            METRICS
                .http_duration
                .with_label_values(&["PATCH", route, status])
                .sample_count()
        };
        let routes: Vec<String> = (0..RECENT_HTTP_SERIES_KEPT * 2 + 3)
            .map(|n| format!("/test-kept/{n}"))
            .collect();
        // Twice round more routes than a thread keeps, so kept series are replaced.
        for round in 0..2 {
            for route in &routes {
                http_request(
                    &Method::PATCH,
                    route,
                    StatusCode::NO_CONTENT,
                    Duration::from_millis(1),
                );
                if round == 1 {
                    http_request(
                        &Method::PATCH,
                        route,
                        StatusCode::CONFLICT,
                        Duration::from_millis(1),
                    );
                }
            }
        }
        for route in &routes {
            assert_eq!(count(route, "204"), 2, "{route}");
            assert_eq!(count(route, "409"), 1, "{route}");
        }
    }

    #[tokio::test]
    async fn the_output_is_the_prometheus_text_format() {
        let services = ServiceList {
            index: 0,
            services: Vec::new(),
            next_cursor: None,
        };
        heartbeat();
        check_result(Status::Warning);
        http_request(
            &Method::GET,
            "/v1/services",
            StatusCode::OK,
            Duration::from_millis(3),
        );
        timed("ping", async {}).await;
        lapse_held();
        dns_query(
            hickory_server::proto::rr::RecordType::SRV,
            hickory_server::proto::op::ResponseCode::NXDomain,
            Duration::from_micros(20),
        );
        let counts = StatusCounts {
            total: 3,
            passing: 2,
            warning: 0,
            critical: 1,
            maintenance: 0,
        };
        let text = render(counts, 0, || services, 0, 0, true);
        for family in [
            "registry_registrations_total",
            "registry_heartbeats_total",
            "registry_expirations_total",
            "registry_check_results_total",
            "registry_instances_by_status",
            "registry_watchers",
            "registry_index",
            "registry_self_preservation",
            "registry_self_preservation_held_total",
            "registry_http_request_duration_seconds",
            "registry_db_query_duration_seconds",
            "registry_dns_queries_total",
            "registry_dns_query_duration_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{text}"
            );
        }
        // Every sample line is `name{labels} value` with a number for the value.
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            assert!(series.starts_with("registry_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        // The request above, counted in the first bucket its 3 ms fit in.
        let first_bucket = "registry_http_request_duration_seconds_bucket{method=\"GET\",\
                            route=\"/v1/services\",status=\"200\",le=\"0.005\"} ";
        assert!(
            text.lines()
                .filter_map(|line| line.strip_prefix(first_bucket))
                .any(|count| count.parse::<u64>().is_ok_and(|count| count >= 1)),
            "{text}"
        );
        assert!(text.contains("registry_check_results_total{result=\"critical\"} 0"));
        assert!(text.contains("registry_self_preservation 1"));
        assert!(text.contains("registry_instances_by_status{status=\"passing\"} 2"));
    }

    #[test]
    fn past_the_most_services_only_the_totals_by_status_are_served() {
        let list = |count: u64| ServiceList {
            index: 0,
            services: (0..count)
                .map(|n| registry_api::ServiceSummary {
                    name: format!("svc-{n}"),
                    instances: 1,
                    passing: 1,
                    warning: 0,
                    critical: 0,
                    maintenance: 0,
                })
                .collect(),
            next_cursor: None,
        };
        let counts = |count: u64| StatusCounts {
            total: count,
            passing: count,
            ..StatusCounts::default()
        };
        let series = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("registry_instances{"))
                .count()
        };
        let most = MAX_SERVICE_SERIES;
        let text = render(counts(most), most, || list(most), 0, 0, false);
        assert_eq!(series(&text), 4 * most as usize, "each service and status");
        let text = render(counts(most + 1), most + 1, || list(most + 1), 0, 0, false);
        assert_eq!(series(&text), 0);
        assert!(text.contains(&format!(
            "registry_instances_by_status{{status=\"passing\"}} {}",
            most + 1
        )));
    }
}
