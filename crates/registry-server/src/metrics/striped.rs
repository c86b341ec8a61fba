//! The request-duration histogram, recorded by the worker threads without a shared write.
//!
//! The `prometheus` crate's histogram keeps one set of atomic counts per series, which
//! every request on every worker thread writes: on a busy registry those cache lines move
//! from core to core on each request. Here a series keeps one set of counts per stripe,
//! each on cache lines of its own; a thread records into the stripe it was given when it
//! first recorded, and a scrape adds the stripes up. What a scrape reads is the same as a
//! `HistogramVec` with the default buckets would show.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto;

/// Stripes per series: at least the registry's worker threads (one per core) on machines
/// of up to this many cores, so that each records into a stripe of its own.
const STRIPES: usize = 8;

/// The buckets' upper bounds in seconds: the `prometheus` crate's defaults.
const BOUNDS: &[f64; 11] = prometheus::DEFAULT_BUCKETS;

/// One stripe's counts, on cache lines no other stripe shares.
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    counts: [AtomicU64; BOUNDS.len() + 1],
    /// The observations' sum in nanoseconds: exact, and one integer addition.
    sum_nanos: AtomicU64,
}

/// One series of a [`StripedHistogramVec`].
pub struct StripedHistogram {
    labels: Vec<proto::LabelPair>,
    stripes: [Stripe; STRIPES],
}

impl StripedHistogram {
    /// Records one observation, into this thread's stripe.
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BOUNDS.len());
        let stripe = &self.stripes[this_threads_stripe()];
        stripe.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        stripe.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The observations recorded so far, all stripes together.
    #[cfg(test)]
    pub fn sample_count(&self) -> u64 {
        self.counts().iter().sum()
    }

    /// Observations per bucket, all stripes together (not cumulative).
    fn counts(&self) -> [u64; BOUNDS.len() + 1] {
        let mut counts = [0; BOUNDS.len() + 1];
        for stripe in &self.stripes {
            for (total, count) in counts.iter_mut().zip(&stripe.counts) {
                *total += count.load(Ordering::Relaxed);
            }
        }
        counts
    }

    fn metric(&self) -> proto::Metric {
        let counts = self.counts();
        let mut cumulative = 0;
        let buckets = BOUNDS
            .iter()
            .zip(counts)
            .map(|(&bound, count)| {
                cumulative += count;
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let sum_nanos: u64 = self
            .stripes
            .iter()
            .map(|stripe| stripe.sum_nanos.load(Ordering::Relaxed))
            .sum();
        let mut histogram = proto::Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(counts.iter().sum());
        histogram.set_sample_sum(Duration::from_nanos(sum_nanos).as_secs_f64());
        let mut metric = proto::Metric::from_label(self.labels.clone());
        metric.set_histogram(histogram);
        metric
    }
}

/// The stripe this thread records into: threads are given stripes in turn.
fn this_threads_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|stripe| *stripe)
}

/// A histogram with one series per combination of label values, as the `prometheus`
/// crate's `HistogramVec`, whose series are [`StripedHistogram`]s. Clones share the series.
#[derive(Clone)]
pub struct StripedHistogramVec(Arc<Family>);

struct Family {
    desc: Desc,
    series: Mutex<HashMap<Vec<String>, Arc<StripedHistogram>>>,
}

impl StripedHistogramVec {
    pub fn new(name: &str, help: &str, label_names: &[&str]) -> prometheus::Result<Self> {
        let label_names = label_names.iter().map(|&name| name.to_owned()).collect();
        Ok(Self(Arc::new(Family {
            desc: Desc::new(name.into(), help.into(), label_names, HashMap::new())?,
            series: Mutex::new(HashMap::new()),
        })))
    }

    /// The series of these label values (in the order of the label names), made on first
    /// use. Takes a lock: callers keep the series they use.
    pub fn with_label_values(&self, values: &[&str]) -> Arc<StripedHistogram> {
        let Family { desc, series } = &*self.0;
        assert_eq!(
            values.len(),
            desc.variable_labels.len(),
            "one value per label"
        );
        let mut series = series.lock().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<String> = values.iter().map(|&value| value.to_owned()).collect();
        series
            .entry(key)
            .or_insert_with(|| {
                let mut labels: Vec<proto::LabelPair> = (desc.variable_labels.iter())
                    .zip(values)
                    .map(|(name, &value)| {
                        let mut label = proto::LabelPair::default();
                        label.set_name(name.clone());
                        label.set_value(value.to_owned());
                        label
                    })
                    .collect();
                labels.sort_by(|a, b| a.name().cmp(b.name()));
                Arc::new(StripedHistogram {
                    labels,
                    stripes: Default::default(),
                })
            })
            .clone()
    }
}

impl Collector for StripedHistogramVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let Family { desc, series } = &*self.0;
        let series = series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut family = proto::MetricFamily::default();
        family.set_name(desc.fq_name.clone());
        family.set_help(desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(series.values().map(|series| series.metric()).collect());
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_adds_up_every_threads_observations() {
        let vec =
            StripedHistogramVec::new("test_seconds", "Test.", &["route", "method"]).expect("valid");
        let series = vec.with_label_values(&["/a", "GET"]);
        std::thread::scope(|threads| {
            for millis in [3, 30, 3_000, 30_000] {
                let series = &series;
                threads.spawn(move || series.observe(Duration::from_millis(millis)));
            }
        });
        let families = vec.collect();
        let metric = &families[0].get_metric()[0];
        let names: Vec<&str> = metric.get_label().iter().map(|l| l.name()).collect();
        assert_eq!(names, ["method", "route"], "labels sorted by name");
        let histogram = metric.get_histogram();
        assert_eq!(histogram.get_sample_count(), 4);
        assert!((histogram.get_sample_sum() - 33.033).abs() < 1e-9);
        let cumulative = |bound: f64| {
            let bucket = histogram
                .get_bucket()
                .iter()
                .find(|b| b.upper_bound() == bound);
            bucket.expect("a bucket of each bound").cumulative_count()
        };
        assert_eq!(
            [0.005, 0.025, 2.5, 5.0, 10.0].map(cumulative),
            [1, 1, 2, 3, 3]
        );
    }
}
