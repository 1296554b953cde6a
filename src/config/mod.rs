//! The experiment configuration: YAML text in, a validated [`Experiment`] out.
//!
//! Parsing is strict: unknown keys are errors. Validation reports every problem at once, each
//! with its YAML path (`nodes[0].tenants[1].port`), so a user fixes a file in one pass.
//! [`Experiment`] holds only checked values; code that takes one needs no further checks.

pub mod accelerators;
mod capacity;
mod cost;
mod error;
mod launcher;
pub mod memory_fit;
#[cfg(test)]
mod properties;
mod raw;
mod validate;
mod validate_adapter;
pub use validate::MAX_CONFIG_BYTES;

/// Most requests the load generator keeps in flight for one tenant. A closed loop may ask for
/// no more; an open loop whose server falls this far behind does not send the arrivals past
/// it, and records each as a `client` error, so a stuck server cannot grow the agent without
/// bound.
pub const MAX_IN_FLIGHT: u32 = 100_000;
mod validate_capacity;
mod validate_conversation;
mod validate_embeddings;
mod validate_launcher;
mod validate_trace;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use capacity::{
    configured_rate, open_loop_rate, probe_trial_name, rescalable, with_rate, Capacity, Direction,
    Search, SearchUntil,
};
pub use cost::{Cost, HOURS_PER_MONTH};
pub use error::{ConfigError, Problem};
pub use launcher::{
    AgentAddress, AgentInstall, Launcher, LauncherKind, OnNodeFailure, Platform, SkyPilotSettings,
    StaticAgent, UserCa, DEFAULT_LEASE, DEFAULT_VLLM_VERSION, NODE_VLLM_VENV,
};

/// A validated experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Name, used in folder names; `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// Where experiment folders are created.
    pub output_dir: PathBuf,
    /// Seed of every random choice (arrivals, prompts, simulated timing).
    pub seed: u64,
    /// How nodes are brought up, reached and torn down.
    pub launcher: Launcher,
    /// Workloads by name.
    pub workloads: BTreeMap<String, Workload>,
    /// Nodes, in file order.
    pub nodes: Vec<Node>,
    /// The SLO capacity search, when the config asks for one (`capacity:`).
    pub capacity: Option<Capacity>,
    /// What a GPU-hour costs, to price the capacities (`cost:`).
    pub cost: Option<Cost>,
}

