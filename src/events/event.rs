//! The typed events of the JSONL format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Api, SharingMode};

/// One line of a stream: its sequence number and its event. Written with `seq` and `type`
/// first; read by hand (`line_de`), so the event's fields are read in place.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// Index of the line in its file; the header is 0.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// Every kind of event, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// First line of every file.
    Header(Header),
    /// A finished (completed or failed) request.
    Request(RequestEvent),
    /// The load generator changed phase.
    Phase(PhaseEvent),
    /// A trial started, finished, or was marked invalid or stopped.
    Trial(TrialEvent),
    /// An engine changed state.
    Engine(EngineEvent),
    /// Something a reader of the results must know.
    Warning(WarningEvent),
    /// A sample of the host.
    HostSample(HostSample),
    /// A scrape of an engine's Prometheus `/metrics`.
    EngineMetrics(EngineMetrics),
    /// The MPS daemon of a trial changed state.
    Mps(MpsEvent),
    /// The agent set a GPU's compute mode for a trial, put it back, or could not.
    ComputeMode(ComputeModeEvent),
    /// A sample of one GPU through NVML.
    GpuSample(GpuSample),
    /// The prompt a request sent.
    Prompt(PromptEvent),
    /// One tenant's figures in the trial are not valid (the others' are).
    TenantInvalid(TenantInvalidEvent),
    /// This folder is a capacity search's: its engines' lifecycle, not a measurement.
    Search(SearchEvent),
    /// This trial is one probe of a capacity search.
    Probe(ProbeEvent),
    /// A capacity probe was stopped early: one of its bounds was missed for certain.
    ProbeStopped(ProbeStoppedEvent),
    /// A capacity search ended because its node's `capacity.budget` of engine time would be
    /// passed by its next probe (schema 1.8).
    BudgetSpent(BudgetSpentEvent),
}

/// What stream a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Request events of one tenant.
    Tenant,
    /// Agent lifecycle events.
    Agent,
    /// Host samples.
    Host,
    /// Scrapes of one tenant engine's `/metrics`.
    EngineMetrics,
    /// NVML samples of the node's GPUs.
    Gpu,
    /// The prompts one tenant's requests sent, so a run can be repeated exactly.
    Prompts,
}

/// The header line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// `"MAJOR.MINOR"` of the schema.
    pub schema_version: String,
    /// Version of the agent that wrote the file.
    pub tool_version: String,
    /// Experiment name.
    pub experiment: String,
    /// Run id given by the coordinator.
    pub run_id: String,
    /// Node name.
    pub node: String,
    /// Trial name (its folder).
    pub trial: String,
    /// How tenants shared the GPU in this trial.
    pub mode: SharingMode,
    /// What the file holds.
    pub stream: StreamKind,
    /// UTC wall-clock nanoseconds of the run's monotonic zero.
    pub zero_wall_ns: u64,
    /// Whether anything in this stream comes from a simulated engine or GPU.
    pub simulated: bool,
    /// For a trial that runs one stage of a sweep: the stage, 1-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// For tenant streams: who the tenant is and what load it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Box<TenantHeader>>,
}

/// Tenant description in a tenant stream's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantHeader {
    /// Tenant name.
    pub name: String,
    /// Model name sent in requests.
    pub model: String,
    /// Engine kind: `simulated`, `vllm`, `external` or `adapter`.
    pub engine: String,
    /// For an adapter: the tenant whose engine serves it, and whose engine-metrics stream is
    /// its engine's (schema 1.6; absent: its own engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Workload name.
    pub workload: String,
    /// API called.
    pub api: Api,
    /// Arrival process, described.
    pub arrival: String,
    /// Offered request rate of an open-loop arrival process.
    pub offered_rate: Option<f64>,
    /// Whether responses were streamed.
    pub streaming: bool,
    /// Whether the output length was forced (`ignore_eos`), so that a different delivered
    /// length means the server did not do as asked.
    #[serde(default)]
    pub forced_length: bool,
    /// The SLO the tenant is judged by, when the config set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<crate::slo::Slo>,
    /// Milliseconds of warm-up plus measurement this trial's load plans (a capacity probe's
    /// own, lengthened where it was), for progress shown while it runs (schema 1.2; absent
    /// before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_ms: Option<u64>,
    /// Why its prompts share text an engine's prefix cache can serve, when they do
    /// (conversations, a trace's shared blocks); absent: every prompt is unique to its
    /// request (schema 1.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_prefixes: Option<String>,
}

