//! Service-level objectives: bounds on latency percentiles and the error rate, judged per
//! tenant and trial, and the goodput they imply.
//!
//! A tenant passes when every bound holds; a bound whose figure has no data (no completed
//! request, no TPOT because every output was one token) is `no data` and fails the tenant,
//! since nothing was shown to meet it. Goodput counts the completed measured requests whose own
//! TTFT, TPOT and E2E are each within the tightest bound set on that metric (the
//! per-request reading of an SLO, as in DistServe and MLPerf's server scenario); SLO
//! attainment is their share of the measured requests sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::RequestEvent;
use crate::metrics::{Percentiles, TenantMetrics};

/// A percentile an SLO bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Quantile {
    /// Median.
    #[serde(rename = "p50")]
    P50,
    /// 90th.
    #[serde(rename = "p90")]
    P90,
    /// 95th.
    #[serde(rename = "p95")]
    P95,
    /// 99th.
    #[serde(rename = "p99")]
    P99,
    /// 99.9th.
    #[serde(rename = "p99.9")]
    P999,
    /// Mean.
    #[serde(rename = "mean")]
    Mean,
    /// Largest.
    #[serde(rename = "max")]
    Max,
}

impl Quantile {
    /// Every one, in order.
    pub const ALL: [Quantile; 7] = [
        Quantile::P50,
        Quantile::P90,
        Quantile::P95,
        Quantile::P99,
        Quantile::P999,
        Quantile::Mean,
        Quantile::Max,
    ];

    /// Its name, as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            Quantile::P50 => "p50",
            Quantile::P90 => "p90",
            Quantile::P95 => "p95",
            Quantile::P99 => "p99",
            Quantile::P999 => "p99.9",
            Quantile::Mean => "mean",
            Quantile::Max => "max",
        }
    }

    /// From its config name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.name() == name)
    }

    /// The percentile as a fraction (0.99 for p99); `None` for the mean and the maximum.
    pub fn fraction(self) -> Option<f64> {
        match self {
            Quantile::P50 => Some(0.5),
            Quantile::P90 => Some(0.9),
            Quantile::P95 => Some(0.95),
            Quantile::P99 => Some(0.99),
            Quantile::P999 => Some(0.999),
            Quantile::Mean | Quantile::Max => None,
        }
    }

    fn of(self, p: &Percentiles) -> f64 {
        match self {
            Quantile::P50 => p.p50,
            Quantile::P90 => p.p90,
            Quantile::P95 => p.p95,
            Quantile::P99 => p.p99,
            Quantile::P999 => p.p999,
            Quantile::Mean => p.mean,
            Quantile::Max => p.max,
        }
    }
}

/// A latency every request has once (ITL is per token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLatency {
    /// Time to the first token.
    Ttft,
    /// Time per output token after the first.
    Tpot,
    /// End to end.
    E2e,
}

impl RequestLatency {
    /// Its name in configs (`ttft_ms`).
    pub fn name(self) -> &'static str {
        match self {
            RequestLatency::Ttft => "ttft_ms",
            RequestLatency::Tpot => "tpot_ms",
            RequestLatency::E2e => "e2e_ms",
        }
    }

    /// This latency of `r`, ns, as the summary's histograms take it: `None` for a failed
    /// request, and for TPOT below two output tokens.
    pub fn of(self, r: &RequestEvent) -> Option<u64> {
        match self {
            RequestLatency::Ttft => r.ttft_ns(),
            RequestLatency::Tpot => r.tpot_ns(),
            RequestLatency::E2e => r.e2e_ns(),
        }
    }
}

/// A percentile bound of an SLO on a per-request latency: what the capacity search counts
/// requests against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentileBound {
    /// The latency.
    pub latency: RequestLatency,
    /// The percentile.
    pub quantile: Quantile,
    /// The percentile as a fraction (0.99).
    pub fraction: f64,
    /// The limit, ms.
    pub limit_ms: f64,
}

impl PercentileBound {
    /// `ttft_ms p99`, as the SLO's checks name it.
    pub fn name(&self) -> String {
        format!("{} {}", self.latency.name(), self.quantile.name())
    }

    /// Whether `r` took longer than the limit: its latency in µs as the summary's histograms
    /// round it, against the limit's whole µs; `None` where it has no such latency.
    pub fn over(&self, r: &RequestEvent) -> Option<bool> {
        let ns = self.latency.of(r)?;
        Some(((ns + 500) / 1_000).max(1) > (self.limit_ms * 1000.0).floor() as u64)
    }
}

/// The SLO of a tenant: bounds in ms per latency metric and percentile, and a most error rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// TTFT bounds, ms.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ttft_ms: BTreeMap<Quantile, f64>,
    /// TPOT bounds, ms.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tpot_ms: BTreeMap<Quantile, f64>,
    /// ITL bounds, ms.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub itl_ms: BTreeMap<Quantile, f64>,
    /// E2E bounds, ms.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub e2e_ms: BTreeMap<Quantile, f64>,
    /// Most failed / sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
}

