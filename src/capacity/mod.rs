//! SLO capacity: how much traffic each tenant carries alone while it meets its SLO, how much
//! the tenants carry together under each sharing mode, and the verdict that follows — how many
//! GPUs' worth of SLO-meeting traffic one shared GPU carries.
//!
//! - [`search`]: the probing policy and the interval its probes prove.
//! - [`confidence`]: a percentile bound judged at a stated confidence.
//! - [`fit`]: every probe of a search at once: each bound's curve against the rate, the
//!   binding bound and any cliff.
//! - [`cost`]: the capacities priced, when the config prices a GPU-hour.
//! - this module: a probe's verdict from its tenants' figures, and the per-node summary.
//!
//! Definitions (also in every summary.json): a tenant's **solo capacity** `C_i` is the highest
//! request rate that met its SLO alone; a mode's **shared capacity** is the highest total
//! rate, split by a fixed mix, at which every tenant met its own SLO; **GPU-equivalents** =
//! Σ_i shared rate_i / C_i at those highest passing rates.

pub mod confidence;
pub mod cost;
pub mod fit;
pub mod search;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::SharingMode;
pub use search::{
    interval, next_probe, unsure_probes_at, Interval, Probe, ProbeVerdict, SearchEnd, SearchPolicy,
};

/// How the summary defines its capacity figures.
pub const DEFINITION: &str = "solo capacity C_i: highest request rate at which tenant i alone met every bound of its SLO; shared capacity: highest total rate, split by the mix, at which every tenant met its own SLO together; both found by probes (each started on empty engine queues; bracket by doubling, bisect to the stated precision, a percentile bound judged at 95% confidence from the count of requests over it, overall (binomial) and per batch of time (batch means), both tests agreeing; repeat a probe that is not significant at twice its length, confirm the highest pass) and given as [highest rate that passed, lowest rate that failed]; GPU-equivalents = Σ_i shared rate_i / C_i at the highest passing rates: above 1 one shared GPU carries more SLO-meeting traffic than GPUs dedicated in proportion, below 1 sharing loses; their range, from Σ shared lower_i / solo upper_i to Σ shared upper_i / solo lower_i, decides: sharing wins when all of it is above 1, loses when all of it is below 1, and is undecided otherwise; a shared search along the mix stops once its range decides, before its interval is as narrow as asked (unless capacity.until: precision)";

/// One tenant's part in a probe, as its figures judge it.
#[derive(Debug, Clone)]
pub struct TenantJudgement<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Completed measured requests.
    pub completed: u64,
    /// How many a bound judged on its figure needs (a mean, a maximum, ITL, the error rate;
    /// [`crate::slo::Slo::requests_needed`]).
    pub needed: u64,
    /// Its percentile bounds over requests, counted ([`confidence::TallyFold`]): judged at
    /// [`confidence::DEFAULT_CONFIDENCE`].
    pub tallies: &'a [confidence::BoundTally],
    /// Its SLO, judged; `None` without one.
    pub slo: Option<&'a crate::slo::SloResult>,
}

/// How one bound of a tenant came out in a probe.
enum BoundOutcome {
    Met,
    Missed(String),
    Unsure { passed: bool, why: String },
}

/// One check of a tenant's SLO in a probe: a percentile bound by the count of requests over
/// it at the stated confidence, any other bound by its figure once there are enough requests.
fn bound_outcome(t: &TenantJudgement<'_>, check: &crate::slo::SloCheck) -> BoundOutcome {
    let figure = match check.measured {
        Some(m) => format!("{}: {} {m:.2} > {}", t.tenant, check.bound, check.limit),
        None => format!("{}: {} has no data", t.tenant, check.bound),
    };
    if let Some(tally) = t.tallies.iter().find(|x| x.bound == check.bound) {
        let sure = format!("{:.0}%", confidence::DEFAULT_CONFIDENCE * 100.0);
        return match tally.judge(confidence::DEFAULT_CONFIDENCE) {
            confidence::Confidence::Pass => BoundOutcome::Met,
            confidence::Confidence::Fail => BoundOutcome::Missed(format!(
                "{figure} ({} of {} over, {sure} sure)",
                tally.over, tally.requests
            )),
            confidence::Confidence::Unsure => BoundOutcome::Unsure {
                passed: check.verdict.passed(),
                why: format!("{}: {}: not decided at {sure}", t.tenant, tally.describe()),
            },
        };
    }
    if t.completed < t.needed {
        return BoundOutcome::Unsure {
            passed: check.verdict.passed(),
            why: format!(
                "{}: {} completed requests, its {} needs {}",
                t.tenant, t.completed, check.bound, t.needed
            ),
        };
    }
    if check.verdict.passed() {
        BoundOutcome::Met
    } else {
        BoundOutcome::Missed(figure)
    }
}

