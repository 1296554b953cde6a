//! Runs: one node's trials of an experiment, executed by the agent, recorded to disk.
//!
//! A run owns its folder `<data_dir>/<run_id>/` and its streams. Trials run one after another;
//! inside a trial, engines start one at a time (each must answer its health check before the
//! next starts), then every tenant's load runs at once, then engines stop and streams close.
//! A trial whose engine fails is marked `invalid` and the run goes on to the next trial.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multitenant::config::{
    Arrival, ArrivalPlan, Engine, Experiment, Node, SharingMode, StageArrival, Trial,
};
use multitenant::events::{
    EngineEvent, EngineState, Event, Header, MpsEvent, MpsState, PromptEvent, StreamKind,
    TenantHeader, TrialEvent, TrialState, WarningEvent, SCHEMA_VERSION,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::RunClock;
use crate::engine::process::ExitReport;
use crate::engine::sim_gpu::SimGpu;
use crate::engine::{name_hash, EngineError, RunningEngine, StartContext};
use crate::engine_metrics;
use crate::gpu::{self, GpuStatus, NodeGpus};
use crate::host;
use crate::loadgen::{self, client::Target, prompts::PromptFactory, TenantLoad};
use crate::mps::MpsDaemon;
use crate::recorder::{RunStreams, StreamFile};

/// How long an engine may take to answer its health check.
const ENGINE_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Host sampling interval.
const HOST_INTERVAL: Duration = Duration::from_secs(1);
/// GPU sampling interval (NVML's utilization window is up to 1 s, so faster mostly re-reads).
const GPU_INTERVAL: Duration = Duration::from_secs(1);
/// How often engines' `/metrics` are scraped.
const ENGINE_METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Trials are running.
    Running,
    /// Every trial ran (some may be invalid; their agent streams say why).
    Finished,
    /// The run could not go on.
    Failed(String),
    /// Stopped on request.
    Stopped,
}

impl RunState {
    /// The name used on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Failed(_) => "failed",
            RunState::Stopped => "stopped",
        }
    }
}

/// One run.
pub struct Run {
    /// Id chosen by the coordinator.
    pub id: String,
    /// Trial names, in order.
    pub trials: Vec<String>,
    /// The run's stream files.
    pub streams: Arc<RunStreams>,
    config_sha256: String,
    state: watch::Sender<RunState>,
    cancel: CancellationToken,
}

impl Run {
    /// The current state.
    pub fn state(&self) -> RunState {
        self.state.borrow().clone()
    }

    /// Asks the run to stop; returns at once.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    fn set_state(&self, state: RunState) {
        self.state.send_replace(state);
        self.streams.poke();
    }
}

/// Why a run was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The run id is taken by a run with another config.
    #[error("run {0} already exists with a different config")]
    Conflict(String),
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The run folder could not be made.
    #[error("cannot create the run folder: {0}")]
    Io(#[from] std::io::Error),
}

