//! Runs: one node's trials of an experiment, executed by the agent, recorded to disk.
//!
//! A run owns its folder `<data_dir>/<run_id>/` and its streams. Trials run one after another;
//! inside a trial, engines start one at a time (each must answer its health check before the
//! next starts), then every tenant's load runs at once, then engines stop and streams close.
//! A trial whose engine fails is marked `invalid` and the run goes on to the next trial.
//!
//! - this module: the registry of runs ([`RunManager`], [`RunState`]);
//! - `trial`: one trial's phases (`TrialRunner`); `engines`: its MPS and engine phases;
//! - `slot`: one tenant's parts of a trial, owned together (`TenantSlot`); `engine_slot`: one
//!   engine of a trial (`EngineSlot`), which serves its owner and the owner's LoRA adapters;
//! - [`outcome`]: why a trial failed ([`TrialFailure`]), typed until it is written;
//! - `sampling`: the trial's samplers as one unit; `stages`: which arrival a stage runs;
//! - `search`: a capacity search, engines kept across its probes;
//! - `log`: the trial's `agent.jsonl`; `context`: what a run's trials share;
//!   `loads`: the tenants' loads run side by side and judged.

mod clean_slate;
mod context;
mod engine_slot;
mod engines;
mod gpu_setup;
mod loads;
mod log;
pub mod outcome;
mod retain;
mod sampling;
mod search;
mod slot;
mod stages;
mod trial;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use multitenant::config::Experiment;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use outcome::TrialFailure;
pub use retain::ConfirmError;

use crate::clock::{unix_now, RunClock};
use crate::gpu::{GpuStatus, NodeGpus};
use crate::lease::{self, Contact};
use crate::recorder::RunStreams;
use crate::retention::Retention;
use context::RunContext;
use stages::StagePlanner;

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

impl From<&RunState> for multitenant::proto::v1::RunStatus {
    fn from(state: &RunState) -> Self {
        match state {
            RunState::Running => Self::Running,
            RunState::Finished => Self::Finished,
            RunState::Failed(_) => Self::Failed,
            RunState::Stopped => Self::Stopped,
        }
    }
}

impl RunState {
    /// The name the run record on disk keeps.
    pub fn name(&self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Failed(_) => "failed",
            RunState::Stopped => "stopped",
        }
    }
}

use multitenant::layout::RUN_RECORD_FILE as RUN_RECORD;

/// What [`RUN_RECORD`] holds: written at a run's start, completed at its end, read by a later
/// agent process to serve the run again.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunRecord {
    config_sha256: String,
    trials: Vec<String>,
    /// `None` while the run runs; how it ended and why after (the reason is empty unless it
    /// failed). Written as `["finished", ""]`, as records always were.
    ended: Option<(RunEnd, String)>,
    /// When and whether it ended and was confirmed (absent in records of older agents).
    #[serde(default, flatten)]
    times: RunTimes,
}

/// How a run ended, as its record on disk names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum RunEnd {
    Finished,
    Failed,
    Stopped,
}

/// When a run ended and when a coordinator confirmed its copy, in seconds since the Unix
/// epoch: what retention goes by.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct RunTimes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ended_unix_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confirmed_unix_s: Option<u64>,
}

impl RunRecord {
    fn write(&self, root: &std::path::Path) -> std::io::Result<()> {
        let path = root.join(RUN_RECORD);
        let partial = root.join(".run.json.partial");
        std::fs::write(&partial, serde_json::to_vec(self)?)?;
        std::fs::rename(partial, path)
    }

