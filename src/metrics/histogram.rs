//! A latency histogram in microseconds and its printed percentiles.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded exactly: one hour. Longer values are clamped to it.
const MAX_US: u64 = 3_600_000_000;

/// Latencies in µs, 1 µs to 1 h, 3 significant digits. Min, max, mean and standard deviation
/// are kept exactly beside the histogram, whose buckets are 0.1% wide; a percentile is the
/// upper edge of its value's bucket (at most 0.1% high), kept within the exact min and max.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
    min_us: u64,
    max_us: u64,
    sum_us: u128,
    sum_sq_us: u128,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        // Bounds and precision are constants that hdrhistogram accepts.
        #[allow(clippy::unwrap_used)]
        Self {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).unwrap(),
            min_us: u64::MAX,
            max_us: 0,
            sum_us: 0,
            sum_sq_us: 0,
        }
    }

    /// Records a latency in nanoseconds (rounded to the nearest µs, at least 1 µs).
    pub fn record_ns(&mut self, ns: u64) {
        self.record_us((ns + 500) / 1_000);
    }

    /// Records a latency in microseconds (at least 1 µs).
    pub fn record_us(&mut self, us: u64) {
        let us = us.clamp(1, MAX_US);
        self.hist.saturating_record(us);
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
        self.sum_us += u128::from(us);
        self.sum_sq_us += u128::from(us) * u128::from(us);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same bounds by construction, so adding cannot fail.
        #[allow(clippy::unwrap_used)]
        self.hist.add(&other.hist).unwrap();
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
        self.sum_us += other.sum_us;
        self.sum_sq_us += other.sum_sq_us;
    }

    /// Population standard deviation of the recorded values, µs.
    fn stddev_us(&self) -> f64 {
        let n = self.hist.len() as f64;
        let mean = self.sum_us as f64 / n;
        (self.sum_sq_us as f64 / n - mean * mean).max(0.0).sqrt()
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Values recorded above `us` (to the histogram's 1 µs resolution below 2 ms).
    pub fn count_above_us(&self, us: u64) -> u64 {
        if self.max_us <= us {
            return 0;
        }
        self.hist.count_between(us + 1, self.max_us)
    }

    /// The empirical distribution as steps, in value order: per bucket that holds values, its
    /// value in µs (the bucket's upper edge, held within the exact min and max as percentiles
    /// are) and the count of values at or below it.
    pub fn cdf_us(&self) -> Vec<(u64, u64)> {
        let mut at_or_below = 0u64;
        self.hist
            .iter_recorded()
            .map(|v| {
                at_or_below += v.count_since_last_iteration();
                (
                    v.value_iterated_to().clamp(self.min_us, self.max_us),
                    at_or_below,
                )
            })
            .collect()
    }

    /// The distribution in milliseconds, or `None` when empty.
    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| round3(us as f64 / 1_000.0);
        // Bucket edges can pass the exact extremes; keep percentiles inside them.
        let q = |q: f64| {
            ms(self
                .hist
                .value_at_quantile(q)
                .clamp(self.min_us, self.max_us))
        };
        Some(Percentiles {
            count: self.hist.len(),
            mean: round3(self.sum_us as f64 / self.hist.len() as f64 / 1_000.0),
            stddev: round3(self.stddev_us() / 1_000.0),
            min: ms(self.min_us),
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: ms(self.max_us),
        })
    }
}

/// A distribution in milliseconds, rounded to 1 µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of values.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stddev: f64,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// Rounds to three decimals (1 µs when the unit is ms).
pub(crate) fn round3(v: f64) -> f64 {
    (v * 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_values() {
        let mut h = LatencyHistogram::new();
        assert!(h.percentiles().is_none(), "no data must not become zeros");
        for ms in 1..=100u64 {
            h.record_ns(ms * 1_000_000);
        }
        let p = h.percentiles().expect("data");
        assert_eq!(p.count, 100);
        assert_eq!(p.min, 1.0);
        assert!((p.p50 - 50.0).abs() < 0.05, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
        assert!((p.mean - 50.5).abs() < 0.05, "{p:?}");
    }

    #[test]
    fn the_cdf_steps_through_every_recorded_bucket_to_the_count() {
        let mut h = LatencyHistogram::new();
        for us in [5, 5, 7, 1_000, 1_000_000] {
            h.record_us(us);
        }
        assert_eq!(
            h.cdf_us(),
            vec![(5, 2), (7, 3), (1_000, 4), (1_000_000, 5)],
            "the last bucket's edge is held at the exact maximum"
        );
        assert!(LatencyHistogram::new().cdf_us().is_empty());
    }

    #[test]
    fn merged_histograms_hold_both_sets() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record_us(1_000);
        b.record_us(3_000);
        a.merge(&b);
        let p = a.percentiles().expect("data");
        assert_eq!((p.count, p.min, p.max), (2, 1.0, 3.0));
        assert_eq!((p.mean, p.stddev), (2.0, 1.0), "exact, from both sides");
    }

    #[test]
    fn percentiles_report_their_bucket_edge_and_the_spread_is_exact() {
        let mut h = LatencyHistogram::new();
        for ms in [20, 20, 30, 30] {
            h.record_ns(ms * 1_000_000);
        }
        let p = h.percentiles().expect("data");
        // 20 ms falls in a bucket 16 µs wide (16.384–32.767 ms): its upper edge is 20.015 ms.
        // 30 ms's edge, 30.015 ms, is past the maximum and is held at it.
        assert_eq!((p.p50, p.p90, p.p99, p.max), (20.015, 30.0, 30.0, 30.0));
        assert_eq!((p.mean, p.stddev), (25.0, 5.0));
    }
}
