//! The series of an experiment, for plots: per tenant and trial the latency histograms its
//! CDFs are drawn from, its output tokens and TTFT binned over time, and the first of its kept
//! answers; per node its GPU samples, on the node's clock (nanoseconds since the run's zero, so
//! trials of one node share one time axis).
//!
//! [`crate::analysis`] builds them in the same pass over the streams as the summary, so a
//! plotted figure and a summary figure share one definition and one read of the files, and
//! what is kept does not grow with the number of requests: histograms and bins have a fixed
//! size, and a timeline that grows past [`MAX_BINS`] bins doubles their width.

use std::collections::BTreeMap;

use crate::events::{GpuSample, PromptEvent, RequestEvent};
use crate::metrics::LatencyHistogram;

/// Most bins a tenant's timeline holds; past it, bins double in width.
pub const MAX_BINS: usize = 1024;
/// Most kept answers a tenant's series holds per trial (those of the lowest request numbers);
/// the quality scores of the summary cover every kept answer.
pub const MAX_ANSWERS: usize = 100;

/// Every node of an experiment.
#[derive(Debug, Clone, Default)]
pub struct ExperimentSeries {
    /// Nodes in name order.
    pub nodes: Vec<NodeSeries>,
}

/// One node: its trials in run order and its GPU samples over all of them.
#[derive(Debug, Clone)]
pub struct NodeSeries {
    /// Node name.
    pub node: String,
    /// Trials in the order they ran (capacity searches and their probes left out: the capacity
    /// summary shows them).
    pub trials: Vec<TrialSeries>,
    /// GPU samples of every trial, in time order.
    pub gpu: Vec<GpuSample>,
}

/// One trial of one node.
#[derive(Debug, Clone)]
pub struct TrialSeries {
    /// Trial name.
    pub trial: String,
    /// When the trial started (its first trial event).
    pub started_ns: Option<u64>,
    /// When it ended (its last trial event after the start).
    pub ended_ns: Option<u64>,
    /// Tenants in name order.
    pub tenants: Vec<TenantSeries>,
}

/// One tenant in one trial: its measured requests, as the summary counts them.
#[derive(Debug, Clone)]
pub struct TenantSeries {
    /// Tenant name.
    pub tenant: String,
    /// Offered request rate of an open-loop arrival process.
    pub offered_rate: Option<f64>,
    /// TTFT of its measured requests, µs: the summary's histogram.
    pub ttft: LatencyHistogram,
    /// TPOT likewise.
    pub tpot: LatencyHistogram,
    /// First send and last end of its measured requests, ns.
    pub window_ns: Option<(u64, u64)>,
    /// Its measured requests over time.
    pub timeline: Timeline,
    /// Prompts whose answer was kept (`keep_responses`), in request order: at most
    /// [`MAX_ANSWERS`], those of the lowest request numbers.
    pub answers: Vec<PromptEvent>,
}

/// Measured requests over time: output tokens of completed requests by the time they ended,
/// TTFT by the time they were sent. Bins are a power of two seconds wide and start at whole
/// multiples of their width on the node's clock, so timelines of one node re-bin exactly onto a
/// common, wider axis.
#[derive(Debug, Clone)]
pub struct Timeline {
    width_s: u64,
    bins: BTreeMap<u64, TimeBin>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            width_s: 1,
            bins: BTreeMap::new(),
        }
    }
}

/// One bin of a [`Timeline`].
#[derive(Debug, Clone, Default)]
pub struct TimeBin {
    /// Output tokens of the completed requests that ended in it.
    pub output_tokens: u64,
    /// TTFT of the requests sent in it.
    pub ttft: LogSketch,
}

impl Timeline {
    /// Width of a bin, seconds.
    pub fn width_s(&self) -> u64 {
        self.width_s
    }

    /// Takes one measured request.
    pub fn record(&mut self, r: &RequestEvent) {
        if r.error.is_none() {
            self.bin(r.done_ns).output_tokens += u64::from(r.output_tokens.unwrap_or(0));
        }
        if let Some(ttft) = r.ttft_ns() {
            self.bin(r.sent_ns).ttft.record_ns(ttft);
        }
    }

    fn bin(&mut self, at_ns: u64) -> &mut TimeBin {
        let key = at_ns / (self.width_s * 1_000_000_000);
        if !self.bins.contains_key(&key) && self.bins.len() >= MAX_BINS {
            self.widen();
            return self.bin(at_ns);
        }
        self.bins.entry(key).or_default()
    }