/// Which phase a request was scheduled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not measured.
    Warmup,
    /// Measured.
    Measure,
    /// Sending stopped; in-flight requests finish.
    Drain,
    /// Load generation ended.
    Done,
}

impl Phase {
    /// The snake_case name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Measure => "measure",
            Phase::Drain => "drain",
            Phase::Done => "done",
        }
    }
}

/// Where token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The server's `usage`.
    Usage,
    /// Counted by the client (one per content chunk) because the server gave no usage.
    Counted,
}

impl TokenSource {
    /// The snake_case name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            TokenSource::Usage => "usage",
            TokenSource::Counted => "counted",
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Could not connect or send.
    Connect,
    /// The server answered with a non-success HTTP status.
    HttpStatus,
    /// The connection closed before the stream ended.
    StreamDropped,
    /// A chunk was not valid SSE or JSON.
    MalformedChunk,
    /// The server reported an error inside the stream.
    ServerError,
    /// The request passed its deadline.
    Timeout,
    /// The run was stopped or the drain timeout passed while it was in flight.
    Cancelled,
    /// The load generator itself could not send it (out of file descriptors or local ports):
    /// a failure of this machine, never the engine's.
    Client,
}

impl ErrorKind {
    /// The snake_case name, as in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::StreamDropped => "stream_dropped",
            ErrorKind::MalformedChunk => "malformed_chunk",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Client => "client",
        }
    }
}

/// A failure with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestError {
    /// Class of failure.
    pub kind: ErrorKind,
    /// What happened, in words (e.g. the HTTP body's first line).
    pub message: String,
}

/// One request, from schedule to end of stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEvent {
    /// Unique id within its stream (`<tenant>-<n>`); sent as `x-request-id`.
    pub id: String,
    /// Phase it was scheduled in.
    pub phase: Phase,
    /// When the arrival process wanted it sent.
    pub scheduled_ns: u64,
    /// Just before the request could be written: when it was handed to the HTTP client, or,
    /// for the first request on a connection opened for it, when that connection was ready
    /// (schema 1.3; before, the connect was inside TTFT).
    pub sent_ns: u64,
    /// How long the TCP connect this request waited for took, in ns, when it was the first
    /// request on a connection opened while it waited (schema 1.3). Not part of TTFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ns: Option<u64>,
    /// Arrival of the first chunk with non-empty generated text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ns: Option<u64>,
    /// Arrival of the last chunk with generated text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_ns: Option<u64>,
    /// End of the response (`[DONE]`, end of body, or failure).
    pub done_ns: u64,
    /// Gaps between consecutive content-chunk arrivals after the first, in µs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_gaps_us: Vec<u64>,
    /// Output length asked for (`max_tokens`).
    pub max_tokens: u32,
    /// Prompt tokens, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    /// Output tokens delivered, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u32>,
    /// Where the token counts came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_source: Option<TokenSource>,
    /// HTTP status, when a response started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Set when the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RequestError>,
    /// The conversation it is a turn of (0-based, in the order the tenant's conversations
    /// started), for conversation workloads (schema 1.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<u64>,
    /// Its turn in that conversation, 1-based (schema 1.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<u32>,
}

