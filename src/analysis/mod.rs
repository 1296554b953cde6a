//! From a folder of JSONL streams to a [`Summary`]: a pure function of the files, so a summary
//! computed during a run and one recomputed later by `coordinator analyze` are the same.
//!
//! The folder is walked through [`crate::layout`]: its node, trial and stream folders and
//! `plan.json`, never by file names spelled here.
//!
//! Each stream is read once, line by line, and folded as it is read into histograms, counters
//! and the bounded series of [`crate::series`]: memory does not grow with the number of
//! requests. Trial folders, and the tenant streams of each, are read on every core; histograms
//! merge exactly, so the figures are those of one reader going through the files in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::capacity::{self, CapacitySummary, ProbeSummary, ProbeVerdict, SearchRecord};
use crate::config::{Api, SharingMode};
use crate::events::{
    read_stream, Event, GpuSample, ReadError, StreamKind, StreamReader, TenantHeader, TrialState,
};
use crate::layout::{ExperimentDir, ListError, NodeDir, Plan, PlanTrial, StreamName, TrialDir};
use crate::metrics::gpu::{self, GpuTrialSummary};
use crate::metrics::quality::QualitySummary;
use crate::metrics::round3;
use crate::metrics::slowdown::{colocation_gain, Slowdown};
use crate::metrics::{Definitions, TenantAccumulator, TenantMetrics, LATE_SEND_MS};
use crate::series::{ExperimentSeries, NodeSeries, TenantSeries, TrialSeries};

mod probes;
mod tenant;

/// Version of the summary.json layout (1.1 added `missing` streams per trial and `quality` of
/// kept answers per tenant; 1.3 added `late_sends` per tenant).
pub const SUMMARY_SCHEMA_VERSION: &str = "1.3";

/// The results of one experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Layout version of this document.
    pub schema_version: String,
    /// Experiment name, from the stream headers.
    pub experiment: String,
    /// True if any number here comes from a simulated engine.
    pub simulated: bool,
    /// The metric definitions used.
    pub definitions: Definitions,
    /// Per node.
    pub nodes: Vec<NodeSummary>,
    /// Per trial name that ran on more than one node: the experiment across its nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub across_nodes: Vec<CrossNodeTrial>,
    /// Damaged lines, missing streams and other things a reader must know.
    pub warnings: Vec<String>,
    /// The SLO capacity searches and their verdict, when the experiment ran any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySummary>,
    /// The experiment was stopped before its end (Ctrl-C, SIGTERM, SIGHUP), as the
    /// coordinator that ran it recorded in the folder (`interrupted`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Summary {
    /// A summary of nothing yet, in this version's layout.
    fn empty() -> Self {
        Self {
            schema_version: SUMMARY_SCHEMA_VERSION.into(),
            experiment: String::new(),
            simulated: false,
            definitions: Definitions::default(),
            nodes: Vec::new(),
            across_nodes: Vec::new(),
            warnings: Vec::new(),
            capacity: None,
            interrupted: false,
        }
    }

    /// Every trial of every node at a fixed load (capacity probes left out), with its node's
    /// name, in node then run order.
    pub fn trials(&self) -> impl Iterator<Item = (&str, &TrialSummary)> {
        self.every_trial().filter(|(_, t)| t.probe.is_none())
    }

    /// Every probe trial of a capacity search, with its node's name.
    pub fn probes(&self) -> impl Iterator<Item = (&str, &TrialSummary)> {
        self.every_trial().filter(|(_, t)| t.probe.is_some())
    }

    fn every_trial(&self) -> impl Iterator<Item = (&str, &TrialSummary)> {
        self.nodes
            .iter()
            .flat_map(|n| n.trials.iter().map(move |t| (n.node.as_str(), t)))
    }

    /// Every tenant of every finished trial that missed its SLO, as
    /// `node/trial/tenant: the bounds it missed`; empty when every SLO held. What `--fail-on-slo`
    /// judges.
    pub fn slo_misses(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (node, trial) in self.trials().filter(|(_, t)| t.state.is_finished()) {
            for t in &trial.tenants {
                let Some(slo) = t.slo.as_ref().filter(|s| !s.pass) else {
                    continue;
                };
                let missed: Vec<String> = slo
                    .checks
                    .iter()
                    .filter(|c| !c.verdict.passed())
                    .map(|c| match c.measured {
                        Some(m) => format!("{} {m:.2} > {}", c.bound, c.limit),
                        None => format!("{} has no data (limit {})", c.bound, c.limit),
                    })
                    .collect();
                out.push(format!(
                    "{}/{}/{}: {}",
                    node,
                    trial.trial,
                    t.tenant,
                    missed.join(", ")
                ));
            }
        }
        out
    }
}

/// One trial across the nodes it ran on. Latency figures come from the tenants' histograms
/// merged (never from percentiles averaged); throughputs add up, each node over its own
/// window, since nodes run side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossNodeTrial {
    /// Trial name.
    pub trial: String,
    /// Nodes it ran on.
    pub nodes: Vec<String>,
    /// Measured requests completed, all nodes.
    pub completed: u64,
    /// Measured requests failed, all nodes.
    pub failed: u64,
    /// Σ of the nodes' aggregate output tokens/s.
    pub output_tokens_per_s: Option<f64>,
    /// TTFT over every tenant of every node, ms.
    pub ttft_ms: Option<crate::metrics::Percentiles>,
    /// TPOT likewise.
    pub tpot_ms: Option<crate::metrics::Percentiles>,
    /// ITL likewise.
    pub itl_ms: Option<crate::metrics::Percentiles>,
    /// E2E likewise.
    pub e2e_ms: Option<crate::metrics::Percentiles>,
}

/// One trial name and its runs on every node, while the summary is built.
struct TrialOnNodes {
    name: String,
    runs: Vec<(String, TrialSummary)>,
    histograms: TrialHistograms,
}

/// A trial's latency histograms merged over its tenants, for merging across nodes.
#[derive(Default)]
struct TrialHistograms {
    ttft: crate::metrics::LatencyHistogram,
    tpot: crate::metrics::LatencyHistogram,
    itl: crate::metrics::LatencyHistogram,
    e2e: crate::metrics::LatencyHistogram,
}

impl TrialHistograms {
    fn add(&mut self, acc: &TenantAccumulator) {
        self.ttft.merge(&acc.ttft);
        self.tpot.merge(&acc.tpot);
        self.itl.merge(&acc.itl);
        self.e2e.merge(&acc.e2e);
    }