/// Which OpenAI API a workload calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `/v1/chat/completions`.
    #[default]
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`: one forward pass over the prompt, answered whole. Its requests have
    /// latency (end to end), requests/s and input tokens/s; no TTFT, TPOT or ITL (schema 1.5).
    Embeddings,
}

impl Api {
    /// The name a config and the outputs use.
    pub fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
        }
    }

    /// Whether the API generates tokens (and so has output lengths, TTFT, TPOT and ITL).
    pub fn generates(self) -> bool {
        !matches!(self, Api::Embeddings)
    }
}

/// How load is generated for a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// API called.
    pub api: Api,
    /// Whether responses stream (SSE); without streaming there is no TTFT, TPOT or ITL.
    pub stream: bool,
    /// When requests are sent: one arrival process, or a sweep of stages.
    pub arrival: ArrivalPlan,
    /// Where prompts come from, and their lengths.
    pub data: DataSource,
    /// The model's `tokenizer.json` (`data.tokenizer`): synthetic prompts get exactly the
    /// asked token count and ShareGPT answers are measured in tokens. Without it, a synthetic
    /// length is in words and the true count is the server's `usage`.
    pub tokenizer: Option<PathBuf>,
    /// Time from start during which requests are sent but not measured.
    pub warmup: Duration,
    /// Length of the measured phase.
    pub duration: Duration,
    /// Stop sending after this many requests (warmup included), if reached before `duration`.
    pub max_requests: Option<u64>,
    /// How long in-flight requests may run on after the last send before they are cancelled.
    pub drain_timeout: Duration,
    /// Ask the engine to ignore end-of-sequence so the asked output length is delivered.
    pub ignore_eos: bool,
    /// Extra fields put into every request body as given (`temperature`, `top_p`,
    /// engine-specific ones such as vLLM's `min_tokens`).
    pub request_fields: serde_json::Map<String, serde_json::Value>,
    /// The SLO its tenants are judged by: the workload's own `slo:`, else the experiment's.
    pub slo: crate::slo::Slo,
    /// How many requests per tenant and trial keep their response text (in the prompts
    /// stream), for reading answers side by side and scoring them against a dataset's
    /// expected outputs: those whose prompt is one of the dataset's first `keep_responses`
    /// entries (file order), or for synthetic prompts the first `keep_responses` requests.
    pub keep_responses: u32,
}

/// An arrival process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Evenly spaced sends at `rate` per second (open loop).
    Constant {
        /// Requests per second, > 0.
        rate: f64,
    },
    /// Exponential gaps with mean `1/rate` (open loop).
    Poisson {
        /// Requests per second, > 0.
        rate: f64,
    },
    /// Gamma-distributed gaps with mean `1/rate` and coefficient of variation `cv` (open
    /// loop): `cv` 1 is Poisson, above 1 burstier, below 1 more regular. vLLM's and AIPerf's
    /// `burstiness` is the gamma shape, `1 / cv²`.
    Gamma {
        /// Requests per second, > 0.
        rate: f64,
        /// Coefficient of variation of the gaps, in 0.01..=100.
        cv: f64,
    },
    /// `n` requests always in flight (closed loop).
    Concurrency {
        /// Concurrent requests, ≥ 1.
        n: u32,
    },
    /// A rate that rises (or falls) linearly from `from` to `to` over the measured phase;
    /// warmup runs at `from` (open loop).
    Ramp {
        /// Rate at the start of the measured phase, > 0.
        from: f64,
        /// Rate at its end, > 0.
        to: f64,
        /// How arrivals are placed along the rate curve.
        spacing: Spacing,
    },
    /// Each request at its time in a recorded trace (the workload's data is then
    /// [`DataSource::Trace`], which also gives each request's lengths), divided by
    /// `time_scale` (open loop).
    Trace {
        /// 10 replays the trace ten times faster; > 0.
        time_scale: f64,
    },
}

/// How the arrivals of a time-varying rate are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// Deterministic: the k-th arrival where the expected count reaches k.
    Constant,
    /// A Poisson process with the varying rate.
    Poisson,
}

impl Arrival {
    /// The rate the process offers, for open-loop processes (a ramp's mean rate).
    pub fn offered_rate(&self) -> Option<f64> {
        match *self {
            Arrival::Constant { rate }
            | Arrival::Poisson { rate }
            | Arrival::Gamma { rate, .. } => Some(rate),
            Arrival::Ramp { from, to, .. } => Some((from + to) / 2.0),
            // A trace's rate is its records' (per tenant, known once they are read).
            Arrival::Concurrency { .. } | Arrival::Trace { .. } => None,
        }
    }

    /// Short name, as written into event headers.
    pub fn describe(&self) -> String {
        match *self {
            Arrival::Constant { rate } => format!("constant {rate}/s"),
            Arrival::Poisson { rate } => format!("poisson {rate}/s"),
            Arrival::Gamma { rate, cv } => format!("gamma {rate}/s cv {cv}"),
            Arrival::Concurrency { n } => format!("concurrency {n}"),
            Arrival::Ramp { from, to, spacing } => {
                let spacing = match spacing {
                    Spacing::Constant => "constant",
                    Spacing::Poisson => "poisson",
                };
                format!("ramp {from}/s to {to}/s ({spacing})")
            }
            Arrival::Trace { time_scale } => format!("trace replay ×{time_scale}"),
        }
    }
}

/// A workload's arrivals: one process for the whole trial, or a sweep of stages, each run as
/// a trial of its own (named `<trial>.s<k>`) so that every stage has its own measure phase,
/// summary and solo baseline.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrivalPlan {
    /// One process.
    Single(Arrival),
    /// The given processes, one per stage, in order.
    Stages(Vec<Arrival>),
    /// GuideLLM-style: a synchronous stage (one request at a time), a throughput stage
    /// (`max_concurrency` in flight), then `steps` rates evenly spaced between the two
    /// stages' measured request rates.
    Auto(AutoSweep),
}

/// Settings of an automatic sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoSweep {
    /// Rate stages between the synchronous and the throughput rate, ≥ 1.
    pub steps: u32,
    /// Spacing of the rate stages' arrivals.
    pub spacing: Spacing,
    /// Requests in flight in the throughput stage.
    pub max_concurrency: u32,
}

/// What one stage of a plan runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StageArrival {
    /// A known process.
    Fixed(Arrival),
    /// Rate stage `step` (1-based) of an automatic sweep: its rate is known only once the
    /// synchronous and throughput stages have run.
    AutoRate {
        /// 1..=steps.
        step: u32,
        /// The sweep.
        sweep: AutoSweep,
    },
}

impl StageArrival {
    /// Short name, as written into plans.
    pub fn describe(&self) -> String {
        match self {
            StageArrival::Fixed(a) => a.describe(),
            StageArrival::AutoRate { step, sweep } => format!(
                "rate stage {step} of {}, set from the synchronous and throughput stages",
                sweep.steps
            ),
        }
    }
}

impl AutoSweep {
    /// The rate of rate stage `step`, given the measured synchronous and throughput request
    /// rates: evenly spaced strictly between them.
    pub fn rate(&self, step: u32, sync_rate: f64, max_rate: f64) -> f64 {
        sync_rate + (max_rate - sync_rate) * f64::from(step) / f64::from(self.steps + 1)
    }

    /// The process of rate stage `step` at `rate`.
    pub fn arrival(&self, rate: f64) -> Arrival {
        match self.spacing {
            Spacing::Constant => Arrival::Constant { rate },
            Spacing::Poisson => Arrival::Poisson { rate },
        }
    }
}

impl ArrivalPlan {
    /// Number of stages of a sweep; `None` for a single process.
    pub fn stage_count(&self) -> Option<usize> {
        match self {
            ArrivalPlan::Single(_) => None,
            ArrivalPlan::Stages(stages) => Some(stages.len()),
            ArrivalPlan::Auto(auto) => Some(auto.steps as usize + 2),
        }
    }

    /// What `stage` runs; a single process runs in every stage, and no stage is the first.
    pub fn stage(&self, stage: Option<Stage>) -> StageArrival {
        let index = stage.map(Stage::index);
        match (self, index) {
            (ArrivalPlan::Single(a), _) => StageArrival::Fixed(*a),
            (ArrivalPlan::Stages(stages), i) => {
                StageArrival::Fixed(stages[i.unwrap_or(0).min(stages.len() - 1)])
            }
            (ArrivalPlan::Auto(auto), i) => match i.unwrap_or(0) {
                0 => StageArrival::Fixed(Arrival::Concurrency { n: 1 }),
                1 => StageArrival::Fixed(Arrival::Concurrency {
                    n: auto.max_concurrency,
                }),
                k => StageArrival::AutoRate {
                    step: u32::try_from(k - 1).unwrap_or(u32::MAX),
                    sweep: *auto,
                },
            },
        }
    }
}

/// Where a workload's prompts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// Generated prompts with drawn lengths.
    Synthetic(SyntheticData),
    /// Prompts from a file.
    Dataset(DatasetData),
    /// Each request's prompt and output length from a trace, sent at the trace's times
    /// ([`Arrival::Trace`]); prompts that share a `hash_ids` block share its text.
    Trace(TraceData),
    /// Multi-turn conversations: each arrival starts one, whose turns carry its history.
    Conversation(ConversationData),
}

impl DataSource {
    /// Why this data's prompts share text an engine's prefix cache can serve, when they do
    /// (the default, synthetic and dataset prompts, are unique to their request).
    pub fn shared_prefixes(&self) -> Option<String> {
        match self {
            DataSource::Synthetic(_) | DataSource::Dataset(_) => None,
            DataSource::Trace(t) => matches!(
                t.format,
                crate::trace::TraceFormat::Mooncake | crate::trace::TraceFormat::Jsonl
            )
            .then(|| {
                "records that share hash_ids blocks share their text: an engine's prefix cache serves what the trace reused".into()
            }),
            DataSource::Conversation(c) => {
                let system = match c.shared_system_prompt_tokens {
                    0 => String::new(),
                    n => format!(", after a {n}-token system prompt every conversation shares"),
                };
                Some(format!(
                    "conversations of {} turns carry their history{system}: an engine's prefix cache serves part of each later turn",
                    c.turns.describe()
                ))
            }
        }
    }
}

/// Most turns one conversation may have.
pub const MAX_TURNS: u32 = 64;

/// Multi-turn conversations (`data: {kind: conversation, ...}`). Turn 1 is sent at the
/// conversation's arrival; turn k+1 is sent `think_time` after turn k's answer ended, with the
/// whole history (the system prompt, every earlier question and the answers as received)
/// before its new question. A turn that fails ends its conversation: there is no answer to
/// carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConversationData {
    /// Turns per conversation, drawn per conversation in `1..=MAX_TURNS`.
    pub turns: LengthDist,
    /// Pause between an answer and the next question.
    pub think_time: ThinkTime,
    /// Length of a system prompt every conversation of the tenant begins with; 0: none.
    pub shared_system_prompt_tokens: u32,
    /// Length of each new question.
    pub prompt_tokens: LengthDist,
    /// Requested answer length of each turn (`max_tokens`).
    pub output_tokens: LengthDist,
}

/// A user's pause between an answer and their next question.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThinkTime {
    /// Always the same.
    Fixed(Duration),
    /// Uniform over `[min, max]`.
    Uniform {
        /// Shortest pause.
        min: Duration,
        /// Longest pause.
        max: Duration,
    },
    /// Exponential with this mean (memoryless users).
    Exponential {
        /// Mean pause.
        mean: Duration,
    },
}

impl ThinkTime {
    /// The longest pause it can draw, for bounding a conversation's length; an exponential
    /// is bounded at ten means, where it is cut.
    pub fn max(&self) -> Duration {
        match *self {
            ThinkTime::Fixed(d) => d,
            ThinkTime::Uniform { max, .. } => max,
            ThinkTime::Exponential { mean } => mean * EXPONENTIAL_THINK_CUT,
        }
    }
}

/// An exponential think time is cut at this many means, so no pause outlasts a run by
/// chance.
pub const EXPONENTIAL_THINK_CUT: u32 = 10;

/// A trace a workload replays (`arrival: {kind: trace, ...}`).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceData {
    /// The file's format.
    pub format: crate::trace::TraceFormat,
    /// The file: absolute, or relative to the config file's folder when read with
    /// [`Experiment::load`].
    pub path: PathBuf,
    /// The part of it replayed, and the column its tenant map routes by.
    pub window: crate::trace::TraceWindow,
    /// How its records are shared among the workload's tenants; `None`: each tenant
    /// replays every record.
    pub tenant_map: Option<crate::trace::TenantMap>,
}

/// Prompts from a ShareGPT or JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetData {
    /// The file's format.
    pub format: crate::dataset::DatasetFormat,
    /// The file: absolute, or relative to the config file's folder when read with
    /// [`Experiment::load`].
    pub path: PathBuf,
    /// Output length for entries that do not give one (JSONL `output_tokens`); without it,
    /// a ShareGPT entry asks for as many tokens as its reference answer has words.
    pub output_tokens: Option<LengthDist>,
}

/// The named synthetic profiles: (name, prompt tokens, output tokens), as used in the field.
pub const PROFILES: [(&str, u32, u32); 4] = [
    ("chat", 512, 256),
    ("rag", 4096, 512),
    ("summarization", 1024, 256),
    ("codegen", 512, 512),
];

/// Synthetic prompts: lengths in tokens drawn per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticData {
    /// Prompt length.
    pub prompt_tokens: LengthDist,
    /// Requested output length (`max_tokens`).
    pub output_tokens: LengthDist,
}

/// A distribution of token counts; every draw lies in `[1, 1_000_000]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LengthDist {
    /// Always the same.
    Fixed(u32),
    /// Normal, rounded and clamped to `[min, max]`.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation, ≥ 0.
        stddev: f64,
        /// Lower clamp.
        min: u32,
        /// Upper clamp.
        max: u32,
    },
    /// Uniform over `[min, max]`.
    Uniform {
        /// Smallest value.
        min: u32,
        /// Largest value.
        max: u32,
    },
}

