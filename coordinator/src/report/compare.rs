//! `coordinator compare`: experiments side by side. Tenants are matched by node, trial and
//! tenant name; each figure of a later experiment gets its change against the first, with the
//! direction that change means (lower latency is better, higher throughput is better). A
//! figure missing on either side is `-`, never a change from zero.

use multitenant::analysis::{Summary, TenantSummary};
use serde::Serialize;

/// Whether a larger value is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Better {
    Lower,
    Higher,
}

/// Reads one figure of a tenant.
type Pick = fn(&TenantSummary) -> Option<f64>;

/// The figures compared, with how to read each.
const FIGURES: [(&str, Better, Pick); 7] = [
    ("ttft_p50_ms", Better::Lower, |t| {
        t.metrics.ttft_ms.map(|p| p.p50)
    }),
    ("ttft_p99_ms", Better::Lower, |t| {
        t.metrics.ttft_ms.map(|p| p.p99)
    }),
    ("tpot_p50_ms", Better::Lower, |t| {
        t.metrics.tpot_ms.map(|p| p.p50)
    }),
    ("tpot_p99_ms", Better::Lower, |t| {
        t.metrics.tpot_ms.map(|p| p.p99)
    }),
    ("output_tokens_per_s", Better::Higher, |t| {
        t.metrics.throughput.map(|x| x.output_tokens_per_s)
    }),
    ("requests_per_s", Better::Higher, |t| {
        t.metrics.throughput.map(|x| x.requests_per_s)
    }),
    ("error_rate", Better::Lower, |t| t.metrics.error_rate),
];

/// One figure of one tenant across the experiments.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedFigure {
    /// `node/trial/tenant`.
    pub tenant: String,
    /// Figure name.
    pub figure: String,
    /// Its value in each experiment, in the order given.
    pub values: Vec<Option<f64>>,
    /// Per later experiment: (later − first) / first, when both exist and first ≠ 0.
    pub change: Vec<Option<f64>>,
    /// Per later experiment: `better`, `worse`, `same` (within 1%) or `-`.
    pub direction: Vec<Direction>,
}

/// What a later experiment's change in a figure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// The figure moved the good way by more than 1%.
    #[serde(rename = "better")]
    Better,
    /// The figure moved the bad way by more than 1%.
    #[serde(rename = "worse")]
    Worse,
    /// Within 1% of the baseline.
    #[serde(rename = "same")]
    Same,
    /// The figure is missing on either side.
    #[serde(rename = "-")]
    NoData,
}

impl Direction {
    /// The word printed for it.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Better => "better",
            Direction::Worse => "worse",
            Direction::Same => "same",
            Direction::NoData => "-",
        }
    }
}

/// Compares `summaries` figure by figure against the first.
pub fn compare(summaries: &[Summary]) -> Vec<ComparedFigure> {
    if summaries.is_empty() {
        return Vec::new();
    }
    let mut keys: Vec<String> = Vec::new();
    for s in summaries {
        for (key, _) in tenants(s) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let mut out = Vec::new();
    for key in keys {
        for (figure, better, pick) in FIGURES {
            let values: Vec<Option<f64>> = summaries
                .iter()
                .map(|s| {
                    tenants(s)
                        .into_iter()
                        .find(|(k, _)| *k == key)
                        .and_then(|(_, t)| pick(t))
                })
                .collect();
            let base = values[0];
            let change: Vec<Option<f64>> = values[1..]
                .iter()
                .map(|v| match (base, v) {
                    (Some(b), Some(v)) if b != 0.0 => Some((v - b) / b),
                    _ => None,
                })
                .collect();
            let direction = change
                .iter()
                .map(|c| match c {
                    None => Direction::NoData,
                    Some(c) if c.abs() < 0.01 => Direction::Same,
                    Some(c) => {
                        let up = *c > 0.0;
                        if (better == Better::Higher) == up {
                            Direction::Better
                        } else {
                            Direction::Worse
                        }
                    }
                })
                .collect();
            out.push(ComparedFigure {
                tenant: key.clone(),
                figure: figure.to_owned(),
                values,
                change,
                direction,
            });
        }
    }
    out
}

fn tenants(s: &Summary) -> Vec<(String, &TenantSummary)> {
    s.trials()
        .flat_map(|(node, t)| {
            t.tenants
                .iter()
                .map(move |x| (format!("{node}/{}/{}", t.trial, x.tenant), x))
        })
        .collect()
}

/// One node's capacity verdict in one of the experiments compared.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedVerdict {
    /// The experiment's label.
    pub experiment: String,
    /// The node.
    pub node: String,
    /// Its verdict line.
    pub verdict: String,
    /// Its best mode's GPU-equivalents, when it has one.
    pub gpu_equivalents: Option<f64>,
    /// Where they lie, given the intervals.
    pub gpu_equivalents_range: Option<multitenant::capacity::GpuEquivalentsRange>,
    /// What that range decides.
    pub decision: Option<multitenant::capacity::SharingDecision>,
}

/// The capacity verdicts of every experiment that searched capacity, side by side.
pub fn verdicts(labels: &[String], summaries: &[Summary]) -> Vec<ComparedVerdict> {
    labels
        .iter()
        .zip(summaries)
        .filter_map(|(label, s)| Some((label, s.capacity.as_ref()?)))
        .flat_map(|(label, capacity)| {
            capacity.nodes.iter().map(move |n| {
                let best = n
                    .shared
                    .iter()
                    .find(|s| Some(s.mode) == n.best_mode && s.mix_direction);
                ComparedVerdict {
                    experiment: label.clone(),
                    node: n.node.clone(),
                    verdict: n.verdict.clone(),
                    gpu_equivalents: best.and_then(|s| s.gpu_equivalents),
                    gpu_equivalents_range: best.and_then(|s| s.gpu_equivalents_range),
                    decision: best.and_then(|s| s.decision),
                }
            })
        })
        .collect()
}
