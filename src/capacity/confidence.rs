//! Whether a probe met a latency percentile bound, with stated confidence.
//!
//! Order statistics make this distribution-free: the p-quantile of a latency is at most `L`
//! exactly when at most a share `1 − p` of requests take longer than `L`. Among `n` requests,
//! the count over `L` is binomial, Bin(n, e), with `e` the true share over, *if* the requests
//! are independent draws. So at confidence `c` (α = 1 − c) the binomial test says:
//! - **fail** when so many are over that a quantile within the bound would show that many
//!   with probability below α: P[Bin(n, 1 − p) ≥ over] < α;
//! - **pass** when so few are over that a quantile beyond the bound would show that few with
//!   probability below α: P[Bin(n, 1 − p) ≤ over] < α;
//! - **unsure** otherwise: more requests are needed to tell.
//!
//! Requests served side by side are not independent: one long prefill stalls every sequence
//! decoding beside it, a queue that builds up delays every request behind it. On such an
//! engine the share over a bound swings from second to second, and the binomial test, which
//! takes a probe's requests as that many draws, is far too sure. So a second test must agree:
//! **batch means**. The probe's requests are counted in slots of [`SLOT`] by the time they
//! were sent; the slots are joined into about √(slots) batches of consecutive time, two at
//! least (batches that lengthen with the probe, as batch means must, to outlast the
//! correlation); and the share over, a ratio of sums, gets a standard error from the spread
//! of its batches. Then:
//! - pass when `share + t·se < 1 − p`, fail when `share − t·se > 1 − p`, with `t` Student's
//!   one-sided quantile at `c` on (batches − 1) degrees of freedom.
//!
//! A bound passes only when both tests pass, and fails only when both fail: a probe far from
//! its bound is decided on few requests, one near it, or one whose seconds disagree, is not.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;
use std::time::Duration;

use crate::events::{Phase, RequestEvent};
use crate::slo::{PercentileBound, Slo};

/// The confidence a probe's verdict on a bound is stated at, unless the config says otherwise.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// How long a slot of the batch-means test is, by the time requests were sent.
pub const SLOT: Duration = Duration::from_millis(500);

/// The fewest batches the batch-means test joins slots into, where there are as many slots.
const MIN_BATCHES: usize = 2;