impl LengthDist {
    /// The distribution in a few words: `4`, `2..=6`, `~4 (sd 1, 2..=6)`.
    pub fn describe(&self) -> String {
        match *self {
            LengthDist::Fixed(n) => n.to_string(),
            LengthDist::Uniform { min, max } => format!("{min}..={max}"),
            LengthDist::Normal {
                mean,
                stddev,
                min,
                max,
            } => format!("~{mean} (sd {stddev}, {min}..={max})"),
        }
    }

    /// The largest value it can draw.
    pub fn max(&self) -> u32 {
        match *self {
            LengthDist::Fixed(n) => n,
            LengthDist::Uniform { max, .. } | LengthDist::Normal { max, .. } => max,
        }
    }
}

/// One node: a machine with one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// SkyPilot accelerator spec (e.g. `H100:1`); unused by the local launcher.
    pub accelerators: Option<String>,
    /// Bytes of memory of one GPU of the node, where its `gpu_memory` or its accelerator's
    /// table says; NVML's figure comes first on the node itself.
    pub gpu_memory_bytes: Option<u64>,
    /// Trials in the order they run.
    pub trials: Vec<TrialKind>,
    /// How simulated tenants on this node's one simulated GPU slow each other down.
    pub sim_gpu: SimGpu,
    /// MPS daemon settings for `mps` trials.
    pub mps: MpsSettings,
    /// Tenants, in file order (also the order engines start in).
    pub tenants: Vec<Tenant>,
}