/// All runs of this agent.
pub struct RunManager {
    data_dir: PathBuf,
    gpu: NodeGpus,
    mps_control: PathBuf,
    http: reqwest::Client,
    runs: Mutex<HashMap<String, Arc<Run>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl RunManager {
    /// Runs will live under `data_dir`.
    /// `mps_control` is the `nvidia-cuda-mps-control` to use for `mps` trials (a name on PATH
    /// or a path).
    pub fn new(data_dir: PathBuf, gpu: NodeGpus, mps_control: PathBuf) -> Self {
        Self {
            data_dir,
            gpu,
            mps_control,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(4096)
                .tcp_nodelay(true)
                .build()
                .unwrap_or_default(),
            runs: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// What the agent knows of its GPUs.
    pub fn gpu(&self) -> &GpuStatus {
        &self.gpu.status
    }

    /// The run `id`, if this agent has it.
    pub fn get(&self, id: &str) -> Option<Arc<Run>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Starts node `node` of `config_yaml` as run `run_id`; idempotent for the same config.
    /// Returns the run and whether it already existed.
    pub fn start(
        &self,
        run_id: &str,
        config_yaml: &str,
        node: &str,
    ) -> Result<(Arc<Run>, bool), StartError> {
        if run_id.is_empty()
            || run_id.len() > 128
            || !run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || run_id.starts_with('.')
        {
            return Err(StartError::Invalid(format!(
                "run id {run_id:?} must be 1–128 letters, digits, '-', '_' or '.', not starting with '.'"
            )));
        }
        let config_sha256 = hex::encode(Sha256::digest(config_yaml.as_bytes()));
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(run) = runs.get(run_id) {
            if run.config_sha256 == config_sha256 {
                return Ok((run.clone(), true));
            }
            return Err(StartError::Conflict(run_id.to_owned()));
        }
        if self.shutdown.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        let experiment = Experiment::from_yaml(config_yaml, "config_yaml")
            .map_err(|e| StartError::Invalid(e.to_string()))?;
        let node = experiment
            .node(node)
            .cloned()
            .ok_or_else(|| StartError::Invalid(format!("the config has no node named {node:?}")))?;
        let root = self.data_dir.join(run_id);
        if root.exists() {
            return Err(StartError::Invalid(format!(
                "{} already exists from an earlier agent; choose another run id",
                root.display()
            )));
        }
        let trials = node.trials(&experiment.workloads);
        let run = Arc::new(Run {
            id: run_id.to_owned(),
            trials: trials.iter().map(|t| t.name.clone()).collect(),
            streams: Arc::new(RunStreams::new(root)?),
            config_sha256,
            state: watch::Sender::new(RunState::Running),
            cancel: self.shutdown.child_token(),
        });
        runs.insert(run_id.to_owned(), run.clone());
        let ctx = RunContext {
            run: run.clone(),
            models_dir: self.data_dir.join(".models"),
            experiment,
            node,
            clock: RunClock::start(),
            gpu: self.gpu.clone(),
            mps_control: self.mps_control.clone(),
            http: self.http.clone(),
            sweep_rates: Mutex::new(HashMap::new()),
        };
        self.tracker.spawn(async move {
            let state = ctx.execute(trials).await;
            ctx.run.set_state(state);
        });
        Ok((run, false))
    }

    /// Stops every run and waits for them to record their end.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// How long a tenant's engine may take to become healthy.
fn health_timeout(tenant: &multitenant::config::Tenant) -> Duration {
    match &tenant.engine {
        multitenant::config::Engine::Vllm(v) => v.startup_timeout,
        _ => ENGINE_HEALTH_TIMEOUT,
    }
}

/// What a tenant's engine needs under MPS: the daemon's pipe folder and its own limits.
fn mps_client_env(
    daemon: &MpsDaemon,
    tenant: &multitenant::config::Tenant,
) -> Vec<(String, String)> {
    let mut env = daemon.client_env();
    if let Some(pct) = tenant.mps_thread_percentage {
        env.push(("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), pct.to_string()));
    }
    if let Some(limit) = &tenant.mps_pinned_memory_limit {
        env.push(("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), limit.clone()));
    }
    env
}

/// Checks that some process of every vLLM engine's group is an MPS client; returns the client
/// PIDs per tenant, or which tenant is not a client.
async fn verify_mps_clients(
    daemon: &MpsDaemon,
    tenants: &[&multitenant::config::Tenant],
    engines: &[RunningEngine],
) -> Result<String, String> {
    let clients = daemon.client_pids().await.map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    for (tenant, engine) in tenants.iter().zip(engines) {
        let Some(pgid) = engine.pgid() else { continue };
        let members = crate::engine::process::group_pids(pgid);
        let ours: Vec<i32> = members
            .iter()
            .copied()
            .filter(|p| clients.contains(p))
            .collect();
        if ours.is_empty() {
            return Err(format!(
                "the engine of {} is not an MPS client (its processes {members:?}; MPS clients {clients:?})",
                tenant.name
            ));
        }
        found.push(format!("{}: {ours:?}", tenant.name));
    }
    Ok(format!("MPS clients: {}", found.join(", ")))
}

/// An engine that exited during a trial: tenant, when (run clock), how.
type EngineDeath = (String, u64, ExitReport);

/// One task per process engine that waits for an exit during the trial. An exit cancels the
/// trial's load (the results cannot be trusted, and under MPS a fault reaches every tenant)
/// and is returned; the tasks end with `None` once `trial` is cancelled for any other reason.
fn watch_engine_exits(
    tenants: &[&multitenant::config::Tenant],
    engines: &[RunningEngine],
    trial: &CancellationToken,
    clock: RunClock,
) -> Vec<tokio::task::JoinHandle<Option<EngineDeath>>> {
    tenants
        .iter()
        .zip(engines)
        .filter_map(|(tenant, engine)| {
            let mut exited = engine.exit_watch()?;
            let trial = trial.clone();
            let name = tenant.name.clone();
            Some(tokio::spawn(async move {
                tokio::select! {
                    changed = exited.wait_for(Option::is_some) => {
                        let report = changed.ok()?.clone()?;
                        trial.cancel();
                        Some((name, clock.now_ns(), report))
                    }
                    () = trial.cancelled() => None,
                }
            }))
        })
        .collect()
}

/// A trial's agent stream and the clock its events are stamped by.
struct TrialLog {
    stream: Arc<StreamFile>,
    clock: RunClock,
}

impl TrialLog {
    fn append(&self, event: Event) -> std::io::Result<()> {
        self.stream.append(&event)
    }

    fn trial(&self, state: TrialState, reason: Option<String>) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.append(Event::Trial(TrialEvent {
            at_ns,
            state,
            reason,
        }))
    }

    fn warn(&self, message: String) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.append(Event::Warning(WarningEvent { at_ns, message }))
    }

    fn engine(&self, tenant: &str, state: EngineState, detail: String) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.append(Event::Engine(EngineEvent {
            at_ns,
            tenant: tenant.to_owned(),
            state,
            detail,
        }))
    }

    fn mps(&self, state: MpsState, detail: String) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.append(Event::Mps(MpsEvent {
            at_ns,
            state,
            detail,
        }))
    }
}

struct RunContext {
    run: Arc<Run>,
    /// Where bucket models are synced to, shared by runs: `<data_dir>/.models` (run ids
    /// cannot start with a dot, so it never meets a run folder).
    models_dir: PathBuf,
    experiment: Experiment,
    node: Node,
    clock: RunClock,
    gpu: NodeGpus,
    mps_control: PathBuf,
    http: reqwest::Client,
    /// Per tenant: the request rates its automatic sweep measured in its synchronous and
    /// throughput stages, taken from the first trial that ran them (the solo trial, when
    /// there is one, so that shared trials are offered the same rates as the baseline).
    sweep_rates: Mutex<HashMap<String, SweepRates>>,
}

/// Measured ends of an automatic sweep.
#[derive(Debug, Clone, Copy, Default)]
struct SweepRates {
    sync: Option<f64>,
    max: Option<f64>,
}

impl RunContext {
    async fn execute(&self, trials: Vec<Trial>) -> RunState {
        for trial in &trials {
            if self.run.cancel.is_cancelled() {
                return RunState::Stopped;
            }
            if let Err(e) = self.trial(trial).await {
                tracing::error!("run {}: trial {}: {e}", self.run.id, trial.name);
                return RunState::Failed(format!("trial {}: {e}", trial.name));
            }
        }
        if self.run.cancel.is_cancelled() {
            RunState::Stopped
        } else {
            RunState::Finished
        }
    }

    fn header(
        &self,
        trial: &Trial,
        stream: StreamKind,
        simulated: bool,
        tenant: Option<TenantHeader>,
    ) -> Header {
        Header {
            schema_version: SCHEMA_VERSION.into(),
            tool_version: multitenant::TOOL_VERSION.into(),
            experiment: self.experiment.name.clone(),
            run_id: self.run.id.clone(),
            node: self.node.name.clone(),
            trial: trial.name.clone(),
            mode: trial.mode,
            stream,
            zero_wall_ns: self.clock.zero_wall_ns(),
            simulated,
            stage: trial.stage.map(|k| k as u32 + 1),
            tenant,
        }
    }

    /// The arrival process each tenant runs in `trial`: its workload's process, or the
    /// trial's stage of its sweep. Rate stages of an automatic sweep need the tenant's
    /// synchronous and throughput rates, measured earlier; without them the trial cannot run.
    fn stage_arrivals(
        &self,
        trial: &Trial,
        tenants: &[&multitenant::config::Tenant],
    ) -> Result<Vec<Arrival>, String> {
        let rates = self.sweep_rates.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .iter()
            .map(|t| match self.experiment.workloads[&t.workload].arrival.stage(trial.stage) {
                StageArrival::Fixed(arrival) => Ok(arrival),
                StageArrival::AutoRate { step, sweep } => {
                    let measured = rates.get(&t.name).copied().unwrap_or_default();
                    match (measured.sync, measured.max) {
                        (Some(sync), Some(max)) => Ok(sweep.arrival(sweep.rate(step, sync, max))),
                        _ => Err(format!(
                            "{}: rate stage {step} of its sweep needs the request rates of its synchronous and throughput stages, and at least one of them completed no measured request",
                            t.name
                        )),
                    }
                }
            })
            .collect()
    }

    /// The seed of a tenant's arrivals and prompts: the same in every trial, so a tenant
    /// sends the same requests alone and shared.
    fn tenant_seed(&self, tenant: &multitenant::config::Tenant) -> u64 {
        self.experiment.seed ^ name_hash(&tenant.name)
    }

    /// Writes `<trial>/<tenant>.prompts.jsonl`: the prompt of every request sent, after the
    /// load is over so that no send waits on it.
    fn write_prompts(
        &self,
        trial: &Trial,
        tenants: &[&multitenant::config::Tenant],
        prompts: &[Arc<PromptFactory>],
        reports: &[loadgen::LoadReport],
    ) -> std::io::Result<()> {
        for ((tenant, factory), report) in tenants.iter().zip(prompts).zip(reports) {
            let stream = self.run.streams.create(
                &format!("{}/{}.prompts.jsonl", trial.name, tenant.name),
                self.header(
                    trial,
                    StreamKind::Prompts,
                    tenant.engine.is_simulated(),
                    None,
                ),
            )?;
            for index in 0..report.sent {
                let prompt = factory.prompt(index);
                let response = report.responses.get(&index).cloned();
                stream.append(&Event::Prompt(PromptEvent {
                    id: loadgen::request_id(&tenant.name, index),
                    origin: prompt.origin,
                    prompt_tokens: prompt.tokens,
                    max_tokens: prompt.max_tokens,
                    text: prompt.text,
                    expected: prompt.expected.filter(|_| response.is_some()),
                    response,
                }))?;
            }
            stream.close()?;
        }
        Ok(())
    }

    /// Keeps what the synchronous (stage 1) and throughput (stage 2) stages of automatic
    /// sweeps measured, the first time each tenant runs them.
    fn remember_sweep_rates(
        &self,
        trial: &Trial,
        tenants: &[&multitenant::config::Tenant],
        reports: &[loadgen::LoadReport],
    ) {
        let mut rates = self.sweep_rates.lock().unwrap_or_else(|e| e.into_inner());
        for (tenant, report) in tenants.iter().zip(reports) {
            if !matches!(
                self.experiment.workloads[&tenant.workload].arrival,
                ArrivalPlan::Auto(_)
            ) {
                continue;
            }
            let entry = rates.entry(tenant.name.clone()).or_default();
            let slot = match trial.stage {
                Some(0) => &mut entry.sync,
                Some(1) => &mut entry.max,
                _ => continue,
            };
            if slot.is_none() {
                *slot = report.completed_rate;
            }
        }
    }

    /// Runs one trial. Engine failures mark the trial invalid; only an I/O failure of the
    /// agent's own stream is an error.
    /// Runs one trial: opens its log, prepares every tenant's load, starts MPS when needed and
    /// the engines one by one, measures, then stops everything it started. A phase that fails
    /// marks the trial invalid with its reason and skips the phases that depend on it.
    async fn trial(&self, trial: &Trial) -> std::io::Result<()> {
        let tenants: Vec<_> = trial
            .tenants
            .iter()
            .map(|&i| &self.node.tenants[i])
            .collect();
        let log = self.open_trial_log(trial, &tenants)?;
        let (arrivals, prompts, mut failure) = self.prepare_load(trial, &tenants, &log)?;
        let mut mps = None;
        if failure.is_none() {
            match self.start_mps(trial, &tenants, &log).await? {
                Ok(daemon) => mps = daemon,
                Err(reason) => failure = Some(reason),
            }
        }
        let mut engines = Vec::new();
        if failure.is_none() {
            let started = self
                .start_engines(trial, &tenants, mps.as_ref(), &log)
                .await?;
            engines = started.0;
            failure = started.1;
        }
        if let (Some(daemon), None) = (&mps, &failure) {
            match verify_mps_clients(daemon, &tenants, &engines).await {
                Ok(detail) => log.mps(MpsState::Verified, detail)?,
                Err(reason) => {
                    log.mps(MpsState::Failed, reason.clone())?;
                    failure = Some(format!("{reason}; refusing to measure a trial that would be time-sliced, not shared under MPS"));
                }
            }
        }
        let (mut outcome, died) = match failure {
            Some(reason) => ((TrialState::Invalid, Some(reason)), Vec::new()),
            None => {
                self.measure(trial, &tenants, &arrivals, &prompts, &engines, &log)
                    .await?
            }
        };
        self.stop_engines(engines, &tenants, &died, &log).await?;
        if let Some(daemon) = mps {
            let report = daemon.quit().await;
            log.mps(MpsState::Stopped, report.status)?;
        }
        if self.run.cancel.is_cancelled() {
            let reason = outcome.1.unwrap_or_else(|| "the run was stopped".into());
            outcome = (TrialState::Stopped, Some(reason));
        }
        log.trial(outcome.0, outcome.1)?;
        log.stream.close()
    }

    /// Creates the trial's agent stream and records its start, with what the reader must
    /// know from the outset (no GPU sampling, simulated engines).
    fn open_trial_log(
        &self,
        trial: &Trial,
        tenants: &[&multitenant::config::Tenant],
    ) -> std::io::Result<TrialLog> {
        let simulated = tenants.iter().any(|t| t.engine.is_simulated());
        let log = TrialLog {
            stream: self.run.streams.create(
                &format!("{}/agent.jsonl", trial.name),
                self.header(trial, StreamKind::Agent, simulated, None),
            )?,
            clock: self.clock,
        };
        log.trial(TrialState::Started, None)?;
        if let GpuStatus::Unavailable(reason) = &self.gpu.status {
            log.warn(format!("GPU sampling is off: {reason}"))?;
        }
        if simulated {
            log.warn("simulated engine(s) on a simulated GPU: every latency and throughput here is SIMULATED".into())?;
        }
        Ok(log)
    }

    /// Everything that can be known wrong before an engine starts: engine preflight, this
    /// stage's arrivals, and each tenant's prompts (a dataset's skipped entries are warned).
    /// Returns the arrivals and prompt factories, and the first reason the trial cannot run.
    #[allow(clippy::type_complexity)]
    fn prepare_load(
        &self,
        trial: &Trial,
        tenants: &[&multitenant::config::Tenant],
        log: &TrialLog,
    ) -> std::io::Result<(Vec<Arrival>, Vec<Arc<PromptFactory>>, Option<String>)> {
        let problems: Vec<String> = tenants
            .iter()
            .filter_map(|t| crate::engine::preflight(t).err())
            .map(|e| e.to_string())
            .collect();
        let mut failure = (!problems.is_empty())
            .then(|| format!("refused before any engine started: {}", problems.join("; ")));
        let arrivals = match self.stage_arrivals(trial, tenants) {
            Ok(arrivals) => arrivals,
            Err(reason) => {
                failure.get_or_insert(reason);
                Vec::new()
            }
        };
        let mut prompts = Vec::new();
        for tenant in tenants {
            let workload = &self.experiment.workloads[&tenant.workload];
            let tokenizer = workload.tokenizer.as_deref();
            match PromptFactory::new(&workload.data, tokenizer, self.tenant_seed(tenant)) {
                Ok((factory, skipped)) => {
                    if !skipped.is_empty() {
                        log.warn(format!(
                            "{}: {} dataset entries skipped: {}",
                            tenant.name,
                            skipped.len(),
                            skipped.join("; ")
                        ))?;
                    }
                    prompts.push(Arc::new(factory));
                }
                Err(e) => {
                    failure.get_or_insert(format!("{}: {e}", tenant.name));
                }
            }
        }
        Ok((arrivals, prompts, failure))
    }

    /// Starts the trial's own MPS daemon when it shares real engines under MPS: `Ok(None)`
    /// when none is needed, `Err(reason)` when it would not start.
    async fn start_mps(
        &self,
        trial: &Trial,
        tenants: &[&multitenant::config::Tenant],
        log: &TrialLog,
    ) -> std::io::Result<Result<Option<MpsDaemon>, String>> {
        let needs_mps = trial.mode == SharingMode::Mps
            && tenants.iter().any(|t| matches!(t.engine, Engine::Vllm(_)));
        if !needs_mps {
            return Ok(Ok(None));
        }
        let key = format!("{}/{}", self.run.streams.root().display(), trial.name);
        let log_dir = self.run.streams.root().join(&trial.name).join("mps");
        match MpsDaemon::start(&self.mps_control, &key, &log_dir, &self.node.mps).await {
            Ok(daemon) => {
                let detail = daemon
                    .client_env()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                log.mps(MpsState::Started, detail)?;
                Ok(Ok(Some(daemon)))
            }
            Err(e) => {
                log.mps(MpsState::Failed, e.to_string())?;
                Ok(Err(format!("{e}; the trial was not measured")))
            }
        }
    }

    /// Starts the engines one after another: vLLM sizes its memory from what is free while it
    /// starts, so nothing else may change GPU memory meanwhile. Stops at the first that fails,
    /// returning the ones started and why.
    async fn start_engines(
        &self,
        trial: &Trial,
        tenants: &[&multitenant::config::Tenant],
        mps: Option<&MpsDaemon>,
        log: &TrialLog,
    ) -> std::io::Result<(Vec<RunningEngine>, Option<String>)> {
        let gpu = Arc::new(SimGpu::new(trial.mode, self.node.sim_gpu.mps_interference));
        let log_dir = self.run.streams.root().join(&trial.name).join("logs");
        let mut engines = Vec::new();
        for tenant in tenants {
            log.engine(
                &tenant.name,
                EngineState::Starting,
                tenant.engine.kind().into(),
            )?;
            let env = mps.map(|d| mps_client_env(d, tenant)).unwrap_or_default();
            match self.start_engine(tenant, gpu.clone(), &log_dir, &env).await {
                Ok(engine) => {
                    let detail = match engine.pgid() {
                        Some(pgid) => format!("{} (process group {pgid})", engine.base_url),
                        None => engine.base_url.clone(),
                    };
                    log.engine(&tenant.name, EngineState::Ready, detail)?;
                    engines.push(engine);
                }
                Err(e) => {
                    log.engine(&tenant.name, EngineState::Failed, e.to_string())?;
                    return Ok((engines, Some(e.to_string())));
                }
            }
        }
        Ok((engines, None))
    }

    /// Drives every tenant's load at once while watching the engines, writes the prompts,
    /// and judges the trial: invalid when a load could not run, events were lost, or an
    /// engine died (each death recorded).
    async fn measure(
        &self,
        trial: &Trial,
        tenants: &[&multitenant::config::Tenant],
        arrivals: &[Arrival],
        prompts: &[Arc<PromptFactory>],
        engines: &[RunningEngine],
        log: &TrialLog,
    ) -> std::io::Result<((TrialState, Option<String>), Vec<EngineDeath>)> {
        let trial_cancel = self.run.cancel.child_token();
        let watchers = watch_engine_exits(tenants, engines, &trial_cancel, self.clock);
        let reports = self
            .load(
                trial,
                tenants,
                arrivals,
                prompts,
                engines,
                trial_cancel.clone(),
            )
            .await?;
        self.remember_sweep_rates(trial, tenants, &reports);
        self.write_prompts(trial, tenants, prompts, &reports)?;
        trial_cancel.cancel();
        let mut died = Vec::new();
        for watcher in watchers {
            if let Ok(Some(death)) = watcher.await {
                died.push(death);
            }
        }
        let mut outcome = (TrialState::Finished, None);
        if let Some(reason) = reports.iter().find_map(|r| r.failure.clone()) {
            outcome = (TrialState::Invalid, Some(reason));
        } else if let Some(lost) = reports
            .iter()
            .map(|r| r.write_errors)
            .max()
            .filter(|&n| n > 0)
        {
            outcome = (
                TrialState::Invalid,
                Some(format!("{lost} request events could not be recorded")),
            );
        }
        for (tenant, at_ns, report) in &died {
            log.append(Event::Engine(EngineEvent {
                at_ns: *at_ns,
                tenant: tenant.clone(),
                state: EngineState::Exited,
                detail: format!("exited during the trial: {}", report.describe()),
            }))?;
        }
        if let Some((tenant, _, report)) = died.first() {
            outcome = (
                TrialState::Invalid,
                Some(format!(
                    "the engine of {tenant} exited during the trial ({})",
                    report.status
                )),
            );
        }
        Ok((outcome, died))
    }

    /// Stops every engine the trial started; those that died are only reaped.
    async fn stop_engines(
        &self,
        engines: Vec<RunningEngine>,
        tenants: &[&multitenant::config::Tenant],
        died: &[EngineDeath],
        log: &TrialLog,
    ) -> std::io::Result<()> {
        for (engine, tenant) in engines.into_iter().zip(tenants) {
            if died.iter().any(|(name, _, _)| name == &tenant.name) {
                engine.stop().await;
                continue;
            }
            log.engine(&tenant.name, EngineState::Stopping, String::new())?;
            let detail = match engine.stop().await {
                Some(report) => format!("stopped by the agent ({})", report.status),
                None => "stopped by the agent".into(),
            };
            log.engine(&tenant.name, EngineState::Exited, detail)?;
        }
        Ok(())
    }

    /// Starts one engine and waits until it is healthy, its deadline passes, or the run is
    /// stopped; an engine that does not make it is stopped again.
    async fn start_engine(
        &self,
        tenant: &multitenant::config::Tenant,
        gpu: Arc<SimGpu>,
        log_dir: &std::path::Path,
        env: &[(String, String)],
    ) -> Result<RunningEngine, EngineError> {
        let models = self.models_dir.clone();
        let ctx = StartContext {
            seed: self.experiment.seed,
            gpu,
            log_dir,
            extra_env: env,
            model_cache: &models,
        };
        let engine = RunningEngine::start(tenant, ctx).await?;
        let healthy = tokio::select! {
            result = engine.wait_healthy(&tenant.name, &self.http, health_timeout(tenant)) => result,
            () = self.run.cancel.cancelled() => Err(EngineError::Cancelled { tenant: tenant.name.clone() }),
        };
        match healthy {
            Ok(()) => Ok(engine),
            Err(e) => {
                engine.stop().await;
                Err(e)
            }
        }
    }

    /// Drives every tenant's workload at once, with host sampling alongside.
    async fn load(
        &self,
        trial: &Trial,
        tenants: &[&multitenant::config::Tenant],
        arrivals: &[Arrival],
        prompts: &[Arc<PromptFactory>],
        engines: &[RunningEngine],
        cancel: CancellationToken,
    ) -> std::io::Result<Vec<loadgen::LoadReport>> {
        let host_stream = self.run.streams.create(
            &format!("{}/host.jsonl", trial.name),
            self.header(trial, StreamKind::Host, false, None),
        )?;
        let stop_sampling = CancellationToken::new();
        let engine_groups = tenants
            .iter()
            .zip(engines)
            .filter_map(|(t, e)| Some((t.name.clone(), e.pgid()?)))
            .collect();
        let sampler = tokio::spawn(host::sample(
            host_stream,
            self.clock,
            HOST_INTERVAL,
            engine_groups,
            stop_sampling.clone(),
        ));
        let mut streams: Vec<Arc<StreamFile>> = Vec::new();
        let mut loads = Vec::new();
        for (((tenant, engine), &arrival), prompts) in
            tenants.iter().zip(engines).zip(arrivals).zip(prompts)
        {
            let workload = self.experiment.workloads[&tenant.workload].clone();
            let header = TenantHeader {
                name: tenant.name.clone(),
                model: tenant.engine.model().into(),
                engine: tenant.engine.kind().into(),
                workload: tenant.workload.clone(),
                api: workload.api,
                arrival: arrival.describe(),
                offered_rate: arrival.offered_rate(),
                streaming: workload.stream,
                forced_length: workload.ignore_eos,
                slo: (!workload.slo.is_empty()).then(|| workload.slo.clone()),
            };
            let stream = self.run.streams.create(
                &format!("{}/{}.jsonl", trial.name, tenant.name),
                self.header(
                    trial,
                    StreamKind::Tenant,
                    tenant.engine.is_simulated(),
                    Some(header),
                ),
            )?;
            streams.push(stream.clone());
            let target = Target {
                base_url: engine.base_url.clone(),
                api: workload.api,
                model: tenant.engine.model().into(),
                api_key: engine.api_key.clone(),
                stream: workload.stream,
                ignore_eos: workload.ignore_eos,
                request_fields: workload.request_fields.clone(),
            };
            let load = TenantLoad {
                tenant: tenant.name.clone(),
                target,
                workload,
                arrival,
                seed: self.tenant_seed(tenant),
                prompts: prompts.clone(),
                clock: self.clock,
                stream,
            };
            loads.push(load);
        }
        let gpu_sampler = match &self.gpu.nvml {
            Some(nvml) => {
                let header = self.header(trial, StreamKind::Gpu, false, None);
                let stream = self
                    .run
                    .streams
                    .create(&format!("{}/gpu.jsonl", trial.name), header)?;
                Some(tokio::spawn(gpu::sample(
                    nvml.clone(),
                    stream,
                    self.clock,
                    GPU_INTERVAL,
                    stop_sampling.clone(),
                )))
            }
            None => None,
        };
        let stop_scraping = CancellationToken::new();
        let mut scrapers = Vec::new();
        for (tenant, engine) in tenants.iter().zip(engines) {
            if !matches!(tenant.engine, multitenant::config::Engine::Vllm(_)) {
                continue;
            }
            let header = self.header(trial, StreamKind::EngineMetrics, false, None);
            let stream = self.run.streams.create(
                &format!("{}/{}.engine.jsonl", trial.name, tenant.name),
                header,
            )?;
            scrapers.push(tokio::spawn(engine_metrics::scrape(
                stream,
                self.http.clone(),
                engine.base_url.clone(),
                self.clock,
                ENGINE_METRICS_INTERVAL,
                stop_scraping.clone(),
            )));
        }
        let mut reports = Vec::new();
        if trial.mode == SharingMode::Exclusive {
            // One tenant at a time: the others' engines stay resident but idle.
            for load in loads {
                if cancel.is_cancelled() {
                    break;
                }
                reports.push(loadgen::run(load, cancel.clone()).await);
            }
        } else {
            let running: Vec<_> = loads
                .into_iter()
                .map(|load| tokio::spawn(loadgen::run(load, cancel.clone())))
                .collect();
            for load in running {
                match load.await {
                    Ok(report) => reports.push(report),
                    Err(e) => tracing::error!("a load task ended abnormally: {e}"),
                }
            }
        }
        stop_sampling.cancel();
        stop_scraping.cancel();
        let _ = sampler.await;
        if let Some(gpu_sampler) = gpu_sampler {
            let _ = gpu_sampler.await;
        }
        for scraper in scrapers {
            let _ = scraper.await;
        }
        for stream in streams {
            stream.close()?;
        }
        Ok(reports)
    }
}