    fn merge(&mut self, other: &TrialHistograms) {
        self.ttft.merge(&other.ttft);
        self.tpot.merge(&other.tpot);
        self.itl.merge(&other.itl);
        self.e2e.merge(&other.e2e);
    }
}

/// One node's trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Node name.
    pub node: String,
    /// Trials in the order they ran.
    pub trials: Vec<TrialSummary>,
}

/// One trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialSummary {
    /// Trial name.
    pub trial: String,
    /// Sharing mode.
    pub mode: SharingMode,
    /// The sweep stage this trial ran (1-based), when its workloads sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// How the trial ended, as its agent stream and the folder say.
    pub state: TrialStatus,
    /// Why the trial is not valid, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Per tenant, in name order.
    pub tenants: Vec<TenantSummary>,
    /// Σ output tokens / (latest done − earliest sent) over all tenants; `None` without data.
    pub aggregate_output_tokens_per_s: Option<f64>,
    /// As above, with prompt tokens added.
    pub aggregate_total_tokens_per_s: Option<f64>,
    /// Per GPU over the same window, from NVML (empty without NVML).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuTrialSummary>,
    /// Aggregate output tokens/s / Σ the tenants' solo output tokens/s (shared trials only,
    /// when every tenant's solo trial ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colocation_gain: Option<f64>,
    /// Energy of every GPU over the window / Σ output tokens, J; only when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_per_output_token_j: Option<f64>,
    /// Tenant streams the plan expected but the folder does not hold readably, or that the
    /// agent marked invalid; these tenants have no figures at all in this trial.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<MissingStream>,
    /// Which capacity search this trial probed, at what rate, and its verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSummary>,
}

/// How a trial ended, as analysis finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    /// It ran to its end and its figures are valid.
    Finished,
    /// It ended, but its figures cannot be trusted (the reason says why).
    Invalid,
    /// The run was stopped during it.
    Stopped,
    /// Planned, but its folder is not there.
    Missing,
    /// Its folder is there, but no end was recorded.
    Incomplete,
}

impl TrialStatus {
    /// The name written into summaries and reports.
    pub fn name(self) -> &'static str {
        match self {
            TrialStatus::Finished => "finished",
            TrialStatus::Invalid => "invalid",
            TrialStatus::Stopped => "stopped",
            TrialStatus::Missing => "missing",
            TrialStatus::Incomplete => "incomplete",
        }
    }

    /// Whether the trial's figures can be used.
    pub fn is_finished(self) -> bool {
        self == TrialStatus::Finished
    }

    /// The summary's reading of a trial's last recorded state.
    fn from_recorded(state: TrialState) -> Self {
        match state {
            TrialState::Finished => TrialStatus::Finished,
            TrialState::Invalid => TrialStatus::Invalid,
            TrialState::Stopped => TrialStatus::Stopped,
            TrialState::Started => TrialStatus::Incomplete,
        }
    }
}

impl std::fmt::Display for TrialStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A tenant stream that should be in a trial folder and is not, or cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingStream {
    /// The tenant.
    pub tenant: String,
    /// What is wrong, naming the file.
    pub reason: String,
}

/// What a tenant's figures need for a probe's verdict: requests for a bound judged on its
/// figure (a mean, a maximum, ITL, the error rate), and its percentile bounds counted.
struct ProbeNeeds {
    tenant: String,
    requests: u64,
    tallies: Vec<capacity::confidence::BoundTally>,
}

/// One tenant in one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantSummary {
    /// Tenant name.
    pub tenant: String,
    /// Model name.
    pub model: String,
    /// Engine kind.
    pub engine: String,
    /// For a LoRA adapter tenant: the tenant whose engine serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// The API its load called (absent in summaries written before embeddings: chat).
    #[serde(default)]
    pub api: Api,
    /// Whether the engine was simulated.
    pub simulated: bool,
    /// Arrival process.
    pub arrival: String,
    /// Offered rate of an open-loop process.
    pub offered_rate: Option<f64>,
    /// Why its prompts share text an engine's prefix cache can serve, when they do (the
    /// default is prompts unique to their request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_prefixes: Option<String>,
    /// The measurements.
    #[serde(flatten)]
    pub metrics: TenantMetrics,
    /// The tenant's SLO, judged, when the config set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<crate::slo::SloResult>,
    /// What the load generator or the server did not do as asked (the client fell behind
    /// its schedule, sent fewer requests than offered, or outputs were not of the asked
    /// length); empty when all was as asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_checks: Vec<String>,
    /// Against this tenant's solo trial (shared trials only, when a solo trial ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowdown: Option<Slowdown>,
    /// The engine's own view, from its `/metrics`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerMetrics>,
    /// Its kept answers scored against the dataset's expected outputs, when answers were kept
    /// (`keep_responses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualitySummary>,
}

/// What the engine itself reported (vLLM's Prometheus histograms), as means over the window
/// from its last scrape before the measure phase to its last scrape of the trial (so requests
/// that finished during the drain are in it too). Means only: the engine's buckets are too
/// coarse for honest percentiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetrics {
    /// Scrapes in the stream.
    pub samples: usize,
    /// `vllm:time_to_first_token_seconds`, mean, ms.
    pub ttft_mean_ms: Option<f64>,
    /// `vllm:inter_token_latency_seconds`, mean, ms.
    pub itl_mean_ms: Option<f64>,
    /// `vllm:request_time_per_output_token_seconds`, mean, ms.
    pub tpot_mean_ms: Option<f64>,
    /// `vllm:e2e_request_latency_seconds`, mean, ms.
    pub e2e_mean_ms: Option<f64>,
    /// `vllm:request_queue_time_seconds`, mean, ms.
    pub queue_mean_ms: Option<f64>,
    /// Requests finished in the window (`vllm:e2e_request_latency_seconds` count).
    pub requests: Option<f64>,
    /// `vllm:num_preemptions_total` in the window.
    pub preemptions: Option<f64>,
    /// Share of the window's prompt tokens served from the engine's prefix cache
    /// (`vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total`); `None` without
    /// lookups.
    #[serde(default)]
    pub prefix_cache_hit_rate: Option<f64>,
}