/// What a `trials:` entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialKind {
    /// Each tenant alone on the GPU, one trial per tenant, for slowdown baselines.
    Solo,
    /// All tenants at once under MPS.
    Mps,
    /// All tenants at once under default CUDA time-slicing.
    Timeslice,
    /// All engines resident, loaded one tenant at a time.
    Exclusive,
}

/// How tenants share the GPU during one trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharingMode {
    /// One tenant alone.
    Solo,
    /// NVIDIA MPS: kernels of several processes run at once.
    Mps,
    /// Time-slicing: the GPU switches between processes.
    Timeslice,
    /// Every engine resident on the GPU, but load goes to one tenant at a time: what sharing
    /// memory costs without sharing compute.
    Exclusive,
}

impl SharingMode {
    /// The name used in configs and outputs.
    pub fn name(self) -> &'static str {
        match self {
            SharingMode::Solo => "solo",
            SharingMode::Mps => "mps",
            SharingMode::Timeslice => "timeslice",
            SharingMode::Exclusive => "exclusive",
        }
    }
}

/// One trial as it will run: a name (its folder), a mode and the tenants in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// Folder name: `solo-<tenant>`, `mps`, `timeslice` or `exclusive`, with `.s<k>` after it
    /// for stage k (1-based) of a sweep.
    pub name: String,
    /// How the tenants share the GPU.
    pub mode: SharingMode,
    /// Indices into [`Node::tenants`].
    pub tenants: Vec<usize>,
    /// The sweep stage this trial runs, when a tenant's workload sweeps.
    pub stage: Option<Stage>,
}