/// Requests in one slot of time, and how many of them were over the bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotCount {
    /// Requests with a value for the metric, sent in the slot.
    pub requests: u64,
    /// Of those, how many were over the limit.
    pub over: u64,
}

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
    /// The same counts per [`SLOT`] of send time, in time order (slots without a request
    /// left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotCount>,
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
    /// The verdict at `confidence` (e.g. 0.95): pass or fail where the binomial test and the
    /// batch-means test agree, unsure otherwise.
    pub fn judge(&self, confidence: f64) -> Confidence {
        match (
            self.binomial(confidence),
            batch_means(&self.slots, 1.0 - self.quantile, confidence),
        ) {
            (Confidence::Pass, Confidence::Pass) => Confidence::Pass,
            (Confidence::Fail, Confidence::Fail) => Confidence::Fail,
            _ => Confidence::Unsure,
        }
    }

    /// The binomial test alone: requests taken as independent draws.
    fn binomial(&self, confidence: f64) -> Confidence {
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

/// The batch-means test of a share over a bound against `allowed`, from `slots` in time order:
/// unsure below two slots (no spread to judge by).
fn batch_means(slots: &[SlotCount], allowed: f64, confidence: f64) -> Confidence {
    let batches = join_slots(slots);
    let requests: u64 = batches.iter().map(|b| b.requests).sum();
    if batches.len() < 2 || requests == 0 {
        return Confidence::Unsure;
    }
    let total = requests as f64;
    let share = batches.iter().map(|b| b.over).sum::<u64>() as f64 / total;
    // The variance of a ratio of sums over clusters: Σ (over_b − share·requests_b)² / N²,
    // scaled by B / (B − 1).
    let b = batches.len() as f64;
    let squares: f64 = batches
        .iter()
        .map(|x| (x.over as f64 - share * x.requests as f64).powi(2))
        .sum();
    let se = (b / (b - 1.0) * squares).sqrt() / total;
    let t = student_t_upper(batches.len() - 1, 1.0 - confidence);
    if share + t * se < allowed {
        Confidence::Pass
    } else if share - t * se > allowed {
        Confidence::Fail
    } else {
        Confidence::Unsure
    }
}

/// `slots` joined into ⌊√slots⌋ batches of consecutive slots (two at least), as even as they
/// divide. Not more for a short probe: half-second slots of one stall are one draw, and four
/// of them taken as four batches failed a probe on its first second (16 of 19 requests over a
/// TPOT bound) at a rate that 15 s runs pass.
fn join_slots(slots: &[SlotCount]) -> Vec<SlotCount> {
    let count = ((slots.len() as f64).sqrt().floor() as usize)
        .max(MIN_BATCHES)
        .min(slots.len());
    (0..count)
        .map(|i| {
            let (from, to) = (i * slots.len() / count, (i + 1) * slots.len() / count);
            slots[from..to]
                .iter()
                .fold(SlotCount::default(), |sum, s| SlotCount {
                    requests: sum.requests + s.requests,
                    over: sum.over + s.over,
                })
        })
        .collect()
}

/// Student's t quantile with `df` degrees of freedom that `alpha` of the distribution lies
/// above, by bisection on the exact distribution function.
fn student_t_upper(df: usize, alpha: f64) -> f64 {
    let (mut low, mut high) = (0.0, 1.0e3);
    for _ in 0..100 {
        let mid = 0.5 * (low + high);
        if (1.0 - student_t_within(mid, df)) / 2.0 > alpha {
            low = mid;
        } else {
            high = mid;
        }
    }
    high
}

/// P[|T| ≤ t] for Student's t with `df` degrees of freedom (one at least), by the finite
/// series for whole degrees of freedom (Abramowitz and Stegun 26.7.3 and 26.7.4).
fn student_t_within(t: f64, df: usize) -> f64 {
    let df = df.max(1);
    let theta = (t / (df as f64).sqrt()).atan();
    let (sin, cos2) = (theta.sin(), theta.cos().powi(2));
    if df % 2 == 1 {
        // 2/π [θ + sin θ cos θ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + …)], ν − 2 powers in all.
        let mut term = 1.0;
        let mut sum = if df > 1 { 1.0 } else { 0.0 };
        for k in (3..df).step_by(2) {
            term *= (k - 1) as f64 / k as f64 * cos2;
            sum += term;
        }
        2.0 / std::f64::consts::PI * (theta + sin * theta.cos() * sum)
    } else {
        // sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + …), ν − 2 powers in all.
        let mut term = 1.0;
        let mut sum = 1.0;
        for k in (2..df).step_by(2) {
            term *= (k - 1) as f64 / k as f64 * cos2;
            sum += term;
        }
        sin * sum
    }
}

/// Counts the requests of a probe against every percentile bound of an SLO on a per-request
/// latency (TTFT, TPOT, E2E), in [`SLOT`]s of send time. ITL is per token, whose counts are not
/// independent draws, and a mean or a maximum is no percentile: those are judged on their
/// figure.
#[derive(Debug, Clone, Default)]
pub struct TallyFold {
    bounds: Vec<(PercentileBound, BTreeMap<u64, SlotCount>)>,
}

impl TallyFold {
    /// A fold for the percentile bounds of `slo`.
    pub fn new(slo: &Slo) -> Self {
        Self {
            bounds: slo
                .percentile_bounds()
                .into_iter()
                .map(|b| (b, BTreeMap::new()))
                .collect(),
        }
    }

    /// Counts one request; those outside the measure phase, and those without the bound's
    /// latency (a failed request), are not counted.
    pub fn record(&mut self, r: &RequestEvent) {
        if r.phase != Phase::Measure {
            return;
        }
        let slot = r.sent_ns / SLOT.as_nanos() as u64;
        for (bound, slots) in &mut self.bounds {
            let Some(over) = bound.over(r) else {
                continue;
            };
            let count = slots.entry(slot).or_default();
            count.requests += 1;
            count.over += u64::from(over);
        }
    }

    /// The tally so far of the `index`th bound (in [`Slo::percentile_bounds`] order).
    pub fn tally(&self, index: usize) -> Option<BoundTally> {
        let (bound, slots) = self.bounds.get(index)?;
        let slots: Vec<SlotCount> = slots.values().copied().collect();
        Some(BoundTally {
            bound: bound.name(),
            quantile: bound.fraction,
            limit: bound.limit_ms,
            requests: slots.iter().map(|s| s.requests).sum(),
            over: slots.iter().map(|s| s.over).sum(),
            slots,
        })
    }

    /// Each bound's tally.
    pub fn finish(self) -> Vec<BoundTally> {
        (0..self.bounds.len())
            .filter_map(|index| self.tally(index))
            .collect()
    }
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

/// `requests` and `over` spread as evenly as they go over `count` slots: a probe whose
/// seconds agree.
#[cfg(test)]
pub(crate) fn even_slots(requests: u64, over: u64, count: u64) -> Vec<SlotCount> {
    (0..count)
        .map(|i| SlotCount {
            requests: (i + 1) * requests / count - i * requests / count,
            over: (i + 1) * over / count - i * over / count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(quantile: f64, slots: Vec<SlotCount>) -> BoundTally {
        BoundTally {
            bound: "ttft_ms p99".into(),
            quantile,
            limit: 150.0,
            requests: slots.iter().map(|s| s.requests).sum(),
            over: slots.iter().map(|s| s.over).sum(),
            slots,
        }
    }

    /// A p99 over a probe of ten seconds whose seconds agree.
    fn p99(requests: u64, over: u64) -> BoundTally {
        tally(0.99, even_slots(requests, over, 20))
    }

    #[test]
    fn the_binomial_tail_is_exact_on_small_cases() {
        // Bin(10, 0.5): P[X ≤ 1] = 11 / 1024.
        assert!((binomial_cdf(10, 0.5, 1) - 11.0 / 1024.0).abs() < 1e-12);
        assert!((binomial_cdf(300, 0.01, 0) - 0.99f64.powi(300)).abs() < 1e-12);
        assert_eq!(binomial_cdf(5, 0.3, 5), 1.0);
    }

    #[test]
    fn student_t_quantiles_match_the_tables() {
        // One-sided 95%: 6.314 (1), 2.920 (2), 2.132 (4), 1.697 (30).
        for (df, table) in [(1, 6.3138), (2, 2.9200), (4, 2.1318), (30, 1.6973)] {
            let t = student_t_upper(df, 0.05);
            assert!((t - table).abs() < 5e-4, "t({df}) = {t}, tables {table}");
        }
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

    #[test]
    fn a_probe_whose_seconds_disagree_is_not_decided_on_its_request_count() {
        // A p90 over 400 requests in 20 slots: 60 over (15%) fails it when they are spread...
        assert_eq!(
            tally(0.9, even_slots(400, 60, 20)).judge(0.95),
            Confidence::Fail
        );
        // ... but not when a stall in the first 1.5 s put them all there: the binomial test
        // alone would fail it, taking 400 correlated requests for 400 draws.
        let mut stalled = even_slots(400, 0, 20);
        for slot in &mut stalled[..3] {
            slot.over = slot.requests;
        }
        let stalled = tally(0.9, stalled);
        assert_eq!(stalled.over, 60);
        assert_eq!(stalled.binomial(0.95), Confidence::Fail);
        assert_eq!(stalled.judge(0.95), Confidence::Unsure);
        // Likewise 20 over (5%) in one slot does not pass it, though spread they would.
        assert_eq!(
            tally(0.9, even_slots(400, 20, 20)).judge(0.95),
            Confidence::Pass
        );
        let mut one_bad = even_slots(400, 0, 20);
        one_bad[7].over = one_bad[7].requests;
        let one_bad = tally(0.9, one_bad);
        assert_eq!(one_bad.binomial(0.95), Confidence::Pass);
        assert_eq!(one_bad.judge(0.95), Confidence::Unsure);
        // A single slot has no spread to judge by: never decided.
        assert_eq!(
            tally(0.9, even_slots(400, 400, 1)).judge(0.95),
            Confidence::Unsure
        );
    }

    fn request(sent_ms: u64, ttft_ms: u64, phase: Phase) -> RequestEvent {
        let ms = 1_000_000;
        RequestEvent {
            id: format!("a-{sent_ms}"),
            phase,
            scheduled_ns: sent_ms * ms,
            sent_ns: sent_ms * ms,
            connect_ns: None,
            first_token_ns: Some((sent_ms + ttft_ms) * ms),
            last_token_ns: Some((sent_ms + ttft_ms + 30) * ms),
            done_ns: (sent_ms + ttft_ms + 30) * ms,
            chunk_gaps_us: Vec::new(),
            max_tokens: 4,
            prompt_tokens: Some(8),
            output_tokens: Some(4),
            token_source: None,
            status: Some(200),
            error: None,
            conversation: None,
            turn: None,
        }
    }

    #[test]
    fn a_fold_counts_measured_requests_by_the_slot_they_were_sent_in() {
        let slo = Slo {
            ttft_ms: [(crate::slo::Quantile::P90, 150.0)].into(),
            tpot_ms: [(crate::slo::Quantile::Mean, 10.0)].into(),
            ..Slo::default()
        };
        let mut fold = TallyFold::new(&slo);
        fold.record(&request(100, 500, Phase::Warmup));
        fold.record(&request(1_000, 20, Phase::Measure));
        fold.record(&request(1_400, 150, Phase::Measure));
        fold.record(&request(1_600, 151, Phase::Measure));
        let mut failed = request(1_700, 900, Phase::Measure);
        failed.error = Some(crate::events::RequestError {
            kind: crate::events::ErrorKind::HttpStatus,
            message: "503".into(),
        });
        fold.record(&failed);
        // A mean is not counted: one tally, for the p90.
        let [tally] = fold.finish().try_into().expect("one percentile bound");
        assert_eq!(tally.bound, "ttft_ms p90");
        // At exactly the limit is within it; the failed and the warmup request are not counted.
        assert_eq!(
            tally.slots,
            [
                SlotCount {
                    requests: 2,
                    over: 0
                },
                SlotCount {
                    requests: 1,
                    over: 1
                }
            ]
        );
        assert_eq!((tally.requests, tally.over), (3, 1));
    }
}
