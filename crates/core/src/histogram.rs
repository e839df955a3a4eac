//! A fixed-bucket histogram of durations, lock-free to record, read by a
//! metrics exporter at scrape time.
//!
//! netsync-core does not know any metrics exporter: the engine records into
//! this type, and the server turns a [`HistogramSnapshot`] into whatever its
//! exporter speaks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds; one more bucket (+Inf) follows.
/// From a millisecond (a small commit) to a minute (a huge dump on a slow disk).
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Counts of durations per bucket, and their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts; the last one is +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of every recorded duration, in nanoseconds (584 years fit).
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, count in this bucket alone)`, the last
    /// bound `+Inf`. Not cumulative: exporters add them up as their format says.
    pub buckets: Vec<(f64, u64)>,
    /// Number of recorded durations (the buckets' total).
    pub count: u64,
    /// Sum of recorded durations, in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now. Buckets are read one by one while commits may record,
    /// so the sum can be a duration ahead of or behind the counts; the count
    /// is the buckets' total, so the two always agree.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, count)| count).sum(),
            buckets,
            sum_seconds: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_lands_in_the_first_bucket_that_holds_it() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_millis(1));
        histogram.record(Duration::from_millis(3));
        histogram.record(Duration::from_secs(120));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.buckets.len(), BUCKETS.len() + 1);
        assert_eq!(snapshot.buckets[0], (0.001, 1));
        assert_eq!(snapshot.buckets[1], (0.0025, 0));
        assert_eq!(snapshot.buckets[2], (0.005, 1));
        assert_eq!(snapshot.buckets[BUCKETS.len() - 1], (60.0, 0));
        assert_eq!(snapshot.buckets[BUCKETS.len()], (f64::INFINITY, 1));
        assert!((snapshot.sum_seconds - 120.004).abs() < 1e-9);
    }
}