/// A stage of a sweep, counted from 1 everywhere: trial names (`mps.s2`), stream headers and
/// summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stage(u32);

impl Stage {
    /// Stage `number` (1-based); `None` for 0.
    pub fn new(number: u32) -> Option<Self> {
        (number >= 1).then_some(Self(number))
    }

    /// Its number, from 1.
    pub fn number(self) -> u32 {
        self.0
    }

    /// Its position in a list of stages, from 0.
    pub fn index(self) -> usize {
        self.0 as usize - 1
    }
}

impl Node {
    /// The trials this node runs, in order, with `solo` expanded to one trial per tenant and,
    /// when the tenants' workloads sweep (validation makes their stage counts agree), every
    /// trial expanded to one per stage.
    pub fn trials(&self, workloads: &BTreeMap<String, Workload>) -> Vec<Trial> {
        let stages = self
            .tenants
            .iter()
            .filter_map(|t| workloads.get(&t.workload)?.arrival.stage_count())
            .max();
        let Some(stages) = stages else {
            return self.unstaged_trials();
        };
        self.unstaged_trials()
            .into_iter()
            .flat_map(|trial| {
                (1..=stages).map(move |k| {
                    let stage = Stage::new(u32::try_from(k).unwrap_or(u32::MAX));
                    Trial {
                        name: format!("{}.s{k}", trial.name),
                        stage,
                        ..trial.clone()
                    }
                })
            })
            .collect()
    }

    /// The index of the tenant whose engine serves tenant `index`: its base, for an adapter;
    /// itself otherwise.
    pub fn host_of(&self, index: usize) -> usize {
        let tenant = &self.tenants[index];
        tenant
            .engine
            .base()
            .and_then(|base| self.tenants.iter().position(|t| t.name == base))
            .unwrap_or(index)
    }

    /// The tenants whose engines run in `trial`, in node order: its tenants with an engine of
    /// their own, and the base of each adapter in it (started even when the base itself sends
    /// nothing in the trial).
    pub fn trial_engines(&self, trial: &Trial) -> Vec<usize> {
        let mut hosts: Vec<usize> = trial.tenants.iter().map(|&i| self.host_of(i)).collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }

    /// The adapter tenants that tenant `base`'s engine serves: all of the node's, whatever
    /// the trial, so that the engine is the same alone and shared.
    pub fn adapters_of(&self, base: usize) -> Vec<&Tenant> {
        let name = &self.tenants[base].name;
        self.tenants
            .iter()
            .filter(|t| t.engine.base() == Some(name.as_str()))
            .collect()
    }