/// Why a folder could not be analysed at all.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// No `nodes/` folder.
    #[error("{} holds no nodes/ folder: is it an experiment folder?", .0.display())]
    NotAnExperiment(PathBuf),
    /// A folder could not be listed.
    #[error(transparent)]
    List(#[from] ListError),
    /// The folder is a capacity search's own, not a trial.
    #[error("{} is the folder of capacity search {search}, not a trial", folder.display())]
    NotATrial {
        /// The folder.
        folder: PathBuf,
        /// The search.
        search: String,
    },
    /// A stream is unreadable as a whole.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// An experiment's summary and the series its plots are drawn from, made in one pass over its
/// streams.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The figures.
    pub summary: Summary,
    /// The series for plots.
    pub series: ExperimentSeries,
}

/// Analyses the experiment folder `dir`.
pub fn analyze_dir(dir: &Path) -> Result<Summary, AnalysisError> {
    Ok(analyze(dir)?.summary)
}

/// Analyses the experiment folder `dir`: its summary and its series, each stream read once.
/// Trial folders, and the tenant streams within each, are read on every core; their results
/// are taken in node and run order, so nothing depends on which was read first.
pub fn analyze(dir: &Path) -> Result<Analysis, AnalysisError> {
    let experiment = ExperimentDir::new(dir);
    if !experiment.is_experiment() {
        return Err(AnalysisError::NotAnExperiment(dir.to_owned()));
    }
    let mut summary = Summary::empty();
    summary.interrupted = experiment.file(crate::layout::INTERRUPTED_FILE).is_file();
    let mut capacities = Vec::new();
    let mut plan = read_plan(&experiment, &mut summary.warnings);
    // The plan names the experiment even when no stream made it into the folder.
    if let Some(plan) = &plan {
        summary.experiment.clone_from(&plan.experiment);
    }
    // Each node's trial folders, with what the plan expected of each, and the planned trials
    // no folder holds.
    let cost = plan.as_ref().and_then(|p| p.cost.clone());
    let mut listed = Vec::new();
    for node_dir in experiment.nodes()? {
        let (mut planned, traffic) = take_planned(&mut plan, &node_dir.name);
        let trials: Vec<(TrialDir, Option<PlanTrial>)> = node_dir
            .trials_in_run_order()?
            .into_iter()
            .map(|trial_dir| {
                let expected = planned
                    .iter()
                    .position(|t| t.trial == trial_dir.name)
                    .map(|i| planned.remove(i));
                (trial_dir, expected)
            })
            .collect();
        listed.push((node_dir, trials, planned, traffic));
    }
    let analysed: Vec<Vec<Result<TrialAnalysis, AnalysisError>>> = listed
        .par_iter()
        .map(|(_, trials, _, _)| {
            trials
                .par_iter()
                .map(|(trial_dir, expected)| analyze_trial(trial_dir, expected.clone()))
                .collect()
        })
        .collect();
    let mut series = ExperimentSeries::default();
    // Per trial name, in first-seen order: the nodes, their summaries and histograms.
    let mut by_trial: Vec<TrialOnNodes> = Vec::new();
    for ((node_dir, _, planned, traffic), results) in listed.into_iter().zip(analysed) {
        let node = node_dir.name.clone();
        let mut trials = Vec::new();
        let mut searches = Vec::new();
        let mut node_series = NodeSeries {
            node: node.clone(),
            trials: Vec::new(),
            gpu: Vec::new(),
        };
        for result in results {
            let analysed = result?;
            analysed.notes.apply(&mut summary);
            if let Some(trial_series) = analysed.series {
                node_series.trials.push(trial_series);
                node_series.gpu.extend(analysed.gpu);
            }
            let (trial, histograms) = match analysed.folder {
                Folder::Trial(measured) => *measured,
                Folder::Search(search) => {
                    searches.push(search);
                    continue;
                }
            };
            if trial.probe.is_some() {
                // A probe's rate is its node's own: probes are never merged across nodes.
                trials.push(trial);
                continue;
            }
            let at = match by_trial.iter().position(|t| t.name == trial.trial) {
                Some(i) => i,
                None => {
                    by_trial.push(TrialOnNodes {
                        name: trial.trial.clone(),
                        runs: Vec::new(),
                        histograms: TrialHistograms::default(),
                    });
                    by_trial.len() - 1
                }
            };
            by_trial[at].runs.push((node.clone(), trial.clone()));
            by_trial[at].histograms.merge(&histograms);
            trials.push(trial);
        }
        trials.extend(
            planned
                .into_iter()
                .map(|t| missing_trial(t, &node_dir, &mut summary.warnings)),
        );
        compare_with_solo(&mut trials);
        let probes: Vec<ProbeSummary> = trials.iter().filter_map(|t| t.probe.clone()).collect();
        if let Some(mut found) = capacity::node_capacity(&node, &searches, &probes) {
            probes::fit_searches(&mut found, &trials);
            if let Some(cost) = &cost {
                let tokens = probes::output_tokens_per_request(&trials);
                found.cost = Some(capacity::cost::node_cost(&found, cost, &traffic, &tokens));
            }
            capacities.push(found);
        }
        summary.nodes.push(NodeSummary { node, trials });
        node_series.gpu.sort_by_key(|s| (s.at_ns, s.gpu));
        series.nodes.push(node_series);
    }
    if !capacities.is_empty() {
        summary.capacity = Some(CapacitySummary {
            definition: capacity::DEFINITION.into(),
            nodes: capacities,
        });
    }
    let mut unreported: Vec<_> = plan.map(|p| p.nodes).unwrap_or_default();
    unreported.sort_by(|a, b| a.node.cmp(&b.node));
    for planned in unreported {
        let node_dir = experiment.node(&planned.node);
        let trials = planned
            .trials
            .into_iter()
            .map(|t| missing_trial(t, &node_dir, &mut summary.warnings))
            .collect();
        summary.nodes.push(NodeSummary {
            node: planned.node,
            trials,
        });
    }
    summary.across_nodes = by_trial
        .into_iter()
        .filter(|t| t.runs.len() > 1)
        .map(
            |TrialOnNodes {
                 name: trial,
                 runs: nodes,
                 histograms: h,
             }| {
                let tenants = nodes.iter().flat_map(|(_, t)| &t.tenants);
                let completed = tenants.clone().map(|t| t.metrics.completed).sum();
                let failed = tenants.map(|t| t.metrics.failed).sum();
                let rates: Vec<f64> = nodes
                    .iter()
                    .filter_map(|(_, t)| t.aggregate_output_tokens_per_s)
                    .collect();
                CrossNodeTrial {
                    trial,
                    nodes: nodes.iter().map(|(n, _)| n.clone()).collect(),
                    completed,
                    failed,
                    output_tokens_per_s: (!rates.is_empty()).then(|| round3(rates.iter().sum())),
                    ttft_ms: h.ttft.percentiles(),
                    tpot_ms: h.tpot.percentiles(),
                    itl_ms: h.itl.percentiles(),
                    e2e_ms: h.e2e.percentiles(),
                }
            },
        )
        .collect();
    Ok(Analysis { summary, series })
}