impl RequestEvent {
    /// Why this event's times cannot be true, when they cannot: out of order, or ending after
    /// `end_ns` (the load generator's `done`, written once every request had ended). Such an
    /// event is counted and left out of every figure, never averaged in.
    pub fn implausible(&self, end_ns: Option<u64>) -> Option<&'static str> {
        let first = self.first_token_ns;
        if first.is_some_and(|f| f < self.sent_ns) {
            return Some("first token before its send");
        }
        if let (Some(f), Some(l)) = (first, self.last_token_ns) {
            if l < f {
                return Some("last token before the first");
            }
        }
        if self.done_ns < self.sent_ns {
            return Some("done before its send");
        }
        if self.last_token_ns.is_some_and(|l| self.done_ns < l) {
            return Some("done before its last token");
        }
        if end_ns.is_some_and(|end| self.done_ns > end) {
            return Some("done after the load generator's own end");
        }
        None
    }

    /// TTFT (docs/metrics.md): first content chunk − sent; `None` for a failed request or one
    /// without content.
    pub fn ttft_ns(&self) -> Option<u64> {
        self.succeeded()?;
        Some(self.first_token_ns?.saturating_sub(self.sent_ns))
    }

    /// E2E: last content chunk − sent, or done − sent for a response without content chunks;
    /// `None` for a failed request.
    pub fn e2e_ns(&self) -> Option<u64> {
        self.succeeded()?;
        Some(
            self.last_token_ns
                .unwrap_or(self.done_ns)
                .saturating_sub(self.sent_ns),
        )
    }

    /// TPOT: (last − first content chunk) / (output tokens − 1); `None` below two tokens.
    pub fn tpot_ns(&self) -> Option<u64> {
        self.succeeded()?;
        let tokens = self.output_tokens.filter(|&n| n >= 2)?;
        let span = self.last_token_ns?.checked_sub(self.first_token_ns?)?;
        Some(span / u64::from(tokens - 1))
    }

    fn succeeded(&self) -> Option<()> {
        self.error.is_none().then_some(())
    }
}

/// The prompt of one request, written after its trial's load so that sending never waits on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptEvent {
    /// The request id, as in the tenant stream.
    pub id: String,
    /// `synthetic`, or the dataset entry it came from (`file:line` or `file[index]`).
    pub origin: String,
    /// Output length asked for.
    pub max_tokens: u32,
    /// Its tokens as the tokenizer given in the config counts them (special tokens and chat
    /// template excluded); absent without a tokenizer, when the length is in words and the
    /// true count is the server's `usage` in the request event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    /// The text sent (as the user message for chat).
    pub text: String,
    /// The dataset entry's reference answer, when it has one and the response was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// The generated text of a completed request whose response was kept
    /// (`keep_responses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// A phase change of the load generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseEvent {
    /// Phase entered.
    pub phase: Phase,
    /// When.
    pub at_ns: u64,
    /// On `drain` of an open-loop load: how many arrivals its schedule placed in the measure
    /// phase, sent or not (up to the stop, when the run was stopped during it). The achieved rate is judged against these, not the nominal rate
    /// (a short Poisson phase may hold far fewer arrivals than rate × duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<u64>,
    /// On `done`: how the load used its connections (schema 1.6; absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionUse>,
}

/// How a tenant's load used its HTTP connections: what it opened before its clock started and
/// the most requests it had in flight at once. Each request in flight holds a connection, so a
/// load needs `peak_in_flight − preopened` connections more than it opened ahead; connects
/// beyond those replaced connections the server closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionUse {
    /// Connections opened (and answered) before the load started.
    pub preopened: u64,
    /// The most requests in flight at any instant of the load, every phase.
    pub peak_in_flight: u64,
}

impl ConnectionUse {
    /// Connects the load needed beyond those it opened ahead, as its requests in flight grew.
    pub fn growth(&self) -> u64 {
        self.peak_in_flight.saturating_sub(self.preopened)
    }
}

/// State of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Engines are starting.
    Started,
    /// Ran to the end; results are valid.
    Finished,
    /// Something went wrong (e.g. an engine died); results must not be trusted.
    Invalid,
    /// Stopped on request before its end.
    Stopped,
}

/// A trial's state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialEvent {
    /// When.
    pub at_ns: u64,
    /// New state.
    pub state: TrialState,
    /// Why, for `invalid` and `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One tenant of a trial whose figures cannot be trusted, while the trial's other tenants'
/// can (its load task ended abnormally).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantInvalidEvent {
    /// When.
    pub at_ns: u64,
    /// The tenant.
    pub tenant: String,
    /// Why.
    pub reason: String,
}

