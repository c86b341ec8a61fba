//! Prometheus metrics of the client library (prefix `registry_client_`).
//!
//! They live in a [`Registry`] of their own rather than in the `prometheus` crate's global
//! default, so that an application decides whether and where to expose them (the demo
//! service serves them at `/metrics`) and its own metrics never collide with ours. The
//! handles are process-wide because breakers, callers and discovery are created in many
//! places and each is updated at one point: the [state report](crate::breaker::StateReport)
//! of a `ServiceClient`'s breakers, the end of a
//! [`ServiceClient::call`](crate::caller::ServiceClient::call) (its outcome, and whether it
//! was routed in panic), a
//! [`Discovery::resolve`](crate::discovery::Discovery::resolve).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::breaker::BreakerState;

struct Metrics {
    registry: Registry,
    breaker_state: IntGaugeVec,
    calls: IntCounterVec,
    call_duration: HistogramVec,
    cache_age: GaugeVec,
    reachable: IntGauge,
    panic_routing: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "registry_client_breaker_state",
                "Circuit breaker state per target instance (0 closed, 1 open, 2 half_open).",
            ),
            &["target"],
        )
        .expect("valid metric");
        let calls = IntCounterVec::new(
            Opts::new(
                "registry_client_calls_total",
                "Calls made through ServiceClient by service and outcome.",
            ),
            &["service", "outcome"],
        )
        .expect("valid metric");
        let call_duration = HistogramVec::new(
            HistogramOpts::new(
                "registry_client_call_duration_seconds",
                "Duration of calls made through ServiceClient, retries included.",
            ),
            &["service"],
        )
        .expect("valid metric");
        let cache_age = GaugeVec::new(
            Opts::new(
                "registry_client_discovery_cache_age_seconds",
                "Time since the registry last confirmed the discovery view of a service.",
            ),
            &["service"],
        )
        .expect("valid metric");
        let reachable = IntGauge::new(
            "registry_client_registry_reachable",
            "Whether the last contact with the registry worked (1) or not (0).",
        )
        .expect("valid metric");
        let panic_routing = IntCounterVec::new(
            Opts::new(
                "registry_client_panic_routing_total",
                "Calls routed in panic (too few instances available: spread over every non-maintenance instance) by service.",
            ),
            &["service"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(breaker_state.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(calls.clone()),
            Box::new(call_duration.clone()),
            Box::new(cache_age.clone()),
            Box::new(reachable.clone()),
            Box::new(panic_routing.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        Self {
            registry,
            breaker_state,
            calls,
            call_duration,
            cache_age,
            reachable,
            panic_routing,
        }
    }
}

/// The registry holding every `registry_client_` metric, to gather or to serve.
pub fn registry() -> &'static Registry {
    &METRICS.registry
}

/// Every client metric in the Prometheus text format (`text/plain; version=0.0.4`).
pub fn render() -> String {
    let mut out = Vec::new();
    // Encoding into a Vec only fails on metrics the encoder cannot represent, which ours
    // are not; an empty answer is better than a panic in a scrape.
    if let Err(error) = TextEncoder::new().encode(&registry().gather(), &mut out) {
        tracing::warn!(%error, "could not encode the client metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The [`StateReport`](crate::breaker::StateReport) of the `ServiceClient`'s breakers.
pub(crate) fn breaker_state(target: &str, state: BreakerState) {
    let value = match state {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    };
    METRICS
        .breaker_state
        .with_label_values(&[target])
        .set(value);
}

pub(crate) fn call(service: &str, outcome: &str, duration: Duration) {
    METRICS.calls.with_label_values(&[service, outcome]).inc();
    METRICS
        .call_duration
        .with_label_values(&[service])
        .observe(duration.as_secs_f64());
}

/// A call routed in panic ([`Routing::Panic`](crate::balancer::Routing::Panic)).
pub(crate) fn panic_routing(service: &str) {
    METRICS.panic_routing.with_label_values(&[service]).inc();
}

/// After a resolve: the age of the view it answered (none when it failed) and whether the
/// last contact with the registry worked.
pub(crate) fn discovery(service: &str, age: Option<Duration>, registry_reachable: bool) {
    if let Some(age) = age {
        METRICS
            .cache_age
            .with_label_values(&[service])
            .set(age.as_secs_f64());
    }
    METRICS.reachable.set(i64::from(registry_reachable));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_is_the_prometheus_text_format() {
        breaker_state("sum/sum-1", BreakerState::HalfOpen);
        call("sum", "success", Duration::from_millis(12));
        discovery("sum", Some(Duration::from_secs(3)), true);
        panic_routing("sum");
        let text = render();
        for family in [
            "registry_client_breaker_state",
            "registry_client_calls_total",
            "registry_client_call_duration_seconds",
            "registry_client_discovery_cache_age_seconds",
            "registry_client_registry_reachable",
            "registry_client_panic_routing_total",
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
            assert!(series.starts_with("registry_client_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("registry_client_breaker_state{target=\"sum/sum-1\"} 2"));
    }
}