/// The verdict of a probe that measured, from its tenants: a tenant missing a bound at the
/// stated confidence fails it; one that cannot be told yet makes it not significant; a tenant
/// without a completed request fails it outright (nothing was served).
pub fn probe_verdict(tenants: &[TenantJudgement<'_>]) -> ProbeVerdict {
    let mut missed = Vec::new();
    let mut unsure = Vec::new();
    let mut passed = true;
    for t in tenants {
        let Some(slo) = t.slo else {
            missed.push(format!("{}: no SLO to judge", t.tenant));
            continue;
        };
        if t.completed == 0 {
            missed.push(format!("{}: no request completed", t.tenant));
            continue;
        }
        for check in &slo.checks {
            match bound_outcome(t, check) {
                BoundOutcome::Met => {}
                BoundOutcome::Missed(why) => missed.push(why),
                BoundOutcome::Unsure { passed: p, why } => {
                    passed &= p;
                    unsure.push(why);
                }
            }
        }
    }
    if !missed.is_empty() {
        ProbeVerdict::Fail { missed }
    } else if !unsure.is_empty() {
        ProbeVerdict::NotSignificant {
            passed,
            reason: unsure.join("; "),
        }
    } else {
        ProbeVerdict::Pass
    }
}

/// The verdict of a probe its early stop ended (`why`): once a bound's requests over it were
/// more than its planned requests allow, the probe could no longer pass, yet it fails only
/// where its requests so far fail it at the stated confidence; otherwise it is unsure, and
/// counts as failed unless a repeat says more.
pub fn stopped_probe_verdict(why: &str, tenants: &[TenantJudgement<'_>]) -> ProbeVerdict {
    match probe_verdict(tenants) {
        ProbeVerdict::Fail { missed } => ProbeVerdict::Fail {
            missed: std::iter::once(why.to_owned()).chain(missed).collect(),
        },
        ProbeVerdict::NotSignificant { reason, .. } => ProbeVerdict::NotSignificant {
            passed: false,
            reason: format!("{why}; {reason}"),
        },
        ProbeVerdict::Pass | ProbeVerdict::Broken { .. } => ProbeVerdict::NotSignificant {
            passed: false,
            reason: why.to_owned(),
        },
    }
}

/// A probe trial as the summary keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSummary {
    /// The search it belongs to.
    pub search: String,
    /// Its number in the search, from 1.
    pub probe: u32,
    /// The total rate offered.
    pub scale: f64,
    /// Each tenant's share of it.
    pub shares: BTreeMap<String, f64>,
    /// How long it waited for the engines' queues to empty before its warmup, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_wait_ms: Option<u64>,
    /// How long it held the engines, milliseconds: its wait for empty queues, warmup,
    /// measured phase and drain; `None` where its folder does not say when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_ms: Option<u64>,
    /// What it showed.
    #[serde(flatten)]
    pub verdict: ProbeVerdict,
}

/// A search as its own folder recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRecord {
    /// The search.
    pub search: String,
    /// Its mode.
    pub mode: SharingMode,
    /// Its tenants.
    pub tenants: Vec<String>,
    /// How it probed.
    pub policy: SearchPolicy,
    /// 1 for the configured mix; 2 and up for capacity-region directions.
    pub direction: u32,
    /// Why it ended early, when its folder says it failed (an engine that did not start).
    pub failure: Option<String>,
    /// The node's engine-time budget stopped it before a probe it wanted: how far spent.
    pub budget_spent: Option<String>,
}

/// Every capacity figure of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacitySummary {
    /// How the figures are defined.
    pub definition: String,
    /// Per node that searched.
    pub nodes: Vec<NodeCapacity>,
}

/// One node's capacities and verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// The node.
    pub node: String,
    /// Each tenant alone.
    pub solo: Vec<SoloCapacity>,
    /// Each shared search.
    pub shared: Vec<SharedCapacity>,
    /// The shared mode whose mix search carries the most GPU-equivalents.
    pub best_mode: Option<SharingMode>,
    /// The verdict in one line.
    pub verdict: String,
    /// How long all its searches' probes held the engines, seconds.
    #[serde(default)]
    pub engine_seconds: f64,
    /// The capacities priced, when the config priced a GPU-hour (`cost:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<cost::CapacityCost>,
}

impl NodeCapacity {
    /// A line per search whose fit names a binding bound (`n cap-solo-a: binding: a: ttft_ms
    /// p90 (crosses 150 at 54.100 req/s)`), as the terminal and report.html give them.
    pub fn fit_lines(&self) -> Vec<String> {
        let solo = self.solo.iter().map(|s| (&s.search, &s.fit));
        let shared = self.shared.iter().map(|s| (&s.search, &s.fit));
        solo.chain(shared)
            .filter_map(|(search, fit)| {
                let words = fit.as_ref()?.describe()?;
                Some(format!("{} {search}: {words}", self.node))
            })
            .collect()
    }
}