    fn unstaged_trials(&self) -> Vec<Trial> {
        let mut out = Vec::new();
        for kind in &self.trials {
            match kind {
                TrialKind::Solo => {
                    out.extend(self.tenants.iter().enumerate().map(|(i, t)| Trial {
                        name: format!("solo-{}", t.name),
                        mode: SharingMode::Solo,
                        tenants: vec![i],
                        stage: None,
                    }))
                }
                TrialKind::Mps => out.push(Trial {
                    name: "mps".into(),
                    mode: SharingMode::Mps,
                    tenants: (0..self.tenants.len()).collect(),
                    stage: None,
                }),
                TrialKind::Timeslice => out.push(Trial {
                    name: "timeslice".into(),
                    mode: SharingMode::Timeslice,
                    tenants: (0..self.tenants.len()).collect(),
                    stage: None,
                }),
                TrialKind::Exclusive => out.push(Trial {
                    name: "exclusive".into(),
                    mode: SharingMode::Exclusive,
                    tenants: (0..self.tenants.len()).collect(),
                    stage: None,
                }),
            }
        }
        out
    }
}

/// The simulated GPU's interference model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimGpu {
    /// Under MPS, each other busy tenant stretches a step by this fraction.
    pub mps_interference: f64,
}

/// One tenant: a model behind an engine, with a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Unique name on the node; the stream file is `<name>.jsonl`.
    pub name: String,
    /// The engine serving it.
    pub engine: Engine,
    /// Name of its workload in [`Experiment::workloads`].
    pub workload: String,
    /// Loopback port for engines the agent starts; `None` picks a free one.
    pub port: Option<u16>,
    /// Under MPS: the share of SMs this tenant's kernels may use (1–100), set as
    /// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`.
    pub mps_thread_percentage: Option<u32>,
    /// Under MPS: its device memory cap, `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` syntax (`0=16G`).
    pub mps_pinned_memory_limit: Option<String>,
}

/// Settings of a node's MPS daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MpsSettings {
    /// `set_default_active_thread_percentage`, issued before the first client.
    pub default_active_thread_percentage: Option<u32>,
}

/// An engine serving one tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum Engine {
    /// The built-in simulated engine, run by the agent.
    Simulated {
        /// Model name it answers to.
        model: String,
        /// Its timing model.
        timing: SimTiming,
        /// Faults it injects, for testing the measuring side.
        faults: SimFaults,
    },
    /// A `vllm serve` process the agent starts, supervises and stops.
    Vllm(VllmEngine),
    /// A LoRA adapter served by another tenant's engine: the third way of sharing a GPU, one
    /// engine multiplexing adapters.
    Adapter(AdapterEngine),
    /// An OpenAI-compatible server that is already running.
    External {
        /// Base URL, e.g. `http://127.0.0.1:8000`.
        url: String,
        /// Model name sent in requests.
        model: String,
        /// Environment variable holding the API key, if one is needed.
        api_key_env: Option<String>,
    },
}

impl Engine {
    /// The model name requests carry.
    pub fn model(&self) -> &str {
        match self {
            Engine::Simulated { model, .. } | Engine::External { model, .. } => model,
            Engine::Vllm(v) => &v.served_model_name,
            Engine::Adapter(a) => &a.model,
        }
    }

    /// Whether the engine's tokens are simulated (an adapter's, when its base's are).
    pub fn is_simulated(&self) -> bool {
        match self {
            Engine::Simulated { .. } => true,
            Engine::Adapter(a) => a.simulated,
            Engine::Vllm(_) | Engine::External { .. } => false,
        }
    }

    /// The base tenant whose engine serves this one, for an adapter; `None` for a tenant with
    /// an engine of its own.
    pub fn base(&self) -> Option<&str> {
        match self {
            Engine::Adapter(a) => Some(&a.of),
            _ => None,
        }
    }

    /// Every engine kind, as written in configs: what an agent can run.
    pub const KINDS: [&'static str; 4] = ["simulated", "vllm", "external", "adapter"];

    /// Engine kind as written in configs and event headers.
    pub fn kind(&self) -> &'static str {
        match self {
            Engine::Simulated { .. } => "simulated",
            Engine::Vllm(_) => "vllm",
            Engine::External { .. } => "external",
            Engine::Adapter(_) => "adapter",
        }
    }
}