/// One bound, judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloCheck {
    /// `ttft_ms p99`, `error_rate`, …
    pub bound: String,
    /// The limit.
    pub limit: f64,
    /// What was measured; `None` without data.
    pub measured: Option<f64>,
    /// `pass`, `fail` or `no data`.
    pub verdict: SloVerdict,
}

/// The verdict on one bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SloVerdict {
    /// Measured within the limit.
    #[serde(rename = "pass")]
    Pass,
    /// Measured beyond the limit.
    #[serde(rename = "fail")]
    Fail,
    /// Nothing to measure: a bound without data fails.
    #[serde(rename = "no data")]
    NoData,
}

impl SloVerdict {
    /// The word written into summaries and reports.
    pub fn name(self) -> &'static str {
        match self {
            SloVerdict::Pass => "pass",
            SloVerdict::Fail => "fail",
            SloVerdict::NoData => "no data",
        }
    }

    /// Whether the bound held.
    pub fn passed(self) -> bool {
        self == SloVerdict::Pass
    }
}

/// A tenant's SLO, judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloResult {
    /// Every bound held (and had data).
    pub pass: bool,
    /// Each bound.
    pub checks: Vec<SloCheck>,
    /// Completed measured requests within every per-request bound, per second of the
    /// throughput window; `None` without a window.
    pub goodput_rps: Option<f64>,
    /// Those requests / measured requests sent.
    pub attainment: Option<f64>,
}

impl Slo {
    /// Whether no bound is set.
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_empty()
            && self.tpot_ms.is_empty()
            && self.itl_ms.is_empty()
            && self.e2e_ms.is_empty()
            && self.error_rate.is_none()
    }

    /// Whether one request meets the tightest TTFT, TPOT and E2E bounds (ITL is a property of
    /// gaps, not of requests, and the error rate of the whole).
    pub fn request_meets(&self, r: &RequestEvent) -> bool {
        if r.error.is_some() {
            return false;
        }
        let tightest = |m: &BTreeMap<Quantile, f64>| m.values().copied().reduce(f64::min);
        let ms = |ns: u64| ns as f64 / 1e6;
        let within = |bound: Option<f64>, value: Option<f64>| match (bound, value) {
            (None, _) => true,
            (Some(b), Some(v)) => v <= b,
            (Some(_), None) => false,
        };
        let ttft = r.first_token_ns.map(|f| ms(f.saturating_sub(r.sent_ns)));
        let e2e = r
            .last_token_ns
            .or(Some(r.done_ns))
            .map(|l| ms(l.saturating_sub(r.sent_ns)));
        let tpot = match (r.first_token_ns, r.last_token_ns, r.output_tokens) {
            (Some(f), Some(l), Some(n)) if n >= 2 => Some(ms(l - f) / f64::from(n - 1)),
            // One token has no TPOT, so no TPOT bound can be missed.
            _ => Some(0.0),
        };
        within(tightest(&self.ttft_ms), ttft)
            && within(tightest(&self.tpot_ms), tpot)
            && within(tightest(&self.e2e_ms), e2e)
    }

    /// Completed measured requests a verdict on this SLO needs to mean something: enough
    /// that at least five are expected beyond the tightest percentile bound (p99: 500, p90:
    /// 50, p50: 10), and ten for means, maxima and the error rate.
    pub fn requests_needed(&self) -> u64 {
        self.needed_over(true)
    }

    /// [`Slo::requests_needed`] for the bounds a capacity probe judges on their figure: ITL's
    /// percentiles, means, maxima and the error rate (its percentile bounds on TTFT, TPOT and
    /// E2E are judged at a stated confidence from their counts instead).
    pub fn requests_needed_for_figures(&self) -> u64 {
        self.needed_over(false)
    }

    fn needed_over(&self, request_percentiles: bool) -> u64 {
        let per_request = [&self.ttft_ms, &self.tpot_ms, &self.e2e_ms]
            .into_iter()
            .flat_map(|bounds| bounds.keys())
            .filter(move |q| request_percentiles || q.fraction().is_none());
        per_request
            .chain(self.itl_ms.keys())
            .map(|q| match q {
                Quantile::P50 => 10,
                Quantile::P90 => 50,
                Quantile::P95 => 100,
                Quantile::P99 => 500,
                Quantile::P999 => 5000,
                Quantile::Mean | Quantile::Max => 10,
            })
            .max()
            .unwrap_or(10)
    }

    /// Its percentile bounds on TTFT, TPOT and E2E (not means or maxima, not ITL).
    pub fn percentile_bounds(&self) -> Vec<PercentileBound> {
        [
            (RequestLatency::Ttft, &self.ttft_ms),
            (RequestLatency::Tpot, &self.tpot_ms),
            (RequestLatency::E2e, &self.e2e_ms),
        ]
        .into_iter()
        .flat_map(|(latency, bounds)| {
            bounds.iter().filter_map(move |(&quantile, &limit_ms)| {
                Some(PercentileBound {
                    latency,
                    quantile,
                    fraction: quantile.fraction()?,
                    limit_ms,
                })
            })
        })
        .collect()
    }

    /// Judges `metrics`; `good` is the number of measured requests for which
    /// [`Slo::request_meets`] held.
    pub fn judge(&self, metrics: &TenantMetrics, good: u64) -> SloResult {
        let mut checks = Vec::new();
        for (name, bounds, figure) in [
            ("ttft_ms", &self.ttft_ms, metrics.ttft_ms),
            ("tpot_ms", &self.tpot_ms, metrics.tpot_ms),
            ("itl_ms", &self.itl_ms, metrics.itl_ms),
            ("e2e_ms", &self.e2e_ms, metrics.e2e_ms),
        ] {
            for (q, &limit) in bounds {
                let measured = figure.as_ref().map(|p| q.of(p));
                checks.push(check(format!("{name} {}", q.name()), limit, measured));
            }
        }
        if let Some(limit) = self.error_rate {
            checks.push(check("error_rate".into(), limit, metrics.error_rate));
        }
        let window = metrics.throughput.map(|t| t.window_s);
        SloResult {
            pass: checks.iter().all(|c| c.verdict.passed()),
            checks,
            goodput_rps: window
                .filter(|w| *w > 0.0)
                .map(|w| crate::metrics::round3(good as f64 / w)),
            attainment: (metrics.sent > 0)
                .then(|| crate::metrics::round3(good as f64 / metrics.sent as f64)),
        }
    }
}

