//! The time series of an experiment folder, for plots: every measured request's timings and
//! every GPU sample, per node and trial, on the node's clock (nanoseconds since the run's
//! zero, so trials of one node share one time axis).
//!
//! Per-request figures come from the same [`RequestEvent`] methods as the summary's
//! histograms, so a plotted point and a summary percentile share one definition. Streams that
//! cannot be read are left out here; [`crate::analysis`] reports them.

use std::path::Path;

use crate::analysis::AnalysisError;
use crate::events::{
    read_stream, Event, GpuSample, Phase, PromptEvent, RequestEvent, StreamKind, TrialState,
};
use crate::layout::{ExperimentDir, StreamName, TrialDir};

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
    /// Trials in the order they ran.
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

/// One tenant in one trial.
#[derive(Debug, Clone)]
pub struct TenantSeries {
    /// Tenant name.
    pub tenant: String,
    /// Offered request rate of an open-loop arrival process.
    pub offered_rate: Option<f64>,
    /// Measure-phase requests, in send order.
    pub requests: Vec<RequestPoint>,
    /// Prompts whose answer was kept (`keep_responses`), in request order.
    pub answers: Vec<PromptEvent>,
}

/// The timings of one measured request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestPoint {
    /// When it was sent.
    pub sent_ns: u64,
    /// When its response ended.
    pub done_ns: u64,
    /// TTFT; `None` for a failed request.
    pub ttft_ns: Option<u64>,
    /// TPOT; `None` for a failed request or one with fewer than two tokens.
    pub tpot_ns: Option<u64>,
    /// E2E; `None` for a failed request.
    pub e2e_ns: Option<u64>,
    /// Output tokens delivered (0 when unknown or failed).
    pub output_tokens: u32,
    /// Whether it failed.
    pub failed: bool,
}

impl RequestPoint {
    fn of(r: &RequestEvent) -> Self {
        Self {
            sent_ns: r.sent_ns,
            done_ns: r.done_ns,
            ttft_ns: r.ttft_ns(),
            tpot_ns: r.tpot_ns(),
            e2e_ns: r.e2e_ns(),
            output_tokens: if r.error.is_none() {
                r.output_tokens.unwrap_or(0)
            } else {
                0
            },
            failed: r.error.is_some(),
        }
    }
}

/// Reads the series of the experiment folder `dir`.
pub fn read_series(dir: &Path) -> Result<ExperimentSeries, AnalysisError> {
    let experiment = ExperimentDir::new(dir);
    if !experiment.is_experiment() {
        return Err(AnalysisError::NotAnExperiment(dir.to_owned()));
    }
    let mut nodes = Vec::new();
    for node_dir in experiment.nodes()? {
        let mut trials = Vec::new();
        let mut gpu = Vec::new();
        for trial_dir in node_dir.trials_in_run_order()? {
            let Some(trial) = read_trial(&trial_dir)? else {
                continue;
            };
            trials.push(trial);
            if let Ok(stream) = read_stream(&trial_dir.stream(&StreamName::Gpu)) {
                gpu.extend(stream.events.into_iter().filter_map(|l| match l.event {
                    Event::GpuSample(s) => Some(s),
                    _ => None,
                }));
            }
        }
        gpu.sort_by_key(|s| (s.at_ns, s.gpu));
        nodes.push(NodeSeries {
            node: node_dir.name,
            trials,
            gpu,
        });
    }
    Ok(ExperimentSeries { nodes })
}

/// The series of a fixed-load trial; `None` for a capacity search's folders (its lifecycle
/// and its probes), which the capacity summary shows instead.
fn read_trial(trial_dir: &TrialDir) -> Result<Option<TrialSeries>, AnalysisError> {
    let (mut started_ns, mut ended_ns) = (None, None);
    if let Ok(agent) = read_stream(&trial_dir.stream(&StreamName::Agent)) {
        for line in &agent.events {
            match &line.event {
                Event::Trial(t) if t.state == TrialState::Started => {
                    started_ns.get_or_insert(t.at_ns);
                }
                Event::Trial(t) => ended_ns = Some(t.at_ns),
                Event::Search(_) | Event::Probe(_) => return Ok(None),
                _ => {}
            }
        }
    }
    let mut tenants = Vec::new();
    for found in trial_dir.tenant_streams()? {
        let Ok(stream) = read_stream(&found.path) else {
            continue;
        };
        let (StreamKind::Tenant, Some(tenant)) = (stream.header.stream, &stream.header.tenant)
        else {
            continue;
        };
        let mut requests: Vec<RequestPoint> = stream
            .events
            .iter()
            .filter_map(|l| match &l.event {
                // Implausible times are left out here as in the summary.
                Event::Request(r) if r.phase == Phase::Measure && r.implausible(None).is_none() => {
                    Some(RequestPoint::of(r))
                }
                _ => None,
            })
            .collect();
        requests.sort_by_key(|r| r.sent_ns);
        let mut answers: Vec<_> =
            read_stream(&trial_dir.stream(&StreamName::Prompts(tenant.name.clone())))
                .map(|s| {
                    s.events
                        .into_iter()
                        .filter_map(|l| match l.event {
                            Event::Prompt(p) if p.response.is_some() => Some(p),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
        // Written as requests end; kept in request order (`<tenant>-<index>`).
        answers.sort_by_key(|p| {
            p.id.rsplit_once('-')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        tenants.push(TenantSeries {
            tenant: tenant.name.clone(),
            offered_rate: tenant.offered_rate,
            requests,
            answers,
        });
    }
    Ok(Some(TrialSeries {
        trial: trial_dir.name.clone(),
        started_ns,
        ended_ns,
        tenants,
    }))
}