/// One tenant's capacity alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoloCapacity {
    /// The tenant.
    pub tenant: String,
    /// The search.
    pub search: String,
    /// What its probes proved, in requests per second.
    pub interval: Interval,
    /// How long its probes held the engines, seconds (what the search cost).
    #[serde(default)]
    pub engine_seconds: f64,
    /// Each bound fitted through all its probes, and the binding one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<fit::SearchFit>,
}

/// The tenants' capacity together along one mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedCapacity {
    /// The sharing mode.
    pub mode: SharingMode,
    /// The search.
    pub search: String,
    /// Whether this is the configured mix (the verdict's) or a region direction.
    pub mix_direction: bool,
    /// Each tenant's share of the total rate.
    pub shares: BTreeMap<String, f64>,
    /// What its probes proved of the total rate.
    pub interval: Interval,
    /// How long its probes held the engines, seconds (what the search cost).
    #[serde(default)]
    pub engine_seconds: f64,
    /// Whether the node's engine-time budget (`capacity.budget`) ended this search or a solo
    /// search it is compared with: an undecided range then says so.
    #[serde(default, skip_serializing_if = "is_false")]
    pub budget_spent: bool,
    /// Per tenant: its rate at the highest passing and lowest failing scale, and the first
    /// as a fraction of its solo capacity.
    pub tenants: Vec<SharedTenant>,
    /// Σ_i shared rate_i / C_i at the highest passing rates; `None` when a side has no pass.
    pub gpu_equivalents: Option<f64>,
    /// Where GPU-equivalents lie, given how wide the solo and shared intervals are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_equivalents_range: Option<GpuEquivalentsRange>,
    /// What the range decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<SharingDecision>,
    /// Whether `gpu_equivalents` is only a lower bound (the shared search passed its maximum).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_least: bool,
    /// GPUs that dedicating one per tenant share would need for the same traffic, minus the
    /// one shared GPU: `gpu_equivalents − 1` (negative when sharing loses).
    pub gpus_saved: Option<f64>,
    /// Why there are no GPU-equivalents, when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_verdict: Option<String>,
    /// Each bound fitted through all its probes, and the binding one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<fit::SearchFit>,
}

/// The range GPU-equivalents lie in. Each capacity is only known to an interval, [highest
/// pass, lowest fail), so `low` = Σ_i shared lower_i / solo upper_i and `high` = Σ_i shared
/// upper_i / solo lower_i.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpuEquivalentsRange {
    /// The lowest GPU-equivalents the intervals allow.
    pub low: f64,
    /// The highest; `None` when the shared search passed its maximum (no upper end known).
    pub high: Option<f64>,
}

impl GpuEquivalentsRange {
    /// What the range decides: sharing wins when even its low end is above 1, loses when even
    /// its high end is below 1, and is undecided otherwise.
    pub fn decision(self) -> SharingDecision {
        if self.low > 1.0 {
            SharingDecision::Wins
        } else if self.high.is_some_and(|h| h < 1.0) {
            SharingDecision::Loses
        } else {
            SharingDecision::Undecided
        }
    }

    /// `1.21–1.29`, or `≥ 1.21` without a high end.
    pub fn describe(self) -> String {
        match self.high {
            Some(high) => format!("{:.2}–{high:.2}", self.low),
            None => format!("≥ {:.2}", self.low),
        }
    }
}

/// Whether one shared GPU carries more SLO-meeting traffic than dedicated GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharingDecision {
    /// Every value the intervals allow is above 1.
    Wins,
    /// Every value the intervals allow is below 1.
    Loses,
    /// The intervals allow values on both sides of 1.
    Undecided,
}

impl SharingDecision {
    /// The decision in words, as the verdict gives it.
    pub fn words(self) -> &'static str {
        match self {
            SharingDecision::Wins => "sharing carries more",
            SharingDecision::Loses => "sharing loses",
            SharingDecision::Undecided => "undecided at this precision",
        }
    }
}

/// The range of GPU-equivalents of a shared search whose capacity lies in `shared` and whose
/// tenants (name, share) have the solo intervals `solo_of` gives.
/// What a shared search along the mix has decided while it is still running: its
/// GPU-equivalents range against the solo intervals (`solo_of`: each tenant's highest passing
/// and lowest failing rate) already lies all above 1 or all below. Narrowing the shared
/// interval further only narrows that range within itself, so the search may stop; `None`
/// while the range straddles 1 or the search has ended by its policy.
pub fn decided(
    shared: &Interval,
    shares: &BTreeMap<String, f64>,
    solo_of: impl Fn(&str) -> Option<(f64, Option<f64>)>,
) -> Option<SharingDecision> {
    if shared.end != SearchEnd::Unfinished {
        return None;
    }
    let decision = gpu_equivalents_range(shared, shares, solo_of)?.decision();
    (decision != SharingDecision::Undecided).then_some(decision)
}