    /// Doubles the width of every bin.
    fn widen(&mut self) {
        self.width_s *= 2;
        let narrow = std::mem::take(&mut self.bins);
        for (key, bin) in narrow {
            self.bins.entry(key / 2).or_default().add(&bin);
        }
    }

    /// The bins re-cut to `width_s` seconds (a power-of-two multiple of this timeline's width),
    /// by the start of each, ns.
    pub fn rebinned(&self, width_s: u64) -> BTreeMap<u64, TimeBin> {
        let factor = (width_s / self.width_s).max(1);
        let mut out: BTreeMap<u64, TimeBin> = BTreeMap::new();
        for (key, bin) in &self.bins {
            let start_ns = key / factor * factor * self.width_s * 1_000_000_000;
            out.entry(start_ns).or_default().add(bin);
        }
        out
    }
}

impl TimeBin {
    fn add(&mut self, other: &TimeBin) {
        self.output_tokens += other.output_tokens;
        self.ttft.merge(&other.ttft);
    }
}

/// Values counted in buckets 1% wide: a median within 0.5% of the true one, in a few hundred
/// bytes however many values, and mergeable. For a bin of a plot, where an HDR histogram
/// (about 180 kB) per bin would be too much.
#[derive(Debug, Clone, Default)]
pub struct LogSketch {
    /// (bucket, count), by bucket.
    buckets: Vec<(u16, u32)>,
    count: u64,
}

/// Each bucket holds the values from `BASE^k` to `BASE^(k+1)` µs.
const BASE: f64 = 1.01;

impl LogSketch {
    /// Records a duration in ns (counted in µs, at least 1 µs).
    pub fn record_ns(&mut self, ns: u64) {
        let us = ((ns + 500) / 1_000).max(1) as f64;
        let bucket = (us.ln() / BASE.ln()).floor().min(f64::from(u16::MAX)) as u16;
        self.add(bucket, 1);
    }

    fn add(&mut self, bucket: u16, count: u32) {
        self.count += u64::from(count);
        match self.buckets.binary_search_by_key(&bucket, |b| b.0) {
            Ok(i) => self.buckets[i].1 += count,
            Err(i) => self.buckets.insert(i, (bucket, count)),
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LogSketch) {
        for &(bucket, count) in &other.buckets {
            self.add(bucket, count);
        }
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The median (the value of rank ⌊n/2⌋, 0-based), µs, as its bucket's geometric middle;
    /// `None` when empty.
    pub fn median_us(&self) -> Option<f64> {
        let rank = self.count / 2;
        let mut below = 0u64;
        for &(bucket, count) in &self.buckets {
            below += u64::from(count);
            if below > rank {
                return Some(BASE.powf(f64::from(bucket) + 0.5));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::completed;

    #[test]
    fn a_sketch_median_is_within_half_a_percent() {
        let mut sketch = LogSketch::default();
        for ms in 1..=999u64 {
            sketch.record_ns(ms * 1_000_000);
        }
        let median = sketch.median_us().expect("values");
        assert!((median / 500_000.0 - 1.0).abs() < 0.005, "{median}");
        let mut other = LogSketch::default();
        for _ in 0..2_000 {
            other.record_ns(2_000_000_000);
        }
        sketch.merge(&other);
        assert_eq!(sketch.count(), 2_999);
        let median = sketch.median_us().expect("values");
        assert!((median / 2e6 - 1.0).abs() < 0.005, "{median}");
        assert!(LogSketch::default().median_us().is_none());
    }

    #[test]
    fn a_long_timeline_widens_its_bins_and_loses_no_token() {
        let mut timeline = Timeline::default();
        // One request a second for three hours: 10,800 one-second bins would be too many.
        for s in 0..10_800u64 {
            timeline.record(&completed(s * 1_000, 20, 5, 4));
        }
        assert!(timeline.bins.len() <= MAX_BINS, "{}", timeline.bins.len());
        assert_eq!(timeline.width_s(), 16);
        let bins = timeline.rebinned(64);
        let tokens: u64 = bins.values().map(|b| b.output_tokens).sum();
        let ttfts: u64 = bins.values().map(|b| b.ttft.count()).sum();
        assert_eq!((tokens, ttfts), (4 * 10_800, 10_800));
        assert!(bins.keys().all(|start| start % 64_000_000_000 == 0));
        // Every full 64-second bin holds 64 requests sent in it.
        let first = bins.values().next().expect("a bin");
        assert_eq!(first.ttft.count(), 64);
    }
}