/// A LoRA adapter tenant: requests carry the adapter's name to its base tenant's engine, which
/// the agent starts with every adapter of the node loaded (vLLM: `--enable-lora --lora-modules
/// name=path`), alone and shared alike, so the base engine is the same in every trial.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterEngine {
    /// The tenant (on the same node, with a vllm or simulated engine) whose engine serves it.
    pub of: String,
    /// What the engine loads: a folder on the node or a hub id. The simulated engine loads
    /// nothing and only answers to the name.
    pub adapter: String,
    /// The model name its requests carry: the adapter's name in the base engine (by default
    /// the tenant's name).
    pub model: String,
    /// Whether the base engine is simulated.
    pub simulated: bool,
}

/// A vLLM server for one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct VllmEngine {
    /// What `vllm serve` loads: a hub id, a local folder, or an `s3://` or `gs://` folder that
    /// the agent syncs to its disk first.
    pub model: String,
    /// The name requests use (`--served-model-name`); defaults to `model`.
    pub served_model_name: String,
    /// The `vllm` executable (a name on PATH or a path).
    pub executable: String,
    /// Extra `vllm serve` arguments, passed through as given.
    pub args: Vec<String>,
    /// Extra environment for the server (e.g. `VLLM_CPU_OMP_THREADS_BIND`).
    pub env: BTreeMap<String, String>,
    /// Variables copied from the agent's own environment (secrets such as `HF_TOKEN`), so
    /// their values never appear in a config or an output.
    pub env_from: Vec<String>,
    /// A file on the node with `KEY=VALUE` lines (secrets), read when the engine starts.
    pub env_file: Option<std::path::PathBuf>,
    /// How the server's GPU memory is bounded.
    pub memory: VllmMemory,
    /// How long the server may take to answer `/health`.
    pub startup_timeout: Duration,
}

/// How a vLLM server's GPU memory is bounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VllmMemory {
    /// vLLM's own default (`--gpu-memory-utilization` 0.92): only sensible alone on a GPU.
    Default,
    /// `--gpu-memory-utilization`: a fraction of the GPU's total memory.
    Fraction(f64),
    /// `--kv-cache-memory-bytes`: a fixed KV cache, the reproducible choice for co-location.
    /// vLLM still checks at start that `gpu_memory_utilization` of the GPU is free (its default,
    /// 0.92, whatever the KV size), so a `--gpu-memory-utilization` always goes with it: the
    /// stated `startup_fraction`, or the agent's [`VllmMemory::kv_startup_fraction`].
    KvCacheBytes {
        /// The KV cache, bytes.
        bytes: u64,
        /// The `gpu_memory_fraction` stated beside it, if one was.
        startup_fraction: Option<f64>,
    },
}

impl VllmMemory {
    /// vLLM's `gpu_memory_utilization` when none is given (`vllm/config/cache.py`).
    pub const VLLM_DEFAULT_FRACTION: f64 = 0.92;

    /// The `--gpu-memory-utilization` the agent passes with a fixed KV cache of `bytes` on a GPU
    /// of `total` bytes when the config states none: the KV cache's own share, rounded up to a
    /// hundredth. vLLM uses the fraction only for its start-up check once the KV size is fixed
    /// (`vllm/v1/worker/gpu_worker.py`, `determine_available_memory`), so the smallest share that
    /// still holds the cache lets every engine of a shared GPU pass that check.
    pub fn kv_startup_fraction(bytes: u64, total: u64) -> f64 {
        let share = bytes as f64 / total.max(1) as f64;
        ((share * 100.0).ceil() / 100.0).clamp(0.01, 1.0)
    }

    /// The fraction vLLM's start-up check asks to be free on a GPU of `gpu_total` bytes: the
    /// stated one, vLLM's default, or for a fixed KV cache without one its own share
    /// ([`VllmMemory::kv_startup_fraction`]); `None` for that cache on a GPU of unknown size.
    pub fn startup_share(self, gpu_total: Option<u64>) -> Option<f64> {
        match self {
            VllmMemory::Default => Some(Self::VLLM_DEFAULT_FRACTION),
            VllmMemory::Fraction(f) => Some(f),
            VllmMemory::KvCacheBytes {
                bytes,
                startup_fraction,
            } => startup_fraction.or(gpu_total.map(|t| Self::kv_startup_fraction(bytes, t))),
        }
    }
}