    fn state(&self) -> RunState {
        match &self.ended {
            None => RunState::Failed(
                "interrupted: the agent ended (crash, kill or restart) while this run was running; every whole line recorded until then is kept".into(),
            ),
            Some((RunEnd::Finished, _)) => RunState::Finished,
            Some((RunEnd::Stopped, _)) => RunState::Stopped,
            Some((RunEnd::Failed, reason)) => RunState::Failed(reason.clone()),
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
    /// Cancelled once the run has ended, whichever way.
    ended: CancellationToken,
    /// When the coordinator last called about this run or read its stream.
    contact: Contact,
    /// When the agent last got any authenticated call.
    agent_contact: Arc<Contact>,
    /// Why the run was stopped, when the agent stopped it by itself.
    stop_reason: Mutex<Option<String>>,
    /// When it ended and was confirmed.
    times: Mutex<RunTimes>,
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

    /// Whether the run was asked to stop.
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Records that the coordinator is there: it called about this run or reads its stream.
    pub fn renew(&self) {
        self.contact.renew();
        self.agent_contact.renew();
    }

    /// Why the run stopped, as its trials record it; `None` while it is not stopping.
    pub fn stop_cause(&self) -> Option<TrialFailure> {
        self.is_stopping().then(|| {
            self.stop_reason()
                .map_or(TrialFailure::Stopped, TrialFailure::LeaseLapsed)
        })
    }

    /// Why the agent stopped the run by itself (its lease lapsed), if it did.
    pub fn stop_reason(&self) -> Option<String> {
        self.stop_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The record of this run in `state`.
    fn record(&self, state: &RunState) -> RunRecord {
        self.record_with(state, *self.times.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The record of this run in `state` with `times` (for a caller that holds their lock).
    fn record_with(&self, state: &RunState, times: RunTimes) -> RunRecord {
        RunRecord {
            config_sha256: self.config_sha256.clone(),
            trials: self.trials.clone(),
            times,
            ended: match state {
                RunState::Running => None,
                RunState::Finished => Some((RunEnd::Finished, String::new())),
                RunState::Stopped => Some((RunEnd::Stopped, String::new())),
                RunState::Failed(reason) => Some((RunEnd::Failed, reason.clone())),
            },
        }
    }

    fn set_state(&self, state: RunState) {
        let ended = state != RunState::Running;
        if ended {
            // Gone before anyone learns that the run ended and looks at its folder.
            self.streams.release_reserve();
            self.times
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .ended_unix_s = Some(unix_now());
            if let Err(e) = self.record(&state).write(self.streams.root()) {
                eprintln!("run {}: cannot record its end ({e}); a restarted agent will call it interrupted", self.id);
            }
        }
        self.state.send_replace(state);
        if ended {
            self.ended.cancel();
        }
        self.streams.poke();
    }

    /// Stops the run once nobody has called about it for `lease`; gives up watching once the
    /// run ends or is stopped otherwise, so a stop is never recorded as a lapse.
    async fn hold_lease(&self, lease: Duration) {
        let silent = tokio::select! {
            silent = lease::lapse(&self.contact, lease, &self.ended) => silent,
            () = self.cancel.cancelled() => None,
        };
        let Some(silent) = silent else {
            return;
        };
        let reason = format!(
            "its lease lapsed: no call from the coordinator for {} (launcher.lease is {}); the run was stopped, its engines ended, its files kept",
            humantime::format_duration(Duration::from_secs(silent.as_secs())),
            humantime::format_duration(lease)
        );
        eprintln!("run {}: {reason}", self.id);
        *self.stop_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.stop();
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
    nvidia_smi: PathBuf,
    http: reqwest::Client,
    runs: Mutex<HashMap<String, Arc<Run>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    contact: Arc<Contact>,
    /// Set by the first [`RunManager::start`] of this process.
    started_any: std::sync::atomic::AtomicBool,
    /// Which confirmed runs [`RunManager::sweep`] deletes.
    retention: Retention,
    /// Held by the sweep that runs.
    sweeping: Mutex<()>,
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
            nvidia_smi: PathBuf::from("nvidia-smi"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(4096)
                .tcp_nodelay(true)
                .build()
                .unwrap_or_default(),
            runs: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            contact: Arc::new(Contact::default()),
            started_any: Default::default(),
            retention: Retention::default(),
            sweeping: Mutex::new(()),
        }
    }

    /// The same manager, deleting confirmed runs as `retention` says.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The same manager, setting each trial's GPU compute mode through `nvidia_smi` (a name on
    /// PATH or a path; `nvidia-smi` unless told).
    pub fn with_nvidia_smi(mut self, nvidia_smi: PathBuf) -> Self {
        self.nvidia_smi = nvidia_smi;
        self
    }

    /// Which confirmed runs it deletes.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// When any authenticated call last came.
    pub fn contact(&self) -> &Arc<Contact> {
        &self.contact
    }

    /// Whether this agent process was ever given a run (runs taken up from an earlier
    /// process do not count: a kept node's new coordinator still gets the first-run wait).
    pub fn has_had_runs(&self) -> bool {
        self.started_any.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether any run is still running.
    pub fn any_running(&self) -> bool {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|r| r.state() == RunState::Running)
    }

    /// What the agent knows of its GPUs.
    pub fn gpu(&self) -> &GpuStatus {
        &self.gpu.status
    }

    /// Whether `mps` trials can run with real engines: `ready (<control program>)` or why not.
    pub fn mps_readiness(&self) -> String {
        let control = self.mps_control.display().to_string();
        match (&self.gpu.status, crate::engine::find_executable(&control)) {
            (GpuStatus::Unavailable(reason), _) => format!("not ready: no GPU ({reason})"),
            (_, None) => format!("not ready: {control} not found"),
            (_, Some(path)) => format!("ready ({})", path.display()),
        }
    }

    /// The run `id`, if this agent has it.
    pub fn get(&self, id: &str) -> Option<Arc<Run>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The node's preflight against `node` of `config_yaml`: the doctor's checks (vLLM's
    /// only when the node has vLLM tenants, with their executable) and, per trial it would
    /// refuse, why.
    pub async fn doctor(
        &self,
        config_yaml: &str,
        node: &str,
    ) -> Result<(Vec<crate::doctor::Check>, Vec<(String, Vec<String>)>), String> {
        let experiment =
            Experiment::from_yaml(config_yaml, "config_yaml").map_err(|e| e.to_string())?;
        let node = experiment
            .node(node)
            .ok_or_else(|| format!("the config has no node named {node:?}"))?;
        let vllm = node.tenants.iter().find_map(|t| match &t.engine {
            multitenant::config::Engine::Vllm(v) => Some(v.executable.as_str()),
            _ => None,
        });
        let mps_control = self.mps_control.display().to_string();
        let checks = crate::doctor::run(&self.gpu, vllm, &mps_control, &self.data_dir).await;
        let facts = crate::preflight::NodeFacts::probe(&self.gpu, &self.mps_control);
        let cuda_failed = checks
            .iter()
            .find(|c| c.name == "cuda" && c.status == crate::doctor::Status::Fail)
            .map(|c| {
                format!(
                    "the engine cannot use this GPU (agent doctor: cuda FAIL): {}",
                    c.detail
                )
            });
        let refusals = node
            .trials(&experiment.workloads)
            .iter()
            .map(|t| {
                let mut reasons = crate::preflight::refusals(t, node, &facts);
                let runs_vllm = node.trial_engines(t).into_iter().any(|i| {
                    matches!(node.tenants[i].engine, multitenant::config::Engine::Vllm(_))
                });
                if let Some(reason) = cuda_failed.clone().filter(|_| runs_vllm) {
                    reasons.push(crate::preflight::Refusal {
                        reason,
                        memory: false,
                    });
                }
                (
                    t.name.clone(),
                    reasons.into_iter().map(|r| r.reason).collect(),
                )
            })
            .filter(|(_, reasons): &(String, Vec<String>)| !reasons.is_empty())
            .collect();
        Ok((checks, refusals))
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
            ended: CancellationToken::new(),
            contact: Contact::default(),
            agent_contact: self.contact.clone(),
            stop_reason: Mutex::new(None),
            times: Mutex::default(),
        });
        run.record(&RunState::Running).write(run.streams.root())?;
        runs.insert(run_id.to_owned(), run.clone());
        self.started_any
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let leased = run.clone();
        let lease = experiment.launcher.lease;
        self.tracker
            .spawn(async move { leased.hold_lease(lease).await });
        let ctx = RunContext {
            run: run.clone(),
            models_dir: self.data_dir.join(".models"),
            experiment,
            node,
            clock: RunClock::start(),
            gpu: self.gpu.clone(),
            mps_control: self.mps_control.clone(),
            nvidia_smi: self.nvidia_smi.clone(),
            http: self.http.clone(),
            stages: StagePlanner::default(),
            solo: Default::default(),
            search_spent: Default::default(),
        };
        self.tracker.spawn(async move {
            // A panic must still end the run: its lease watcher and the idle exit wait on it.
            let executed = std::panic::AssertUnwindSafe(ctx.execute(trials)).catch_unwind();
            let state = executed.await.unwrap_or_else(|_| {
                RunState::Failed("the run's task panicked; its files are kept".into())
            });
            ctx.run.set_state(state);
        });
        Ok((run, false))
    }

    /// Takes up the runs an earlier agent process left in the data folder, so that their
    /// streams are served again: ended runs as they ended, a run that was running when that
    /// process died as failed, "interrupted", with its open streams closed at their last
    /// whole line. Returns one line per run taken up.
    pub fn recover(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.data_dir) else {
            return Vec::new();
        };
        let mut said = Vec::new();
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let root = entry.path();
            if id.starts_with(retain::DELETING_PREFIX) {
                // A sweep was deleting it when the agent ended: finished now.
                if let Err(e) = std::fs::remove_dir_all(&root) {
                    said.push(format!("cannot finish deleting {}: {e}", root.display()));
                }
                continue;
            }
            // Run ids never start with '.': model downloads and the like live there.
            if id.starts_with('.') {
                continue;
            }
            let Ok(text) = std::fs::read(root.join(RUN_RECORD)) else {
                continue;
            };
            // Before the streams are taken up (which may close and checksum them): an
            // interrupted run ended when its streams last changed.
            let last_change = retain::last_change(&root);
            let recovered = serde_json::from_slice::<RunRecord>(&text)
                .map_err(|e| e.to_string())
                .and_then(|record| {
                    let streams = RunStreams::recover(root.clone()).map_err(|e| e.to_string())?;
                    Ok((record, streams))
                });
            let (record, streams) = match recovered {
                Ok(r) => r,
                Err(e) => {
                    said.push(format!("run {id}: not taken up, {}: {e}", root.display()));
                    continue;
                }
            };
            let state = record.state();
            let ended = CancellationToken::new();
            ended.cancel();
            let times = RunTimes {
                ended_unix_s: record.times.ended_unix_s.or(last_change),
                ..record.times
            };
            let run = Arc::new(Run {
                id: id.clone(),
                trials: record.trials.clone(),
                streams: Arc::new(streams),
                config_sha256: record.config_sha256.clone(),
                state: watch::Sender::new(state.clone()),
                cancel: CancellationToken::new(),
                ended,
                contact: Contact::default(),
                agent_contact: self.contact.clone(),
                stop_reason: Mutex::new(None),
                times: Mutex::new(times),
            });
            if record.ended.is_some() {
                said.push(format!("run {id}: {}, served again", state.name()));
            } else {
                // Recorded now, so that a later restart reads the interruption as its end.
                if let Err(e) = run.record(&state).write(&root) {
                    said.push(format!("run {id}: cannot record its interruption ({e})"));
                }
                said.push(format!("run {id}: was running when the agent ended; marked interrupted, its streams kept to their last whole line"));
            }
            runs.insert(id, run);
        }
        said.sort();
        said
    }

    /// Stops every run and waits for them to record their end.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_record_names_its_end_as_records_always_did() {
        let older = r#"{"config_sha256":"x","trials":[],"ended":["stopped",""]}"#;
        let record: RunRecord = serde_json::from_str(older).expect("an older agent's record");
        assert_eq!(record.state(), RunState::Stopped);
        let failed = RunRecord {
            config_sha256: "x".into(),
            trials: Vec::new(),
            ended: Some((RunEnd::Failed, "why".into())),
            times: RunTimes::default(),
        };
        let text = serde_json::to_string(&failed).expect("json");
        assert!(text.contains(r#""ended":["failed","why"]"#), "{text}");
    }

    #[test]
    fn a_run_that_was_running_when_its_agent_died_is_taken_up_as_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = RunRecord {
            config_sha256: "abc".into(),
            trials: vec!["mps".into()],
            ended: None,
            times: RunTimes::default(),
        };
        let root = dir.path().join("r1");
        std::fs::create_dir_all(root.join("mps")).expect("run folder");
        record.write(&root).expect("record");
        std::fs::write(root.join("mps/agent.jsonl"), "{\"a\":1}\n{\"a\"").expect("stream");
        let finished = RunRecord {
            ended: Some((RunEnd::Finished, String::new())),
            ..record
        };
        let done = dir.path().join("r2");
        std::fs::create_dir_all(&done).expect("run folder");
        finished.write(&done).expect("record");
        let manager = RunManager::new(
            dir.path().to_owned(),
            NodeGpus::unavailable("tests run without a GPU"),
            "no-mps".into(),
        );
        let said = manager.recover();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].contains("r1: was running when the agent ended"),
            "{said:?}"
        );
        let run = manager.get("r1").expect("taken up");
        assert!(
            matches!(run.state(), RunState::Failed(r) if r.starts_with("interrupted: ")),
            "{:?}",
            run.state()
        );
        assert_eq!(
            run.streams.all()[0].snapshot().lines,
            1,
            "the torn line is cut"
        );
        assert_eq!(
            manager.get("r2").expect("taken up").state(),
            RunState::Finished
        );
        // The interruption is recorded: a second restart reads it as the run's end.
        let again = RunManager::new(
            dir.path().to_owned(),
            NodeGpus::unavailable("tests run without a GPU"),
            "no-mps".into(),
        );
        again.recover();
        assert!(
            matches!(again.get("r1").expect("r1").state(), RunState::Failed(r) if r.starts_with("interrupted: "))
        );
    }
}