/// A capacity search begins (first event of its own folder's `agent.jsonl`, after the start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchEvent {
    /// When.
    pub at_ns: u64,
    /// The search (its folder name).
    pub search: String,
    /// Its tenants.
    pub tenants: Vec<String>,
    /// How it probes.
    pub policy: crate::capacity::SearchPolicy,
    /// 1 for the configured mix (and solo searches); 2 and up for capacity-region directions.
    pub direction: u32,
}

/// A probe of a capacity search begins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeEvent {
    /// When.
    pub at_ns: u64,
    /// The search it belongs to.
    pub search: String,
    /// Its number in the search, from 1.
    pub probe: u32,
    /// The scale offered: requests per second in all, split by `shares`.
    pub scale: f64,
    /// Each tenant's share of the scale (they sum to 1).
    pub shares: BTreeMap<String, f64>,
    /// How long the probe waited, before its warmup, for the engines' batches and queues to
    /// empty (what an earlier probe left behind), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_wait_ms: Option<u64>,
    /// Tenants whose engine reports no queue, so that the probe could not wait for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue_unknown: Vec<String>,
}

/// A capacity probe ended before its planned time because its failure was already certain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStoppedEvent {
    /// When.
    pub at_ns: u64,
    /// The bound and its count: `a: ttft_ms p99: 9 requests over 150 ms, more than …`.
    pub reason: String,
}

/// A capacity search stopped before a probe that would have taken its node's searches past
/// their budget of engine time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetSpentEvent {
    /// When.
    pub at_ns: u64,
    /// Engine time the node's searches had taken, milliseconds.
    pub spent_ms: u64,
    /// The budget, milliseconds.
    pub budget_ms: u64,
    /// The probe not started: its warmup and measured phase, milliseconds.
    pub next_probe_ms: u64,
}

impl BudgetSpentEvent {
    /// `291.4 s of the 300 s budget spent; the next probe needed 12.5 s`.
    pub fn describe(&self) -> String {
        let seconds = |ms: u64| {
            let text = format!("{:.1}", ms as f64 / 1e3);
            text.strip_suffix(".0").map_or(text.clone(), str::to_owned)
        };
        format!(
            "{} s of the {} s budget spent; the next probe needed {} s",
            seconds(self.spent_ms),
            seconds(self.budget_ms),
            seconds(self.next_probe_ms)
        )
    }
}

/// State of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineState {
    /// Being started.
    Starting,
    /// Answering health checks.
    Ready,
    /// Being stopped.
    Stopping,
    /// Gone, on purpose or not.
    Exited,
    /// Failed to start or become healthy.
    Failed,
}

/// An engine's state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineEvent {
    /// When.
    pub at_ns: u64,
    /// The tenant whose engine it is (a base's engine serves its LoRA adapter tenants too).
    pub tenant: String,
    /// New state.
    pub state: EngineState,
    /// Base URL, exit status or error, as fits.
    pub detail: String,
}

/// One GPU, sampled through NVML. Every figure NVML could not give is absent, never zero.
/// `utilization_gpu_pct` is a duty cycle (some kernel was running), not how busy the SMs were:
/// the `gpm_*` figures (Hopper and newer) say that.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GpuSample {
    /// When.
    pub at_ns: u64,
    /// NVML device index.
    pub gpu: u32,
    /// % of the last sample period in which a kernel ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_gpu_pct: Option<u32>,
    /// % of the last sample period in which device memory was read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_memory_pct: Option<u32>,
    /// Device memory in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// Device memory in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    /// Power draw (a 1 s average on Ampere and newer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_mw: Option<u32>,
    /// Energy counter since the driver loaded; differences give energy over a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
    /// SM clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_clock_mhz: Option<u32>,
    /// GPU die temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    /// Why clocks are held back, NVML's bitmask (0 = not throttled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_reasons: Option<u64>,
    /// Compute processes and their device memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<GpuProcess>,
    /// MPS client processes and their device memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mps_processes: Vec<GpuProcess>,
    /// GPM: % of time SMs had a warp resident, over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpm_sm_util_pct: Option<f64>,
    /// GPM: resident warps / maximum, over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpm_sm_occupancy_pct: Option<f64>,
    /// GPM: tensor pipes' activity, over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpm_tensor_util_pct: Option<f64>,
    /// GPM: DRAM bandwidth used, % of peak, over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpm_dram_bw_util_pct: Option<f64>,
}

