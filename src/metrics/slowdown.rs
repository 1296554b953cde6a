//! What sharing cost each tenant and what it gained the node (docs/metrics.md): per tenant,
//! shared-trial figure / solo-trial figure; per node and trial, aggregate throughput / Σ of the
//! tenants' solo throughputs. A ratio needs both figures; without one it is absent.

use serde::{Deserialize, Serialize};

use super::TenantMetrics;

/// Shared / solo for one tenant: above 1 for latencies means slower, below 1 for throughput
/// means less.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slowdown {
    /// TTFT p50, shared / solo.
    pub ttft_p50: Option<f64>,
    /// TTFT p99, shared / solo.
    pub ttft_p99: Option<f64>,
    /// TPOT p50, shared / solo.
    pub tpot_p50: Option<f64>,
    /// TPOT p99, shared / solo.
    pub tpot_p99: Option<f64>,
    /// End-to-end latency p99, shared / solo: the latency of an embeddings tenant, which has
    /// no TTFT or TPOT (absent before schema 1.5).
    #[serde(default)]
    pub e2e_p99: Option<f64>,
    /// Output tokens per second, shared / solo.
    pub output_tokens_per_s: Option<f64>,
}

fn ratio(shared: Option<f64>, solo: Option<f64>) -> Option<f64> {
    match (shared, solo) {
        (Some(a), Some(b)) if b > 0.0 => Some(round4(a / b)),
        _ => None,
    }
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

impl Slowdown {
    /// `shared` against `solo`.
    pub fn between(shared: &TenantMetrics, solo: &TenantMetrics) -> Self {
        let p = |m: &TenantMetrics, pick: fn(&TenantMetrics) -> Option<f64>| pick(m);
        Self {
            ttft_p50: ratio(
                p(shared, |m| Some(m.ttft_ms?.p50)),
                p(solo, |m| Some(m.ttft_ms?.p50)),
            ),
            ttft_p99: ratio(
                p(shared, |m| Some(m.ttft_ms?.p99)),
                p(solo, |m| Some(m.ttft_ms?.p99)),
            ),
            tpot_p50: ratio(
                p(shared, |m| Some(m.tpot_ms?.p50)),
                p(solo, |m| Some(m.tpot_ms?.p50)),
            ),
            tpot_p99: ratio(
                p(shared, |m| Some(m.tpot_ms?.p99)),
                p(solo, |m| Some(m.tpot_ms?.p99)),
            ),
            e2e_p99: ratio(
                p(shared, |m| Some(m.e2e_ms?.p99)),
                p(solo, |m| Some(m.e2e_ms?.p99)),
            ),
            output_tokens_per_s: ratio(
                shared.throughput.map(|t| t.output_tokens_per_s),
                solo.throughput.map(|t| t.output_tokens_per_s),
            ),
        }
    }
}

/// Aggregate shared throughput / Σ solo throughputs; `None` unless every solo figure exists.
pub fn colocation_gain(aggregate: Option<f64>, solo_throughputs: &[Option<f64>]) -> Option<f64> {
    let solo: Option<f64> = solo_throughputs.iter().copied().sum();
    ratio(aggregate, solo.filter(|_| !solo_throughputs.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::completed;
    use crate::events::Phase;
    use crate::metrics::TenantAccumulator;

    /// One tenant's metrics: requests sent every second, with TTFT and per-token time given.
    fn metrics(ttft_ms: u64, tpot_ms: u64, n: u64) -> TenantMetrics {
        let mut acc = TenantAccumulator::default();
        acc.phase(Phase::Measure, 0);
        for i in 0..n {
            acc.request(&completed(i * 1_000, ttft_ms, tpot_ms, 10));
        }
        acc.finish()
    }

    #[test]
    fn ratios_compare_shared_with_solo_and_need_both() {
        let solo = metrics(20, 10, 5);
        let shared = metrics(30, 15, 5);
        let s = Slowdown::between(&shared, &solo);
        assert_eq!(
            (s.ttft_p50, s.ttft_p99, s.tpot_p50, s.tpot_p99),
            (Some(1.5), Some(1.5), Some(1.5), Some(1.5))
        );
        // Same sends, each finishing later: a longer window, so fewer tokens per second.
        let solo_tp = solo.throughput.expect("solo").output_tokens_per_s;
        let shared_tp = shared.throughput.expect("shared").output_tokens_per_s;
        assert!(shared_tp < solo_tp);
        assert_eq!(
            s.output_tokens_per_s,
            Some(((shared_tp / solo_tp) * 1e4).round() / 1e4)
        );
        let empty = TenantAccumulator::default().finish();
        assert_eq!(Slowdown::between(&empty, &solo).ttft_p50, None);
        assert_eq!(
            colocation_gain(Some(150.0), &[Some(100.0), Some(50.0)]),
            Some(1.0)
        );
        assert_eq!(colocation_gain(Some(150.0), &[Some(100.0), None]), None);
        assert_eq!(colocation_gain(Some(150.0), &[]), None);
    }
}
