//! What every trial of one run shares: the run, its experiment and node, the clock, the GPUs,
//! and how streams are headed and engines started.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use multitenant::config::{Engine, Experiment, Node, Stage, Tenant, Trial};
use multitenant::events::{Header, StreamKind, TenantHeader, SCHEMA_VERSION};
use multitenant::layout::StreamName;

use super::search::{SearchSpending, SoloCapacities};
use super::stages::StagePlanner;
use super::trial::TrialRunner;
use super::{Run, RunState};
use crate::clock::RunClock;
use crate::engine::sim_gpu::SimGpu;
use crate::engine::{name_hash, EngineError, RunningEngine, StartContext};
use crate::gpu::NodeGpus;
use crate::recorder::StreamFile;

/// How long an engine may take to answer its health check.
const ENGINE_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// What every trial of one run shares.
pub(super) struct RunContext {
    pub run: Arc<Run>,
    /// Where bucket models are synced to, shared by runs: `<data_dir>/.models` (run ids
    /// cannot start with a dot, so it never meets a run folder).
    pub models_dir: PathBuf,
    pub experiment: Experiment,
    pub node: Node,
    pub clock: RunClock,
    pub gpu: NodeGpus,
    pub mps_control: PathBuf,
    /// The `nvidia-smi` that sets the GPU's compute mode for each trial.
    pub nvidia_smi: PathBuf,
    pub http: reqwest::Client,
    /// What earlier stages measured that later stages need.
    pub stages: StagePlanner,
    /// What the solo capacity searches found.
    pub solo: SoloCapacities,
    /// Engine time the node's capacity searches have taken, against `capacity.budget`.
    pub search_spent: SearchSpending,
}

impl RunContext {
    pub async fn execute(&self, trials: Vec<Trial>) -> RunState {
        for trial in &trials {
            if self.run.is_stopping() {
                return RunState::Stopped;
            }
            let ran = match TrialRunner::open(self, trial.clone()) {
                Ok(runner) => runner.run().await,
                Err(e) => Err(e),
            };
            if let Err(e) = ran {
                tracing::error!("run {}: trial {}: {e}", self.run.id, trial.name);
                return RunState::Failed(format!("trial {}: {e}", trial.name));
            }
            if let Some(reason) = self.run.streams.failure().reason() {
                return RunState::Failed(format!(
                    "trial {}: {reason}; the trials after it were not run",
                    trial.name
                ));
            }
        }
        if let Some(cap) = &self.experiment.capacity {
            for search in cap.searches(&self.node) {
                if self.run.is_stopping() {
                    return RunState::Stopped;
                }
                if let Err(e) = self.run_search(&search, cap).await {
                    tracing::error!("run {}: search {}: {e}", self.run.id, search.name);
                    return RunState::Failed(format!("capacity search {}: {e}", search.name));
                }
            }
        }
        if self.run.is_stopping() {
            RunState::Stopped
        } else {
            RunState::Finished
        }
    }

    /// Creates stream `name` of `trial`, headed as `kind`.
    pub fn create_stream(
        &self,
        trial: &Trial,
        name: &StreamName,
        kind: StreamKind,
        simulated: bool,
        tenant: Option<TenantHeader>,
    ) -> std::io::Result<Arc<StreamFile>> {
        let header = Header {
            schema_version: SCHEMA_VERSION.into(),
            tool_version: multitenant::TOOL_VERSION.into(),
            experiment: self.experiment.name.clone(),
            run_id: self.run.id.clone(),
            node: self.node.name.clone(),
            trial: trial.name.clone(),
            mode: trial.mode,
            stream: kind,
            zero_wall_ns: self.clock.zero_wall_ns(),
            simulated,
            stage: trial.stage.map(Stage::number),
            tenant: tenant.map(Box::new),
        };
        self.run
            .streams
            .create(&name.path_in_run(&trial.name), header)
    }

    /// The seed of a tenant's arrivals and prompts: the same in every trial, so a tenant
    /// sends the same requests alone and shared.
    pub fn tenant_seed(&self, tenant: &Tenant) -> u64 {
        self.experiment.seed ^ name_hash(&tenant.name)
    }

    /// Starts one engine and waits until it is healthy, its deadline passes, or the run is
    /// stopped; an engine that does not make it is stopped again.
    pub async fn start_engine(
        &self,
        tenant: &Tenant,
        adapters: &[&Tenant],
        gpu: Arc<SimGpu>,
        log_dir: &std::path::Path,
        env: &[(String, String)],
    ) -> Result<RunningEngine, EngineError> {
        let gpu_memory = self.gpu.memory_now(0);
        let ctx = StartContext {
            seed: self.experiment.seed,
            gpu,
            log_dir,
            extra_env: env,
            model_cache: &self.models_dir,
            gpu_memory,
            gpu_total: gpu_memory.map(|m| m.total).or(self.node.gpu_memory_bytes),
        };
        let engine = RunningEngine::start(tenant, adapters, ctx).await?;
        let health_timeout = match &tenant.engine {
            Engine::Vllm(v) => v.startup_timeout,
            _ => ENGINE_HEALTH_TIMEOUT,
        };
        let healthy = tokio::select! {
            result = engine.wait_healthy(&tenant.name, &self.http, health_timeout) => result,
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
}