fn gpu_equivalents_range(
    shared: &Interval,
    shares: &BTreeMap<String, f64>,
    solo_of: impl Fn(&str) -> Option<(f64, Option<f64>)>,
) -> Option<GpuEquivalentsRange> {
    let passed = shared.passed?;
    let mut low = 0.0;
    let mut high = Some(0.0);
    for (tenant, share) in shares {
        let (solo_low, solo_high) = solo_of(tenant)?;
        // Without a solo upper end the low end can only be bounded by 0.
        low += solo_high.map_or(0.0, |h| passed * share / h);
        high = high
            .zip(shared.failed)
            .map(|(sum, failed)| sum + failed * share / solo_low);
    }
    Some(GpuEquivalentsRange {
        low: round3(low),
        high: high.map(round3),
    })
}

/// One tenant in a shared search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedTenant {
    /// The tenant.
    pub tenant: String,
    /// Its rate at the highest passing scale.
    pub passed_rps: Option<f64>,
    /// Its rate at the lowest failing scale.
    pub failed_rps: Option<f64>,
    /// `passed_rps / C_i`.
    pub of_solo: Option<f64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn round3(x: f64) -> f64 {
    crate::metrics::round3(x)
}

/// A node's capacity summary from its search folders and probe trials; `None` when the node
/// ran no search.
pub fn node_capacity(
    node: &str,
    searches: &[SearchRecord],
    probes: &[ProbeSummary],
) -> Option<NodeCapacity> {
    if searches.is_empty() {
        return None;
    }
    let proved = |record: &SearchRecord| {
        let mut mine: Vec<&ProbeSummary> = probes
            .iter()
            .filter(|p| p.search == record.search)
            .collect();
        mine.sort_by_key(|p| p.probe);
        let history: Vec<Probe> = mine
            .iter()
            .map(|p| Probe {
                scale: p.scale,
                verdict: p.verdict.clone(),
            })
            .collect();
        let mut found = interval(&history, &record.policy);
        if let (Some(reason), 0) = (&record.failure, history.len()) {
            found.end = SearchEnd::Cut;
            found.cut = Some(reason.clone());
        }
        if let (Some(spent), SearchEnd::Unfinished) = (&record.budget_spent, found.end) {
            found.end = SearchEnd::Budget;
            found.budget_spent = Some(spent.clone());
        }
        let engine_ms: u64 = mine.iter().filter_map(|p| p.engine_ms).sum();
        (
            found,
            mine.first().map(|p| p.shares.clone()).unwrap_or_default(),
            round3(engine_ms as f64 / 1e3),
        )
    };
    let mut solo = Vec::new();
    let mut shared = Vec::new();
    for record in searches {
        let (found, shares, engine_seconds) = proved(record);
        if record.mode == SharingMode::Solo {
            solo.push(SoloCapacity {
                tenant: record.tenants.first().cloned().unwrap_or_default(),
                search: record.search.clone(),
                interval: found,
                engine_seconds,
                fit: None,
            });
        } else {
            shared.push((record, found, shares, engine_seconds));
        }
    }
    let solo_of = |tenant: &str| {
        solo.iter()
            .find(|s| s.tenant == tenant)
            .map(|s| &s.interval)
    };
    let solo_ends = |t: &str| {
        let solo = solo_of(t)?;
        Some((solo.passed?, solo.failed))
    };
    let shared: Vec<SharedCapacity> = shared
        .into_iter()
        .map(|(record, mut found, shares, engine_seconds)| {
            // The agent stops a search along the mix once its range decides the verdict.
            let stops = record.policy.stop_when_decided && record.direction <= 1;
            if stops && decided(&found, &shares, solo_ends).is_some() {
                found.end = SearchEnd::Decided;
            }
            let tenants: Vec<SharedTenant> = record
                .tenants
                .iter()
                .map(|t| {
                    let share = shares.get(t).copied().unwrap_or(0.0);
                    let passed_rps = found.passed.map(|x| round3(x * share));
                    let c = solo_of(t).and_then(|i| i.passed);
                    SharedTenant {
                        tenant: t.clone(),
                        passed_rps,
                        failed_rps: found.failed.map(|x| round3(x * share)),
                        of_solo: passed_rps.zip(c).map(|(r, c)| round3(r / c)),
                    }
                })
                .collect();
            let budget_spent = found.budget_spent.is_some()
                || record
                    .tenants
                    .iter()
                    .any(|t| solo_of(t).is_some_and(|i| i.budget_spent.is_some()));
            let no_verdict = if found.passed.is_none() && found.budget_spent.is_some() {
                Some(
                    "undecided: the engine-time budget was spent before a shared rate passed"
                        .to_owned(),
                )
            } else if found.passed.is_none() {
                Some(match found.failed_bounds.first() {
                    Some(bound) => {
                        format!("no shared rate met every SLO (lowest probe failed: {bound})")
                    }
                    None => "no shared rate passed".to_owned(),
                })
            } else if let Some(s) = solo
                .iter()
                .find(|s| record.tenants.contains(&s.tenant) && s.interval.end == SearchEnd::AboveMax)
            {
                // C_i is then only a lower bound, and so the ratio an upper one.
                Some(format!("the solo capacity of {} is above the search's maximum: raise capacity.max_rate", s.tenant))
            } else {
                tenants
                    .iter()
                    .find(|t| t.of_solo.is_none())
                    .map(|t| format!("{} has no solo capacity to compare with", t.tenant))
            };
            let gpu_equivalents = no_verdict
                .is_none()
                .then(|| round3(tenants.iter().filter_map(|t| t.of_solo).sum()));
            let gpu_equivalents_range =
                gpu_equivalents.and_then(|_| gpu_equivalents_range(&found, &shares, solo_ends));
            SharedCapacity {
                mode: record.mode,
                search: record.search.clone(),
                mix_direction: record.direction <= 1,
                shares,
                at_least: found.end == SearchEnd::AboveMax,
                gpus_saved: gpu_equivalents.map(|g| round3(g - 1.0)),
                interval: found,
                engine_seconds,
                budget_spent,
                tenants,
                gpu_equivalents,
                decision: gpu_equivalents_range.map(GpuEquivalentsRange::decision),
                gpu_equivalents_range,
                no_verdict,
                fit: None,
            }
        })
        .collect();
    let best_mode = shared
        .iter()
        .filter(|s| s.mix_direction)
        .filter_map(|s| Some((s.mode, s.gpu_equivalents?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(mode, _)| mode);
    let verdict = verdict_line(&solo, &shared, best_mode);
    let engine_seconds = solo.iter().map(|s| s.engine_seconds).sum::<f64>()
        + shared.iter().map(|s| s.engine_seconds).sum::<f64>();
    Some(NodeCapacity {
        node: node.to_owned(),
        solo,
        shared,
        best_mode,
        verdict,
        engine_seconds: round3(engine_seconds),
        cost: None,
    })
}

/// `mps: 1.31 GPU-equivalents (a 0.74 of solo, b 0.57), best of 3 modes; timeslice 1.02`.
fn verdict_line(
    solo: &[SoloCapacity],
    shared: &[SharedCapacity],
    best: Option<SharingMode>,
) -> String {
    if let Some(s) = solo.iter().find(|s| s.interval.passed.is_none()) {
        return match (s.interval.end, &s.interval.cut, &s.interval.budget_spent) {
            (_, None, Some(spent)) => format!(
                "undecided: the engine-time budget was spent before the solo search of {} found a passing rate ({spent})",
                s.tenant
            ),
            (SearchEnd::NoneMeets, _, _) => format!(
                "no verdict: {} meets its SLO at no rate alone{}",
                s.tenant,
                s.interval
                    .failed_bounds
                    .first()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            ),
            (_, Some(reason), _) => format!(
                "no verdict: the solo search of {} was cut before a rate passed ({reason})",
                s.tenant
            ),
            _ => format!(
                "no verdict: the solo search of {} found no passing rate",
                s.tenant
            ),
        };
    }
    let mixes: Vec<&SharedCapacity> = shared.iter().filter(|s| s.mix_direction).collect();
    if mixes.is_empty() {
        return "no shared mode searched: only solo capacities".into();
    }
    let describe = describe_shared;
    let Some(best) = best.and_then(|m| mixes.iter().find(|s| s.mode == m)) else {
        let all: Vec<String> = mixes.iter().map(|s| describe(s, false)).collect();
        if mixes.iter().any(|s| s.interval.budget_spent.is_some()) {
            return all.join("; ");
        }
        // Only a shared search that passed no rate says sharing fails; a solo capacity above
        // the search's range leaves the shared one without a measure, not failed.
        let words = if mixes.iter().all(|s| s.interval.passed.is_none()) {
            "sharing does not meet the SLOs"
        } else {
            "no verdict"
        };
        return format!("{words}: {}", all.join("; "));
    };
    let mut line = describe(best, true);
    if mixes.len() > 1 {
        line.push_str(&format!(", best of {} modes", mixes.len()));
        for other in mixes.iter().filter(|s| s.mode != best.mode) {
            line.push_str("; ");
            line.push_str(&describe(other, false));
        }
    }
    line
}

/// One shared search in the verdict: in full (`mps: 1.21–1.29 GPU-equivalents: sharing carries
/// more (…)`) for the best mode, short (`timeslice 0.88–0.97 (loses)`) for the others.
fn describe_shared(s: &SharedCapacity, full: bool) -> String {
    let Some(g) = s.gpu_equivalents else {
        return format!(
            "{}: {}",
            s.mode.name(),
            s.no_verdict.as_deref().unwrap_or("no verdict")
        );
    };
    let of_solo: Vec<String> = s
        .tenants
        .iter()
        .map(|t| format!("{} {:.2}", t.tenant, t.of_solo.unwrap_or(0.0)))
        .collect();
    let of_solo = of_solo.join(", ");
    let mode = s.mode.name();
    match (s.gpu_equivalents_range, full) {
        (Some(range), true) => format!(
            "{mode}: {} GPU-equivalents: {} (at the highest passing rates {g:.2}: {of_solo} of solo)",
            range.describe(),
            match range.decision() {
                SharingDecision::Undecided if s.budget_spent => {
                    "undecided: engine-time budget spent"
                }
                decision => decision.words(),
            }
        ),
        (Some(range), false) => {
            let short = match range.decision() {
                SharingDecision::Wins => "wins",
                SharingDecision::Loses => "loses",
                SharingDecision::Undecided => "undecided",
            };
            format!("{mode} {} ({short})", range.describe())
        }
        (None, true) => {
            let at_least = if s.at_least { "≥ " } else { "" };
            format!("{mode}: {at_least}{g:.2} GPU-equivalents ({of_solo} of solo)")
        }
        (None, false) => {
            let at_least = if s.at_least { "≥ " } else { "" };
            format!("{mode} {at_least}{g:.2}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SearchPolicy {
        SearchPolicy {
            start: 4.0,
            min: 0.5,
            max: 64.0,
            precision: 0.1,
            repeats: 0,
            max_probes: 16,
            stop_when_decided: true,
        }
    }

    fn record(search: &str, mode: SharingMode, tenants: &[&str]) -> SearchRecord {
        SearchRecord {
            search: search.into(),
            mode,
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            policy: policy(),
            direction: 1,
            failure: None,
            budget_spent: None,
        }
    }

    fn probe(search: &str, k: u32, scale: f64, pass: bool, shares: &[(&str, f64)]) -> ProbeSummary {
        ProbeSummary {
            search: search.into(),
            probe: k,
            scale,
            shares: shares.iter().map(|(t, s)| (t.to_string(), *s)).collect(),
            queue_wait_ms: None,
            engine_ms: Some(1_500),
            verdict: if pass {
                ProbeVerdict::Pass
            } else {
                ProbeVerdict::Fail {
                    missed: vec!["a: ttft_ms p99 9.00 > 5".into()],
                }
            },
        }
    }

    #[test]
    fn gpu_equivalents_add_each_tenants_shared_rate_over_its_solo_capacity() {
        let searches = [
            record("cap-solo-a", SharingMode::Solo, &["a"]),
            record("cap-solo-b", SharingMode::Solo, &["b"]),
            record("cap-mps", SharingMode::Mps, &["a", "b"]),
            record("cap-timeslice", SharingMode::Timeslice, &["a", "b"]),
        ];
        let ab = [("a", 0.5), ("b", 0.5)];
        let probes = [
            probe("cap-solo-a", 1, 10.0, true, &[("a", 1.0)]),
            probe("cap-solo-a", 2, 11.0, false, &[("a", 1.0)]),
            probe("cap-solo-b", 1, 20.0, true, &[("b", 1.0)]),
            probe("cap-solo-b", 2, 21.0, false, &[("b", 1.0)]),
            probe("cap-mps", 1, 16.0, true, &ab),
            probe("cap-mps", 2, 17.0, false, &ab),
            probe("cap-timeslice", 1, 10.0, true, &ab),
            probe("cap-timeslice", 2, 11.0, false, &ab),
        ];
        let node = node_capacity("n", &searches, &probes).expect("searched");
        let mps = &node.shared[0];
        // a: 8/10 + b: 8/20 = 0.8 + 0.4.
        assert_eq!(mps.gpu_equivalents, Some(1.2));
        assert_eq!(mps.gpus_saved, Some(0.2));
        assert_eq!(node.shared[1].gpu_equivalents, Some(0.75));
        assert_eq!(node.best_mode, Some(SharingMode::Mps));
        // What the searches cost: each probe held the engines 1.5 s.
        assert_eq!(node.solo[0].engine_seconds, 3.0);
        assert_eq!(mps.engine_seconds, 3.0);
        assert_eq!(node.engine_seconds, 12.0);
        // Each capacity is an interval: mps lies in [8/11 + 8/21, 8.5/10 + 8.5/20).
        let range = mps.gpu_equivalents_range.expect("a range");
        assert_eq!((range.low, range.high), (1.108, Some(1.275)));
        assert_eq!(mps.decision, Some(SharingDecision::Wins));
        assert_eq!(node.shared[1].decision, Some(SharingDecision::Loses));
        assert_eq!(
            node.verdict,
            "mps: 1.11–1.27 GPU-equivalents: sharing carries more (at the highest passing rates 1.20: a 0.80, b 0.40 of solo), best of 2 modes; timeslice 0.69–0.82 (loses)"
        );

        // Wider solo intervals leave the same point undecided.
        let wide = [
            probe("cap-solo-a", 1, 10.0, true, &[("a", 1.0)]),
            probe("cap-solo-a", 2, 14.0, false, &[("a", 1.0)]),
            probe("cap-solo-b", 1, 20.0, true, &[("b", 1.0)]),
            probe("cap-solo-b", 2, 28.0, false, &[("b", 1.0)]),
            probe("cap-mps", 1, 16.0, true, &ab),
            probe("cap-mps", 2, 17.0, false, &ab),
        ];
        let node = node_capacity("n", &searches[..3], &wide).expect("searched");
        assert_eq!(node.shared[0].decision, Some(SharingDecision::Undecided));
        assert!(
            node.verdict
                .starts_with("mps: 0.86–1.27 GPU-equivalents: undecided at this precision"),
            "{}",
            node.verdict
        );
    }

    #[test]
    fn a_shared_search_whose_range_decides_ends_decided_and_only_then() {
        let searches = [
            record("cap-solo-a", SharingMode::Solo, &["a"]),
            record("cap-solo-b", SharingMode::Solo, &["b"]),
            record("cap-mps", SharingMode::Mps, &["a", "b"]),
        ];
        let ab = [("a", 0.5), ("b", 0.5)];
        let solo = [
            probe("cap-solo-a", 1, 10.0, true, &[("a", 1.0)]),
            probe("cap-solo-a", 2, 11.0, false, &[("a", 1.0)]),
            probe("cap-solo-b", 1, 20.0, true, &[("b", 1.0)]),
            probe("cap-solo-b", 2, 21.0, false, &[("b", 1.0)]),
        ];
        // One pass at 16 proves at least 8/11 + 8/21 = 1.11 GPU-equivalents: decided, with no
        // failing rate yet.
        let mut probes = solo.to_vec();
        probes.push(probe("cap-mps", 1, 16.0, true, &ab));
        let node = node_capacity("n", &searches, &probes).expect("searched");
        let mps = &node.shared[0];
        assert_eq!(mps.interval.end, SearchEnd::Decided);
        assert_eq!(mps.decision, Some(SharingDecision::Wins));
        assert_eq!(mps.interval.describe(), "≥ 16.000; stopped once decided");
        // A search asked to run to its precision (until: precision) is not over.
        let mut to_precision = searches.clone();
        to_precision[2].policy.stop_when_decided = false;
        let node = node_capacity("n", &to_precision, &probes).expect("searched");
        assert_eq!(node.shared[0].interval.end, SearchEnd::Unfinished);
        // A pass at 12 proves only 0.83: not decided, the search goes on.
        let mut probes = solo.to_vec();
        probes.push(probe("cap-mps", 1, 12.0, true, &ab));
        let node = node_capacity("n", &searches, &probes).expect("searched");
        assert_eq!(node.shared[0].interval.end, SearchEnd::Unfinished);
        // A fail at 10 and a pass at 5: at most 5/10 + 5/20 = 0.75 of a GPU: sharing loses.
        let mut probes = solo.to_vec();
        probes.push(probe("cap-mps", 1, 10.0, false, &ab));
        probes.push(probe("cap-mps", 2, 5.0, true, &ab));
        let node = node_capacity("n", &searches, &probes).expect("searched");
        assert_eq!(node.shared[0].interval.end, SearchEnd::Decided);
        assert_eq!(node.shared[0].decision, Some(SharingDecision::Loses));
    }

    #[test]
    fn a_spent_budget_leaves_the_verdict_undecided_with_what_was_known() {
        let spent = "20 s of the 20 s budget spent; the next probe needed 3 s";
        let budgeted = |mut r: SearchRecord| {
            r.budget_spent = Some(spent.to_owned());
            r
        };
        let ab = [("a", 0.5), ("b", 0.5)];
        // The mps search stopped after a pass and a fail far apart: its range straddles 1.
        let searches = [
            record("cap-solo-a", SharingMode::Solo, &["a"]),
            record("cap-solo-b", SharingMode::Solo, &["b"]),
            budgeted(record("cap-mps", SharingMode::Mps, &["a", "b"])),
        ];
        let probes = [
            probe("cap-solo-a", 1, 10.0, true, &[("a", 1.0)]),
            probe("cap-solo-a", 2, 11.0, false, &[("a", 1.0)]),
            probe("cap-solo-b", 1, 20.0, true, &[("b", 1.0)]),
            probe("cap-solo-b", 2, 21.0, false, &[("b", 1.0)]),
            probe("cap-mps", 1, 10.0, true, &ab),
            probe("cap-mps", 2, 20.0, false, &ab),
        ];
        let node = node_capacity("n", &searches, &probes).expect("searched");
        let mps = &node.shared[0];
        assert_eq!(mps.interval.end, SearchEnd::Budget);
        assert_eq!(mps.interval.budget_spent.as_deref(), Some(spent));
        assert!(mps.budget_spent);
        assert_eq!(mps.decision, Some(SharingDecision::Undecided));
        assert!(
            node.verdict
                .starts_with("mps: 0.69–1.50 GPU-equivalents: undecided: engine-time budget spent"),
            "{}",
            node.verdict
        );

        // Spent before the shared search passed anything: no GPU-equivalents, said so.
        let probes = &probes[..4];
        let node = node_capacity("n", &searches, probes).expect("searched");
        assert_eq!(
            node.verdict,
            "mps: undecided: the engine-time budget was spent before a shared rate passed"
        );

        // Spent before a solo search passed: the verdict names the search and the budget.
        let searches = [budgeted(record("cap-solo-a", SharingMode::Solo, &["a"]))];
        let probes = [probe("cap-solo-a", 1, 10.0, false, &[("a", 1.0)])];
        let node = node_capacity("n", &searches, &probes).expect("searched");
        assert_eq!(
            node.verdict,
            format!("undecided: the engine-time budget was spent before the solo search of a found a passing rate ({spent})")
        );

        // The probe budget (max_probes) is no engine-time budget: the verdict does not say so.
        let mut capped = record("cap-solo-a", SharingMode::Solo, &["a"]);
        capped.policy.max_probes = 1;
        let node = node_capacity("n", &[capped], &probes).expect("searched");
        assert_eq!(node.solo[0].interval.end, SearchEnd::Budget);
        assert_eq!(
            node.verdict,
            "no verdict: the solo search of a found no passing rate"
        );
    }

    #[test]
    fn a_shared_mode_that_meets_no_slo_is_named_with_the_bound_never_as_zero() {
        let searches = [
            record("cap-solo-a", SharingMode::Solo, &["a"]),
            record("cap-mps", SharingMode::Mps, &["a", "b"]),
        ];
        let probes = [
            probe("cap-solo-a", 1, 4.0, true, &[("a", 1.0)]),
            probe("cap-mps", 1, 0.5, false, &[("a", 0.5), ("b", 0.5)]),
        ];
        let node = node_capacity("n", &searches, &probes).expect("searched");
        assert_eq!(node.shared[0].gpu_equivalents, None);
        assert_eq!(node.best_mode, None);
        assert_eq!(
            node.verdict,
            "sharing does not meet the SLOs: mps: no shared rate met every SLO (lowest probe failed: a: ttft_ms p99 9.00 > 5)"
        );

        // A solo capacity above the search's range leaves sharing unmeasured, not failed.
        let probes = [
            probe("cap-solo-a", 1, 64.0, true, &[("a", 1.0)]),
            probe("cap-mps", 1, 4.0, true, &[("a", 0.5), ("b", 0.5)]),
            probe("cap-mps", 2, 5.0, false, &[("a", 0.5), ("b", 0.5)]),
        ];
        let node = node_capacity("n", &searches, &probes).expect("searched");
        assert_eq!(
            node.verdict,
            "no verdict: mps: the solo capacity of a is above the search's maximum: raise capacity.max_rate"
        );
    }

    #[test]
    fn a_percentile_bound_is_judged_at_its_stated_confidence() {
        let check = |measured: f64| crate::slo::SloCheck {
            bound: "ttft_ms p99".into(),
            limit: 150.0,
            measured: Some(measured),
            verdict: if measured <= 150.0 {
                crate::slo::SloVerdict::Pass
            } else {
                crate::slo::SloVerdict::Fail
            },
        };
        let slo = |measured: f64| crate::slo::SloResult {
            pass: measured <= 150.0,
            checks: vec![check(measured)],
            goodput_rps: None,
            attainment: None,
        };
        let judged = |requests: u64, over: u64, measured: f64| {
            let tallies = [confidence::BoundTally {
                bound: "ttft_ms p99".into(),
                quantile: 0.99,
                limit: 150.0,
                requests,
                over,
                slots: confidence::even_slots(requests, over, 20),
            }];
            probe_verdict(&[TenantJudgement {
                tenant: "a",
                completed: requests,
                needed: 500,
                tallies: &tallies,
                slo: Some(&slo(measured)),
            }])
        };
        // None over in 200 requests cannot yet rule out a p99 beyond the bound; in 300 it can.
        assert!(matches!(
            judged(200, 0, 40.0),
            ProbeVerdict::NotSignificant { passed: true, .. }
        ));
        assert_eq!(judged(300, 0, 40.0), ProbeVerdict::Pass);
        // Eight over in 300 fails it, with the counts in the reason.
        let ProbeVerdict::Fail { missed } = judged(300, 8, 180.0) else {
            panic!("a fail")
        };
        assert_eq!(
            missed,
            ["a: ttft_ms p99 180.00 > 150 (8 of 300 over, 95% sure)"]
        );
        // A p99 just over the bound on a few hundred requests is not yet a fail.
        assert!(matches!(
            judged(300, 4, 160.0),
            ProbeVerdict::NotSignificant { passed: false, .. }
        ));
        assert!(matches!(judged(0, 0, 0.0), ProbeVerdict::Fail { .. }));
    }
}
