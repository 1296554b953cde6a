//! Whether a probe met a latency percentile bound, with stated confidence.
//!
//! Order statistics make this distribution-free: the p-quantile of a latency is at most `L`
//! exactly when at most a share `1 − p` of requests take longer than `L`. Among `n` requests,
//! the count over `L` is binomial, Bin(n, e), with `e` the true share over. So at confidence
//! `c` (α = 1 − c):
//! - **fail** when so many are over that a quantile within the bound would show that many
//!   with probability below α: P[Bin(n, 1 − p) ≥ over] < α;
//! - **pass** when so few are over that a quantile beyond the bound would show that few with
//!   probability below α: P[Bin(n, 1 − p) ≤ over] < α;
//! - **unsure** otherwise: more requests are needed to tell.
//!
//! This replaces a fixed count of requests per percentile: a probe far from its bound is
//! decided on few requests, one near it is not decided on many.

use serde::{Deserialize, Serialize};

use crate::metrics::TenantAccumulator;
use crate::slo::{RequestLatency, Slo};

/// The confidence a probe's verdict on a bound is stated at, unless the config says otherwise.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// One percentile bound of a tenant in one probe: how many requests it has and how many were
/// over the bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundTally {
    /// `ttft_ms p99`.
    pub bound: String,
    /// The percentile as a fraction (0.99).
    pub quantile: f64,
    /// The limit, ms.
    pub limit: f64,
    /// Requests with a value for the metric.
    pub requests: u64,
    /// Of those, how many were over the limit.
    pub over: u64,
}

/// A bound's verdict at a stated confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confidence {
    /// Met, at the confidence asked.
    Pass,
    /// Missed, at the confidence asked.
    Fail,
    /// Neither can be said yet.
    Unsure,
}

impl BoundTally {
    /// The verdict at `confidence` (e.g. 0.95).
    pub fn judge(&self, confidence: f64) -> Confidence {
        let alpha = 1.0 - confidence;
        let allowed = 1.0 - self.quantile;
        if self.requests == 0 {
            return Confidence::Unsure;
        }
        let at_least_over = 1.0 - binomial_cdf(self.requests, allowed, self.over.saturating_sub(1));
        if self.over > 0 && at_least_over < alpha {
            return Confidence::Fail;
        }
        if binomial_cdf(self.requests, allowed, self.over) < alpha {
            return Confidence::Pass;
        }
        Confidence::Unsure
    }

    /// `ttft_ms p99: 3 of 310 over 150 ms`.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} of {} over {} ms",
            self.bound, self.over, self.requests, self.limit
        )
    }
}

/// The fewest requests over a `quantile` bound that fail it at `confidence` among `most`
/// requests, whatever the others are: the smallest `k` with P[Bin(most, 1 − quantile) ≥ k] < α.
/// Among fewer requests the same count fails it all the more, so a probe that holds at most
/// `most` has failed for certain once `k` are over.
pub fn certain_fail_count(most: u64, quantile: f64, confidence: f64) -> u64 {
    let alpha = 1.0 - confidence;
    let p = 1.0 - quantile;
    if p <= 0.0 {
        return 1;
    }
    let (ln_p, ln_q) = (p.ln(), (1.0 - p).ln());
    let mut ln_choose = 0.0;
    let mut below = 0.0;
    for k in 0..=most {
        // `below` is P[X ≤ k − 1] here.
        if 1.0 - below < alpha {
            return k;
        }
        if k > 0 {
            ln_choose += ((most - k + 1) as f64).ln() - (k as f64).ln();
        }
        below += (ln_choose + k as f64 * ln_p + (most - k) as f64 * ln_q).exp();
    }
    most + 1
}

/// Every percentile bound of `slo` on a per-request latency (TTFT, TPOT, E2E), counted over
/// the requests `acc` holds. ITL is per token, whose counts are not independent draws, and a
/// mean or a maximum is no percentile: those are judged on their figure.
pub fn tallies(slo: &Slo, acc: &TenantAccumulator) -> Vec<BoundTally> {
    slo.percentile_bounds()
        .into_iter()
        .map(|bound| {
            let histogram = match bound.latency {
                RequestLatency::Ttft => &acc.ttft,
                RequestLatency::Tpot => &acc.tpot,
                RequestLatency::E2e => &acc.e2e,
            };
            BoundTally {
                bound: bound.name(),
                quantile: bound.fraction,
                limit: bound.limit_ms,
                requests: histogram.count(),
                over: histogram.count_above_us((bound.limit_ms * 1000.0).floor() as u64),
            }
        })
        .collect()
}

/// P[Bin(n, p) ≤ k], summed term by term in log space (n of a probe stays in the thousands).
fn binomial_cdf(n: u64, p: f64, k: u64) -> f64 {
    if k >= n {
        return 1.0;
    }
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let (ln_p, ln_q) = (p.ln(), (1.0 - p).ln());
    // ln C(n, i) built up from ln C(n, 0) = 0.
    let mut ln_choose = 0.0;
    let mut sum = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        sum += (ln_choose + i as f64 * ln_p + (n - i) as f64 * ln_q).exp();
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p99(requests: u64, over: u64) -> BoundTally {
        BoundTally {
            bound: "ttft_ms p99".into(),
            quantile: 0.99,
            limit: 150.0,
            requests,
            over,
        }
    }

    #[test]
    fn the_binomial_tail_is_exact_on_small_cases() {
        // Bin(10, 0.5): P[X ≤ 1] = 11 / 1024.
        assert!((binomial_cdf(10, 0.5, 1) - 11.0 / 1024.0).abs() < 1e-12);
        assert!((binomial_cdf(300, 0.01, 0) - 0.99f64.powi(300)).abs() < 1e-12);
        assert_eq!(binomial_cdf(5, 0.3, 5), 1.0);
    }

    #[test]
    fn a_p99_is_decided_by_how_far_the_probe_is_from_its_bound() {
        // None over in 300: a p99 beyond the bound would show none with probability 0.049.
        assert_eq!(p99(300, 0).judge(0.95), Confidence::Pass);
        // ... but not in 200 (0.134).
        assert_eq!(p99(200, 0).judge(0.95), Confidence::Unsure);
        // 8 over in 300 when 3 are expected at the bound: P[≥ 8] = 0.011.
        assert_eq!(p99(300, 8).judge(0.95), Confidence::Fail);
        // 4 over in 300 says nothing either way.
        assert_eq!(p99(300, 4).judge(0.95), Confidence::Unsure);
        // Far past the bound, a few requests are enough to fail.
        assert_eq!(p99(20, 5).judge(0.95), Confidence::Fail);
        // Among at most 481 requests, 10 over a p99 fail it at 95% (P[≥ 10] = 0.025), 9 not.
        let k = certain_fail_count(481, 0.99, 0.95);
        assert_eq!(k, 10);
        assert_eq!(p99(481, k).judge(0.95), Confidence::Fail);
        assert_ne!(p99(481, k - 1).judge(0.95), Confidence::Fail);
    }
}