fn check(bound: String, limit: f64, measured: Option<f64>) -> SloCheck {
    let verdict = match measured {
        None => SloVerdict::NoData,
        Some(m) if m <= limit => SloVerdict::Pass,
        Some(_) => SloVerdict::Fail,
    };
    SloCheck {
        bound,
        limit,
        measured,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::completed;
    use crate::events::Phase;
    use crate::metrics::TenantAccumulator;

    /// Request `id`, sent at `id` seconds.
    fn request(id: u64, ttft_ms: u64, tokens: u32, gap_ms: u64) -> RequestEvent {
        completed(id * 1_000, ttft_ms, gap_ms, tokens)
    }

    /// Four requests: TTFT 10, 20, 30 and 400 ms, TPOT 5 ms. Bounds TTFT p50 ≤ 50 ms (met:
    /// p50 = 20), TTFT p99 ≤ 100 ms (missed: p99 = 400), TPOT p99 ≤ 6 ms (met), ITL p50 with no
    /// ITL at all cannot be judged on a one-token tenant below.
    #[test]
    fn bounds_are_judged_on_percentiles_and_goodput_per_request() {
        let slo = Slo {
            ttft_ms: [(Quantile::P50, 50.0), (Quantile::P99, 100.0)].into(),
            tpot_ms: [(Quantile::P99, 6.0)].into(),
            error_rate: Some(0.0),
            ..Slo::default()
        };
        let requests = [
            request(1, 10, 8, 5),
            request(2, 20, 8, 5),
            request(3, 30, 8, 5),
            request(4, 400, 8, 5),
        ];
        let mut acc = TenantAccumulator::default();
        acc.phase(Phase::Measure, 0);
        for r in &requests {
            acc.request(r);
        }
        acc.phase(Phase::Drain, 5_000_000_000);
        let good = requests.iter().filter(|r| slo.request_meets(r)).count() as u64;
        // The tightest TTFT bound is 50 ms: the 400 ms request is not good.
        assert_eq!(good, 3);
        let result = slo.judge(&acc.finish(), good);
        assert!(!result.pass);
        let verdicts: Vec<(&str, &str)> = result
            .checks
            .iter()
            .map(|c| (c.bound.as_str(), c.verdict.name()))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("ttft_ms p50", "pass"),
                ("ttft_ms p99", "fail"),
                ("tpot_ms p99", "pass"),
                ("error_rate", "pass")
            ]
        );
        assert_eq!(result.attainment, Some(0.75));
        // Window: first send at 1 s to last done at 4.435 s.
        let window = 3.435;
        assert_eq!(
            result.goodput_rps,
            Some(crate::metrics::round3(3.0 / window))
        );

        // One-token outputs have no ITL: an ITL bound has no data and fails the tenant.
        let itl = Slo {
            itl_ms: [(Quantile::P50, 1.0)].into(),
            ..Slo::default()
        };
        let mut one = TenantAccumulator::default();
        one.phase(Phase::Measure, 0);
        one.request(&request(1, 10, 1, 0));
        let judged = itl.judge(&one.finish(), 1);
        assert_eq!(judged.checks[0].verdict, SloVerdict::NoData);
        assert!(!judged.pass);
    }
}