/// Timing model of the simulated engine (one iteration of continuous batching):
/// `step = (decode_step_us + decode_step_us_per_seq × batch + prefill_us_per_token × new prompt
/// tokens) × interference`, and every running sequence emits one token per step. A new
/// prompt's tokens that its prefix cache holds are not prefilled: as vLLM's, the cache keeps
/// full blocks of [`SIM_BLOCK_TOKENS`] tokens (words), each keyed by the whole prefix up to
/// it, evicts the least recently used, and always computes a prompt's last token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimTiming {
    /// Most sequences decoded at once; the rest queue.
    pub max_batch: u32,
    /// Prefill cost per prompt token of newly admitted requests.
    pub prefill_us_per_token: f64,
    /// Fixed cost of one decode step.
    pub decode_step_us: f64,
    /// Added cost per running sequence.
    pub decode_step_us_per_seq: f64,
    /// Tokens the prefix cache holds; 0 turns it off.
    pub prefix_cache_tokens: u64,
    /// Added to a step for each distinct LoRA adapter among its running sequences (the
    /// adapters' extra matrix products, one group per adapter).
    pub lora_step_us_per_adapter: f64,
    /// Most distinct adapters in one batch (vLLM's `--max-loras`); a request for another
    /// adapter waits until one of them has no running sequence. `None`: every adapter the
    /// engine serves.
    pub max_loras: Option<u32>,
}

/// Tokens per block of the simulated engine's prefix cache (vLLM's default block size).
pub const SIM_BLOCK_TOKENS: u32 = 16;
/// Largest prefix cache of a simulated engine, in tokens: 4M blocks, whose index takes about
/// 300 MiB (some 70 bytes a block).
pub const MAX_PREFIX_CACHE_TOKENS: u64 = 1 << 26;

impl Default for SimTiming {
    fn default() -> Self {
        Self {
            max_batch: 64,
            prefill_us_per_token: 20.0,
            decode_step_us: 8_000.0,
            decode_step_us_per_seq: 150.0,
            prefix_cache_tokens: 262_144,
            lora_step_us_per_adapter: 400.0,
            max_loras: None,
        }
    }
}

/// Per-request fault probabilities of the simulated engine.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimFaults {
    /// Answer HTTP 500 instead of a stream.
    pub http_error: f64,
    /// Send a chunk that is not JSON midway through the stream.
    pub malformed_chunk: f64,
    /// Close the connection midway through the stream.
    pub drop_connection: f64,
}

impl Experiment {
    /// Parses and validates YAML text. `origin` names the text in messages (usually its path).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        validate::parse_and_validate(text, origin, std::path::Path::new(""))
    }

    /// Reads and validates a config file; relative file paths in it are taken from the
    /// file's folder.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(std::path::Path::new(""));
        validate::parse_and_validate(&text, &origin, base)
    }

    /// The YAML `text` with every relative file path in it (datasets) made absolute against
    /// `base`, so that an agent started elsewhere reads the same files.
    pub fn with_absolute_paths(text: &str, base: &std::path::Path) -> Result<String, ConfigError> {
        // `x.yaml` has the parent "": the current folder.
        let base = if base.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            base
        };
        let base = std::path::absolute(base).map_err(|e| ConfigError::Read {
            origin: base.display().to_string(),
            message: e.to_string(),
        })?;
        Self::map_file_paths(text, |path| {
            if path.starts_with('/') {
                path.to_owned()
            } else {
                base.join(path).display().to_string()
            }
        })
    }

    /// The YAML `text` with each file path in it (`workloads.*.data.path`, `.data.tokenizer`
    /// and a trace's `.arrival.path`) replaced by `map(path)`: how a launcher points a node
    /// at its copies.
    pub fn map_file_paths(
        text: &str,
        mut map: impl FnMut(&str) -> String,
    ) -> Result<String, ConfigError> {
        let invalid = |message: String| ConfigError::Read {
            origin: "config".into(),
            message,
        };
        let mut doc: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(workloads) = doc
            .get_mut("workloads")
            .and_then(serde_yaml::Value::as_mapping_mut)
        {
            for (_, workload) in workloads.iter_mut() {
                for (section, key) in [("data", "path"), ("data", "tokenizer"), ("arrival", "path")]
                {
                    let Some(value) = workload.get_mut(section).and_then(|d| d.get_mut(key)) else {
                        continue;
                    };
                    if let Some(path) = value.as_str() {
                        *value = serde_yaml::Value::from(map(path));
                    }
                }
            }
        }
        serde_yaml::to_string(&doc).map_err(|e| invalid(e.to_string()))
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::SharingMode;

    #[test]
    fn mode_names_are_their_serialized_names() {
        for mode in [
            SharingMode::Solo,
            SharingMode::Mps,
            SharingMode::Timeslice,
            SharingMode::Exclusive,
        ] {
            assert_eq!(serde_json::to_value(mode).ok(), Some(mode.name().into()));
        }
    }
}