/// A planned trial whose folder is not there: every tenant is missing, no figure is made up.
fn missing_trial(
    planned: PlanTrial,
    node_dir: &NodeDir,
    warnings: &mut Vec<String>,
) -> TrialSummary {
    let folder = node_dir.trial(&planned.trial).path;
    let reason = format!(
        "{} does not exist (plan.json lists this trial)",
        folder.display()
    );
    warnings.push(format!("{}: {reason}; no figures", planned.trial));
    TrialSummary {
        trial: planned.trial,
        mode: planned.mode,
        stage: None,
        state: TrialStatus::Missing,
        reason: Some(reason.clone()),
        tenants: Vec::new(),
        aggregate_output_tokens_per_s: None,
        aggregate_total_tokens_per_s: None,
        gpus: Vec::new(),
        colocation_gain: None,
        energy_per_output_token_j: None,
        probe: None,
        missing: planned
            .tenants
            .into_iter()
            .map(|t| MissingStream {
                tenant: t.tenant,
                reason: reason.clone(),
            })
            .collect(),
    }
}

/// What a folder under a node holds: a measured trial, or a capacity search's own lifecycle.
enum Folder {
    Trial(Box<(TrialSummary, TrialHistograms)>),
    Search(SearchRecord),
}

/// One trial folder analysed on its own: what it adds to the summary and the series.
struct TrialAnalysis {
    folder: Folder,
    notes: Notes,
    /// `None` for a capacity search's folders, which the capacity summary shows instead.
    series: Option<TrialSeries>,
    /// The trial's GPU samples, for the node's series.
    gpu: Vec<GpuSample>,
}

/// What a trial folder tells the experiment's summary besides its own figures, applied in
/// node and run order, so the summary is the same however the folders were read.
#[derive(Default)]
struct Notes {
    warnings: Vec<Note>,
    /// The experiment's name, from the last tenant stream's header.
    experiment: Option<String>,
    simulated: bool,
}

/// One warning, as [`Notes`] keeps it until applied.
enum Note {
    /// Added as it is.
    Plain(String),
    /// A fact several trials may state: see [`push_once`].
    Once { trial: String, message: String },
}

impl Notes {
    fn push(&mut self, warning: String) {
        self.warnings.push(Note::Plain(warning));
    }

    fn extend(&mut self, warnings: impl IntoIterator<Item = String>) {
        self.warnings.extend(warnings.into_iter().map(Note::Plain));
    }

    fn once(&mut self, trial: &str, message: &str) {
        self.warnings.push(Note::Once {
            trial: trial.to_owned(),
            message: message.to_owned(),
        });
    }

    fn apply(self, summary: &mut Summary) {
        for note in self.warnings {
            match note {
                Note::Plain(warning) => summary.warnings.push(warning),
                Note::Once { trial, message } => push_once(&mut summary.warnings, &trial, &message),
            }
        }
        if let Some(experiment) = self.experiment {
            summary.experiment = experiment;
        }
        summary.simulated |= self.simulated;
    }
}

/// Analyses one trial folder on its own (its warnings dropped): what the agent reads of a
/// probe it has just run, to choose the next.
pub fn analyze_trial_folder(trial_dir: &TrialDir) -> Result<TrialSummary, AnalysisError> {
    match analyze_trial(trial_dir, None)?.folder {
        Folder::Trial(measured) => Ok(measured.0),
        Folder::Search(search) => Err(AnalysisError::NotATrial {
            folder: trial_dir.path.clone(),
            search: search.search,
        }),
    }
}

/// What a trial's agent stream says: how it ended, and whether it is a capacity search's.
#[derive(Default)]
struct TrialLifecycle {
    state: Option<(TrialStatus, Option<String>)>,
    mode: Option<SharingMode>,
    stage: Option<u32>,
    invalidated: Vec<(String, String)>,
    search: Option<crate::events::SearchEvent>,
    probe: Option<crate::events::ProbeEvent>,
    /// Why a probe was stopped early, when it was.
    stopped_early: Option<String>,
    /// How far a search's engine-time budget was spent, when it ended the search.
    budget_spent: Option<String>,
    started_ns: Option<u64>,
    ended_ns: Option<u64>,
}

fn read_lifecycle(trial_dir: &TrialDir, notes: &mut Notes) -> TrialLifecycle {
    let trial = &trial_dir.name;
    let mut life = TrialLifecycle::default();
    let agent_path = trial_dir.stream(&StreamName::Agent);
    if !agent_path.is_file() {
        notes.push(format!(
            "{}: agent.jsonl is missing; trial state unknown",
            trial_dir.path.display()
        ));
        return life;
    }
    let agent = match read_stream(&agent_path) {
        Ok(agent) => agent,
        Err(e) => {
            notes.push(format!("{e}; trial state unknown"));
            return life;
        }
    };
    notes.extend(agent.warnings);
    life.mode = Some(agent.header.mode);
    life.stage = agent.header.stage;
    // A capacity search's folders repeat the node-wide warnings of its trials; they are
    // counted, not listed, so a line does not grow by every probe's name.
    let capacity_folder = agent
        .events
        .iter()
        .any(|l| matches!(l.event, Event::Search(_) | Event::Probe(_)));
    for line in agent.events {
        match line.event {
            Event::Trial(t) if t.state == TrialState::Started => {
                life.started_ns.get_or_insert(t.at_ns);
            }
            Event::Trial(t) => {
                life.ended_ns = Some(t.at_ns);
                life.state = Some((TrialStatus::from_recorded(t.state), t.reason));
            }
            Event::Warning(w) if capacity_folder => notes.once("capacity probes", &w.message),
            Event::Warning(w) => notes.once(trial, &w.message),
            Event::TenantInvalid(t) => life.invalidated.push((t.tenant, t.reason)),
            Event::Search(s) => life.search = Some(s),
            Event::Probe(p) => life.probe = Some(p),
            Event::ProbeStopped(s) => life.stopped_early = Some(s.reason),
            Event::BudgetSpent(b) => life.budget_spent = Some(b.describe()),
            _ => {}
        }
    }
    life
}