/// A process on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Host PID.
    pub pid: u32,
    /// Device memory it uses, when NVML knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
}

/// A GPU's compute mode, as `nvidia-smi -c` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuComputeMode {
    /// Many CUDA contexts per GPU.
    Default,
    /// One CUDA context per GPU (under MPS, the MPS server's).
    ExclusiveProcess,
    /// No CUDA context at all.
    Prohibited,
}

/// What the agent did with a GPU's compute mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeModeState {
    /// The GPU was already in the mode the trial needs.
    Kept,
    /// The agent set the mode the trial needs.
    Set,
    /// The agent put back the mode the GPU had before the trial.
    Restored,
    /// The mode could not be set; `detail` says why and what the trial does about it.
    Refused,
}

/// A compute-mode change of one GPU for a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeModeEvent {
    /// When.
    pub at_ns: u64,
    /// The GPU's index.
    pub gpu: u32,
    /// What happened.
    pub state: ComputeModeState,
    /// The mode the GPU is in afterwards.
    pub mode: GpuComputeMode,
    /// The tool's answer, or why the mode could not be set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// State of a trial's MPS daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MpsState {
    /// The daemon answers; its defaults are set.
    Started,
    /// Every engine was found among the MPS clients.
    Verified,
    /// The daemon could not be used; the trial is not measured.
    Failed,
    /// The daemon quit.
    Stopped,
}

/// An MPS daemon state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MpsEvent {
    /// When.
    pub at_ns: u64,
    /// New state.
    pub state: MpsState,
    /// Pipe directory, client PIDs per tenant, or the error.
    pub detail: String,
}

/// A warning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarningEvent {
    /// When.
    pub at_ns: u64,
    /// What a reader must know.
    pub message: String,
}

/// One scrape of an engine's `/metrics`, summed over label sets. Names are the engine's own
/// (e.g. `vllm:time_to_first_token_seconds`); values are cumulative since the engine started.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineMetrics {
    /// When the scrape's answer arrived.
    pub at_ns: u64,
    /// Gauges (e.g. running and waiting requests, KV-cache use).
    #[serde(default)]
    pub gauges: BTreeMap<String, f64>,
    /// Counters (e.g. generated tokens, preemptions).
    #[serde(default)]
    pub counters: BTreeMap<String, f64>,
    /// Histograms (e.g. TTFT, inter-token latency, queue time).
    #[serde(default)]
    pub histograms: BTreeMap<String, PromHistogram>,
}

/// A Prometheus histogram: finite upper bounds with cumulative counts, then sum and count
/// (the `+Inf` bucket equals `count`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PromHistogram {
    /// Finite bucket upper bounds, ascending.
    pub bounds: Vec<f64>,
    /// Cumulative count at each bound.
    pub cumulative: Vec<f64>,
    /// Sum of observed values.
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
}

impl PromHistogram {
    /// Mean of the observations made between `earlier` and `self` (two scrapes of the same
    /// histogram), or `None` if there were none.
    pub fn mean_since(&self, earlier: Option<&PromHistogram>) -> Option<f64> {
        let (sum0, count0) = earlier.map_or((0.0, 0.0), |e| (e.sum, e.count));
        let count = self.count - count0;
        (count > 0.0).then(|| (self.sum - sum0) / count)
    }
}

/// One host sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// When.
    pub at_ns: u64,
    /// CPU use over all cores since the last sample, 0–100.
    pub cpu_percent: f32,
    /// Memory in use.
    pub memory_used_bytes: u64,
    /// Total memory.
    pub memory_total_bytes: u64,
    /// Each engine process group the agent runs: its CPU and memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<EngineProcessSample>,
}

/// CPU and memory of one engine's process group (API server, engine core, workers…).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineProcessSample {
    /// Tenant served.
    pub tenant: String,
    /// PIDs in the group.
    pub pids: Vec<u32>,
    /// CPU use summed over the group since the last sample, % of one core.
    pub cpu_percent: f32,
    /// Resident memory summed over the group.
    pub memory_rss_bytes: u64,
}