/// Where one engine serves several of a trial's tenants (a base and its LoRA adapters), a
/// note that the engine's own figures (its `/metrics`: server latencies, prefix-cache hits)
/// count all of their requests, and are shown with each of them.
fn shared_engine_note(tenants: &[TenantSummary]) -> Option<String> {
    let mut engines: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for t in tenants {
        let engine = t.served_by.as_deref().unwrap_or(&t.tenant);
        engines.entry(engine).or_default().push(&t.tenant);
    }
    let shared: Vec<String> = engines
        .into_iter()
        .filter(|(_, served)| served.len() > 1)
        .map(|(engine, served)| format!("{engine}'s engine serves {}", served.join(", ")))
        .collect();
    (!shared.is_empty()).then(|| {
        format!(
            "{}; an engine's own figures (server latency, prefix-cache hit rate) count every request it served, and are shown with each of its tenants",
            shared.join("; ")
        )
    })
}

fn analyze_trial(
    trial_dir: &TrialDir,
    planned: Option<PlanTrial>,
) -> Result<TrialAnalysis, AnalysisError> {
    let trial = trial_dir.name.clone();
    let mut notes = Notes::default();
    let life = read_lifecycle(trial_dir, &mut notes);
    let (state, reason) = life.state.unwrap_or((TrialStatus::Incomplete, None));
    let mut mode = life.mode;
    if let Some(s) = life.search {
        let failure = (state != TrialStatus::Finished).then(|| {
            reason
                .clone()
                .unwrap_or_else(|| format!("the search ended {state}"))
        });
        return Ok(TrialAnalysis {
            folder: Folder::Search(SearchRecord {
                search: s.search,
                mode: mode.unwrap_or(SharingMode::Solo),
                tenants: s.tenants,
                policy: s.policy,
                direction: s.direction,
                failure,
                budget_spent: life.budget_spent,
            }),
            notes,
            series: None,
            gpu: Vec::new(),
        });
    }
    let streams = trial_dir.tenant_streams()?;
    let reads: Vec<Result<tenant::TenantRead, ReadError>> = streams
        .par_iter()
        .map(|found| tenant::read_tenant(&found.path, trial_dir, &life.invalidated))
        .collect();
    let mut tenants = Vec::new();
    let mut tenant_series = Vec::new();
    let mut needed: Vec<ProbeNeeds> = Vec::new();
    let mut histograms = TrialHistograms::default();
    let mut merged_window: Option<(u64, u64)> = None;
    let (mut output_tokens, mut total_tokens) = (0u64, 0u64);
    let mut missing = Vec::new();
    for (found, read) in streams.iter().zip(reads) {
        let path = &found.path;
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                notes.push(format!("{e}; stream left out"));
                missing.push(MissingStream {
                    tenant: found.name.tenant().unwrap_or_default().to_owned(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        notes.extend(read.warnings);
        let header = read.header;
        if header.stream != StreamKind::Tenant {
            continue;
        }
        let Some(tenant) = header.tenant else {
            notes.push(format!(
                "{}:1: tenant stream without tenant description; skipped",
                path.display()
            ));
            continue;
        };
        notes.experiment = Some(header.experiment);
        notes.simulated |= header.simulated;
        mode.get_or_insert(header.mode);
        if let Some((_, reason)) = life.invalidated.iter().find(|(t, _)| *t == tenant.name) {
            notes.push(format!("{trial}/{}: {reason}; no figures", tenant.name));
            missing.push(MissingStream {
                tenant: tenant.name,
                reason: format!("{reason} (agent.jsonl)"),
            });
            continue;
        }
        let Some(measured) = read.measured else {
            continue;
        };
        let tenant::Measured {
            requests,
            server: (server, server_warnings),
            answers: (quality, answers, answer_warnings),
        } = measured;
        let acc = requests.acc;
        if let Some(note) = requests.implausible.warning(path) {
            notes.push(note);
        }
        if let Some((start, end)) = acc.window_ns() {
            merged_window =
                Some(merged_window.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
        }
        notes.extend(server_warnings);
        notes.extend(answer_warnings);
        histograms.add(&acc);
        tenant_series.push(TenantSeries {
            tenant: tenant.name.clone(),
            offered_rate: tenant.offered_rate,
            ttft: acc.ttft.clone(),
            tpot: acc.tpot.clone(),
            window_ns: acc.window_ns(),
            timeline: requests.timeline,
            answers,
        });
        let mut metrics = acc.finish();
        metrics.implausible = requests.implausible.count;
        output_tokens += metrics.output_tokens;
        total_tokens += metrics.output_tokens + metrics.prompt_tokens;
        if metrics.completed == 0 {
            notes.push(format!(
                "{trial}/{}: no completed measured request",
                tenant.name
            ));
        }
        needed.push(ProbeNeeds {
            tenant: tenant.name.clone(),
            requests: tenant
                .slo
                .as_ref()
                .map_or(0, |s| s.requests_needed_for_figures()),
            tallies: requests.tallies.finish(),
        });
        let checks = load_checks(&metrics, &tenant);
        for check in &checks {
            notes.push(format!("{trial}/{}: {check}", tenant.name));
        }
        tenants.push(TenantSummary {
            tenant: tenant.name,
            model: tenant.model,
            engine: tenant.engine,
            served_by: tenant.served_by,
            api: tenant.api,
            simulated: header.simulated,
            arrival: tenant.arrival,
            offered_rate: tenant.offered_rate,
            shared_prefixes: tenant.shared_prefixes,
            slo: tenant
                .slo
                .as_ref()
                .map(|s| s.judge(&metrics, requests.good)),
            metrics,
            load_checks: checks,
            slowdown: None,
            server,
            quality,
        });
    }
    for tenant in planned.map(|p| p.tenants).unwrap_or_default() {
        let tenant = tenant.tenant;
        let known = tenants.iter().any(|t: &TenantSummary| t.tenant == tenant)
            || missing.iter().any(|m| m.tenant == tenant);
        if !known {
            let path = trial_dir.stream(&StreamName::Tenant(tenant.clone()));
            let reason = format!(
                "{} does not exist (plan.json lists this tenant)",
                path.display()
            );
            notes.push(format!("{trial}/{tenant}: {reason}; no figures"));
            missing.push(MissingStream { tenant, reason });
        }
    }
    if let Some(note) = shared_engine_note(&tenants) {
        // Once for all the trials, stages and probes that say the same.
        notes.once(&trial, &note);
    }
    let window_s = merged_window.and_then(|(s, e)| (e > s).then(|| (e - s) as f64 / 1e9));
    // The plots show a probe's GPU samples with its search, not on the node's timeline.
    let plotted = life.probe.is_none();
    let samples = gpu_samples(trial_dir, merged_window.is_some(), plotted, &mut notes);
    let gpus = match merged_window {
        Some(window) => gpu::summarize(&samples, window),
        None => Vec::new(),
    };
    let energy: Option<f64> = gpus.iter().map(|g| g.energy_j).sum();
    let energy_per_output_token_j = energy
        .filter(|_| !gpus.is_empty() && output_tokens > 0)
        .map(|j| j / output_tokens as f64);
    let per_s = |tokens: u64| window_s.filter(|_| tokens > 0).map(|w| tokens as f64 / w);
    let probe = life.probe.map(|p| {
        let verdict = if state != TrialStatus::Finished {
            ProbeVerdict::Broken {
                reason: reason
                    .clone()
                    .unwrap_or_else(|| format!("the probe ended {state}")),
            }
        } else if let Some(m) = missing.first() {
            ProbeVerdict::Broken {
                reason: format!("{}: {}", m.tenant, m.reason),
            }
        } else {
            let judged: Vec<capacity::TenantJudgement<'_>> = tenants
                .iter()
                .map(|t: &TenantSummary| {
                    let needs = needed.iter().find(|n| n.tenant == t.tenant);
                    capacity::TenantJudgement {
                        tenant: &t.tenant,
                        completed: t.metrics.completed,
                        needed: needs.map_or(0, |n| n.requests),
                        tallies: needs.map_or(&[], |n| n.tallies.as_slice()),
                        slo: t.slo.as_ref(),
                    }
                })
                .collect();
            match &life.stopped_early {
                Some(why) => capacity::stopped_probe_verdict(why, &judged),
                None => capacity::probe_verdict(&judged),
            }
        };
        // From the start of its wait for empty queues to its end.
        let engine_ms = life
            .ended_ns
            .map(|end| end.saturating_sub(p.at_ns) / 1_000_000 + p.queue_wait_ms.unwrap_or(0));
        ProbeSummary {
            search: p.search,
            probe: p.probe,
            scale: p.scale,
            shares: p.shares,
            queue_wait_ms: p.queue_wait_ms,
            engine_ms,
            verdict,
        }
    });
    let series = plotted.then(|| TrialSeries {
        trial: trial.clone(),
        started_ns: life.started_ns,
        ended_ns: life.ended_ns,
        tenants: tenant_series,
    });
    let summary = TrialSummary {
        trial,
        mode: mode.unwrap_or(SharingMode::Solo),
        stage: life.stage,
        state,
        reason,
        tenants,
        aggregate_output_tokens_per_s: per_s(output_tokens),
        aggregate_total_tokens_per_s: per_s(total_tokens),
        colocation_gain: None,
        gpus,
        energy_per_output_token_j,
        missing,
        probe,
    };
    Ok(TrialAnalysis {
        folder: Folder::Trial(Box::new((summary, histograms))),
        notes,
        series,
        gpu: if plotted { samples } else { Vec::new() },
    })
}

/// The trial's GPU samples, read when the summary needs them (`for_summary`: a measured window
/// to summarise them over, whose stream's problems are warned) or the plots do.
fn gpu_samples(
    trial_dir: &TrialDir,
    for_summary: bool,
    for_plots: bool,
    notes: &mut Notes,
) -> Vec<GpuSample> {
    let path = trial_dir.stream(&StreamName::Gpu);
    if !(for_summary || for_plots) || !path.is_file() {
        return Vec::new();
    }
    match read_stream(&path) {
        Ok(stream) => {
            if for_summary {
                notes.extend(stream.warnings);
            }
            stream
                .events
                .into_iter()
                .filter_map(|l| match l.event {
                    Event::GpuSample(s) => Some(s),
                    _ => None,
                })
                .collect()
        }
        Err(e) => {
            if for_summary {
                notes.push(format!("{e}; no GPU figures for this trial"));
            }
            Vec::new()
        }
    }
}

/// Schedule lag p99 above this means the load generator fell behind its own schedule, when
/// more than one send was that late ([`LATE_SEND_MS`]: below 100 sends, p99 is the worst).
pub const MAX_LAG_P99_MS: f64 = LATE_SEND_MS;
/// Late sends that make a check: one is a hiccup of the machine, not a generator behind.
const MIN_LATE_SENDS: u64 = 2;
/// Sending fewer of the measure phase's scheduled arrivals than this share short means the
/// load generator did not offer the asked load.
pub const MAX_RATE_SHORTFALL: f64 = 0.05;

/// Share of measured requests that may wait for a new connection before it is worth a check.
const MAX_CONNECT_SHARE: f64 = 0.01;
/// Connects beyond a load's growth that are not yet a sign of closed connections, however few
/// requests it sent: a request may go before its connection is back in the pool.
const MAX_SPARE_CONNECTS: f64 = 2.0;

/// The load generator watching itself, and outputs of the wrong length: one message per
/// thing that was not as asked.
fn load_checks(m: &TenantMetrics, tenant: &TenantHeader) -> Vec<String> {
    let mut out = Vec::new();
    // Streams summarised before late sends were counted: p99 alone.
    let late = m.late_sends.unwrap_or(MIN_LATE_SENDS);
    if let Some(lag) = m
        .schedule_lag_ms
        .filter(|l| l.p99 > MAX_LAG_P99_MS && late >= MIN_LATE_SENDS)
    {
        out.push(format!(
            "the load generator fell behind: schedule lag p99 {:.3} ms (bound {MAX_LAG_P99_MS} ms, max {:.3} ms; {late} of {} sends later than {LATE_SEND_MS} ms); latencies are still measured from the actual send",
            lag.p99, lag.max, lag.count
        ));
    }
    if let Some(scheduled) = m.scheduled {
        // Judged against the arrivals actually drawn: a short Poisson phase may hold far
        // fewer than rate × duration, and sending all of them is on schedule. A
        // conversation's arrival is its first turn.
        let (sent, what) = match m.conversations {
            Some(started) => (started, "conversations"),
            None => (m.sent, "requests"),
        };
        if (sent as f64) < scheduled as f64 * (1.0 - MAX_RATE_SHORTFALL) {
            out.push(format!(
                "sent {sent} of the {scheduled} {what} its schedule placed in the measure phase ({:.1}% short; bound {:.0}%)",
                (1.0 - sent as f64 / scheduled as f64) * 100.0,
                MAX_RATE_SHORTFALL * 100.0
            ));
        }
    } else if let (Some(offered), Some(achieved)) = (tenant.offered_rate, m.achieved_rate) {
        // Streams written before the schedule was recorded: only the nominal rate is known.
        if achieved < offered * (1.0 - MAX_RATE_SHORTFALL) {
            out.push(format!(
                "achieved {achieved:.3} requests/s of the {offered:.3}/s offered ({:.1}% short; bound {:.0}%; this stream does not record its schedule, so a short random phase may explain it)",
                (1.0 - achieved / offered) * 100.0,
                MAX_RATE_SHORTFALL * 100.0
            ));
        }
    }
    if let Some(connect) = m
        .connect_ms
        .filter(|c| c.count as f64 > m.sent as f64 * MAX_CONNECT_SHARE)
    {
        let waited = format!(
            "{} of {} measured requests waited for a new connection (connect p50 {:.3} ms, p99 {:.3} ms; recorded in connect_ns, not counted in their TTFT or E2E)",
            connect.count, m.sent, connect.p50, connect.p99
        );
        match m.connections {
            // About as many as the load's growth needed (more in flight than was opened ahead;
            // each connect is outside TTFT): nothing to warn of. A few more come when a request
            // goes before its worker's last connection is back in the pool.
            Some(used)
                if connect.count.saturating_sub(used.growth()) as f64
                    <= (m.sent as f64 * MAX_CONNECT_SHARE).max(MAX_SPARE_CONNECTS) => {}
            Some(used) => out.push(format!(
                "{waited}, more than the {} its requests in flight needed beyond the {} opened before the load (peak {} in flight): the server closed idle connections (vLLM's keep-alive timeout is 5 s)",
                used.growth(), used.preopened, used.peak_in_flight
            )),
            None => out.push(format!(
                "{waited}: the server closed idle connections (vLLM's keep-alive timeout is 5 s) or more requests were in flight than the connections opened before the load"
            )),
        }
    }
    if let Some(&client) = m.errors.get(crate::events::ErrorKind::Client.as_str()) {
        out.push(format!(
            "{client} requests could not be sent for the load generator's own reasons (out of file descriptors or local ports on the agent's machine, or its cap of in-flight requests reached); they count as failed, but they are not the engine's failures: lower the load or raise the agent's open-file limit"
        ));
    }
    if tenant.forced_length && (m.short_outputs > 0 || m.long_outputs > 0) {
        out.push(format!(
            "{} of {} completed requests delivered fewer output tokens than asked and {} more; the server may ignore max_tokens or ignore_eos (per request: max_tokens vs output_tokens in the events)",
            m.short_outputs, m.completed, m.long_outputs
        ));
    }
    out
}

/// One tenant of one trial under a peer's definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantVariant {
    /// Node.
    pub node: String,
    /// Trial.
    pub trial: String,
    /// Tenant.
    pub tenant: String,
    /// The figures, by the peer's names.
    #[serde(flatten)]
    pub metrics: crate::metrics::variants::VariantMetrics,
}

/// Every tenant of every trial of the experiment in `dir`, under `peer`'s definitions, each
/// stream read once, line by line. A stream that cannot be read, and lines that are not
/// events, are left out here without a word: [`analyze`] names them.
pub fn peer_variants(
    dir: &Path,
    peer: crate::metrics::variants::Peer,
) -> Result<Vec<TenantVariant>, AnalysisError> {
    let experiment = ExperimentDir::new(dir);
    if !experiment.is_experiment() {
        return Err(AnalysisError::NotAnExperiment(dir.to_owned()));
    }
    let mut out = Vec::new();
    for node_dir in experiment.nodes()? {
        for trial_dir in node_dir.trials_in_run_order()? {
            for found in trial_dir.tenant_streams()? {
                let Ok(reader) = StreamReader::open(&found.path) else {
                    continue;
                };
                let Some(tenant) = reader.header().tenant.as_ref().map(|t| t.name.clone()) else {
                    continue;
                };
                let mut fold = crate::metrics::variants::VariantFold::new(peer);
                for line in reader {
                    if let Event::Request(r) = &line.event {
                        fold.request(r);
                    }
                }
                out.push(TenantVariant {
                    node: node_dir.name.clone(),
                    trial: trial_dir.name.clone(),
                    tenant,
                    metrics: fold.finish(),
                });
            }
        }
    }
    Ok(out)
}

/// Fills slowdown and co-location gain of every shared trial from the node's solo trials (of
/// the same sweep stage). Only solo trials that finished count as baselines.
fn compare_with_solo(trials: &mut [TrialSummary]) {
    let solos: Vec<(Option<u32>, TenantSummary)> = trials
        .iter()
        .filter(|t| t.mode == SharingMode::Solo && t.state.is_finished() && t.probe.is_none())
        .filter_map(|t| Some((t.stage, t.tenants.first()?.clone())))
        .collect();
    for trial in trials
        .iter_mut()
        .filter(|t| t.mode != SharingMode::Solo && t.probe.is_none())
    {
        let mut solo_throughputs = Vec::new();
        for tenant in &mut trial.tenants {
            let solo = solos
                .iter()
                .find(|(stage, s)| *stage == trial.stage && s.tenant == tenant.tenant)
                .map(|(_, s)| s);
            tenant.slowdown = solo.map(|s| Slowdown::between(&tenant.metrics, &s.metrics));
            solo_throughputs.push(
                solo.and_then(|s| s.metrics.throughput)
                    .map(|t| t.output_tokens_per_s),
            );
        }
        trial.colocation_gain =
            colocation_gain(trial.aggregate_output_tokens_per_s, &solo_throughputs);
    }
}

/// Adds `trial: message`, or, when another trial said the same, adds `trial` to its list, so a
/// node-wide fact (no NVML, say) is printed once.
fn push_once(warnings: &mut Vec<String>, trial: &str, message: &str) {
    let suffix = format!(": {message}");
    match warnings.iter_mut().find(|w| w.ends_with(&suffix)) {
        Some(existing)
            if existing[..existing.len() - suffix.len()]
                .split(", ")
                .any(|t| t == trial) => {}
        Some(existing) => {
            let trials = &existing[..existing.len() - suffix.len()];
            *existing = format!("{trials}, {trial}{suffix}");
        }
        None => warnings.push(format!("{trial}{suffix}")),
    }
}

/// The plan in the folder: `None` when there is none (nothing to check against); an
/// unreadable one is warned and treated as none.
fn read_plan(experiment: &ExperimentDir, warnings: &mut Vec<String>) -> Option<Plan> {
    let path = experiment.file(crate::layout::PLAN_FILE);
    if !path.is_file() {
        return None;
    }
    match Plan::read(&path) {
        Ok(plan) => Some(plan),
        Err(_) => {
            warnings.push(format!(
                "{}: not a plan this version reads; missing trials and streams are not checked",
                path.display()
            ));
            None
        }
    }
}

/// Takes node `node`'s planned trials out of `plan`, so that the nodes left over are the
/// planned nodes that never reported.
fn take_planned(plan: &mut Option<Plan>, node: &str) -> (Vec<PlanTrial>, BTreeMap<String, f64>) {
    let Some(plan) = plan else {
        return Default::default();
    };
    match plan.nodes.iter().position(|n| n.node == node) {
        Some(i) => {
            let planned = plan.nodes.remove(i);
            (planned.trials, planned.traffic)
        }
        None => Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::completed;
    use crate::events::Phase;
    use crate::metrics::TenantAccumulator;

    fn poisson_tenant() -> TenantHeader {
        TenantHeader {
            name: "t".into(),
            model: "m".into(),
            engine: "simulated".into(),
            served_by: None,
            workload: "w".into(),
            api: Api::Chat,
            arrival: "poisson 2/s".into(),
            offered_rate: Some(2.0),
            streaming: true,
            forced_length: false,
            slo: None,
            planned_ms: None,
            shared_prefixes: None,
        }
    }

    /// Three sends in a 2 s measure phase of a nominal 2/s: 1.5/s achieved.
    fn three_sends(scheduled: Option<u64>) -> TenantMetrics {
        let mut acc = TenantAccumulator::default();
        acc.phase(Phase::Measure, 0);
        for sent_ms in [100, 700, 1500] {
            acc.request(&completed(sent_ms, 10, 5, 4));
        }
        acc.phase(Phase::Drain, 2_000_000_000);
        if let Some(arrivals) = scheduled {
            acc.scheduled(arrivals);
        }
        acc.finish()
    }

    #[test]
    fn one_late_send_among_few_is_a_hiccup_and_two_are_a_generator_behind() {
        // 30 sends, as a 3 s trial at 10/s: p99 is the worst of them.
        let mut acc = TenantAccumulator::default();
        acc.phase(Phase::Measure, 0);
        let late = |sent_ms: u64, lag_us: u64| {
            let mut r = completed(sent_ms, 10, 5, 4);
            r.scheduled_ns -= lag_us * 1_000;
            r
        };
        for i in 0..29 {
            acc.request(&late((i + 1) * 100, 50));
        }
        acc.request(&late(2_900, 4_900));
        let one = acc.finish();
        assert_eq!(one.late_sends, Some(1));
        assert!(one.schedule_lag_ms.is_some_and(|l| l.p99 > MAX_LAG_P99_MS));
        assert!(load_checks(&one, &poisson_tenant()).is_empty());
        acc.request(&late(3_000, 1_200));
        let two = acc.finish();
        assert_eq!(two.late_sends, Some(2));
        let checks = load_checks(&two, &poisson_tenant());
        assert!(
            checks
                .iter()
                .any(|c| c.starts_with("the load generator fell behind")
                    && c.contains("2 of 31 sends later than 1 ms")),
            "{checks:?}"
        );
    }

    #[test]
    fn requests_waiting_for_connections_are_a_check_past_one_percent() {
        let mut acc = TenantAccumulator::default();
        acc.phase(Phase::Measure, 0);
        for i in 0..200 {
            let mut r = completed(i * 10, 10, 5, 4);
            if i < 2 {
                r.connect_ns = Some(1_000_000);
            }
            acc.request(&r);
        }
        // 2 of 200 is 1%: not past it.
        assert!(load_checks(&acc.finish(), &poisson_tenant()).is_empty());
        let mut r = completed(5_000, 10, 5, 4);
        r.connect_ns = Some(3_000_000);
        acc.request(&r);
        let checks = load_checks(&acc.finish(), &poisson_tenant());
        assert!(
            checks
                .iter()
                .any(|c| c.starts_with("3 of 201 measured requests waited for a new connection")),
            "{checks:?}"
        );
        // A load that grew from 10 connections opened ahead to 13 in flight needed those 3.
        acc.connections(crate::events::ConnectionUse {
            preopened: 10,
            peak_in_flight: 13,
        });
        let checks = load_checks(&acc.finish(), &poisson_tenant());
        assert!(checks.is_empty(), "{checks:?}");
        // To 11: two connects beyond the one the growth needed are connections not yet back in
        // the pool; four beyond it are connections the server closed.
        acc.connections(crate::events::ConnectionUse {
            preopened: 10,
            peak_in_flight: 11,
        });
        let checks = load_checks(&acc.finish(), &poisson_tenant());
        assert!(checks.is_empty(), "{checks:?}");
        for _ in 0..2 {
            let mut r = completed(6_000, 10, 5, 4);
            r.connect_ns = Some(3_000_000);
            acc.request(&r);
        }
        let checks = load_checks(&acc.finish(), &poisson_tenant());
        assert!(
            checks.iter().any(|c| c.starts_with("5 of 203 measured requests") && c.ends_with(
                "more than the 1 its requests in flight needed beyond the 10 opened before the load (peak 11 in flight): the server closed idle connections (vLLM's keep-alive timeout is 5 s)"
            )),
            "{checks:?}"
        );
    }

    #[test]
    fn the_achieved_rate_is_judged_against_the_arrivals_the_schedule_drew() {
        // The random schedule drew three arrivals and all three went out: on schedule,
        // though 25% under the nominal rate.
        let on_time = load_checks(&three_sends(Some(3)), &poisson_tenant());
        assert!(on_time.is_empty(), "{on_time:?}");
        let short = load_checks(&three_sends(Some(10)), &poisson_tenant());
        assert!(
            short
                .iter()
                .any(|c| c.contains("sent 3 of the 10 requests") && c.contains("70.0% short")),
            "{short:?}"
        );
        // An older stream without the count: only the nominal rate, and it says so.
        let nominal = load_checks(&three_sends(None), &poisson_tenant());
        assert!(
            nominal
                .iter()
                .any(|c| c.contains("achieved 1.500 requests/s of the 2.000/s")
                    && c.contains("does not record its schedule")),
            "{nominal:?}"
        );
    }
}
