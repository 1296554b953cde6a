//! The engine phases of a trial: the MPS daemon, engines started one by one, MPS clients
//! verified, exits watched while the load runs, and every engine stopped.

use std::sync::Arc;

use multitenant::config::{Engine, SharingMode, Tenant};
use multitenant::events::{EngineState, MpsState};
use multitenant::layout::{ENGINE_LOGS_DIR, MPS_LOGS_DIR};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::engine_slot::EngineSlot;
use super::outcome::{EngineDeath, MpsClientError, TrialFailure};
use super::trial::{Halt, TrialRunner};
use crate::engine::sim_gpu::SimGpu;
use crate::mps::MpsDaemon;

/// What a tenant's engine needs under MPS: the daemon's pipe folder and its own limits.
fn mps_client_env(daemon: &MpsDaemon, tenant: &Tenant) -> Vec<(String, String)> {
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
/// PIDs per engine (named by the tenant whose engine it is), or which is not a client.
async fn verify_mps_clients(
    daemon: &MpsDaemon,
    slots: &[EngineSlot<'_>],
) -> Result<String, MpsClientError> {
    let clients = daemon.client_pids().await.map_err(MpsClientError::Query)?;
    let mut found = Vec::new();
    for slot in slots {
        let Some(pgid) = slot.engine.as_ref().and_then(|e| e.pgid()) else {
            continue;
        };
        let members = crate::engine::process::group_pids(pgid);
        let ours: Vec<i32> = members
            .iter()
            .copied()
            .filter(|p| clients.contains(p))
            .collect();
        if ours.is_empty() {
            return Err(MpsClientError::NotAClient {
                tenant: slot.name().to_owned(),
                members,
                clients,
            });
        }
        found.push(format!("{}: {ours:?}", slot.name()));
    }
    Ok(format!("MPS clients: {}", found.join(", ")))
}

impl TrialRunner<'_> {
    /// Starts the trial's own MPS daemon when it shares real engines under MPS.
    pub(super) async fn start_mps(&mut self) -> Result<(), Halt> {
        let needs_mps = self.trial.mode == SharingMode::Mps
            && self
                .engines
                .iter()
                .any(|e| matches!(e.owner.engine, Engine::Vllm(_)));
        if !needs_mps {
            return Ok(());
        }
        let root = self.ctx.run.streams.root();
        let key = format!("{}/{}", root.display(), self.trial.name);
        let log_dir = root.join(&self.trial.name).join(MPS_LOGS_DIR);
        let control = &self.ctx.mps_control;
        match MpsDaemon::start(control, &key, &log_dir, &self.ctx.node.mps).await {
            Ok(daemon) => {
                let detail = daemon
                    .client_env()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.log.mps(MpsState::Started, detail)?;
                self.mps = Some(daemon);
                Ok(())
            }
            Err(e) => {
                self.log.mps(MpsState::Failed, e.to_string())?;
                Err(TrialFailure::MpsStart(e).into())
            }
        }
    }

    /// Starts the engines one after another: vLLM sizes its memory from what is free while it
    /// starts, so nothing else may change GPU memory meanwhile. Stops at the first that fails.
    /// An engine with adapters loads every adapter of the node, so it is the same in each trial.
    pub(super) async fn start_engines(&mut self) -> Result<(), Halt> {
        let gpu = Arc::new(SimGpu::new(
            self.trial.mode,
            self.ctx.node.sim_gpu.mps_interference,
        ));
        let log_dir = self
            .ctx
            .run
            .streams
            .root()
            .join(&self.trial.name)
            .join(ENGINE_LOGS_DIR);
        let no_mps = if self.mps.is_none() && !self.cuda_tenants().is_empty() {
            self.no_mps_env().map_err(|e| {
                TrialFailure::Refused(vec![format!(
                    "the engines of this trial without MPS need an empty MPS pipe folder of their own, so that no MPS daemon on the node can take them in, and {e}; remove that folder (its owner's MPS daemon first) or free the system temp folder"
                )])
            })?
        } else {
            Vec::new()
        };
        for slot in &mut self.engines {
            let tenant = slot.owner;
            let kind = match slot.adapters.len() {
                0 => tenant.engine.kind().to_owned(),
                1 => format!("{} with 1 LoRA adapter", tenant.engine.kind()),
                n => format!("{} with {n} LoRA adapters", tenant.engine.kind()),
            };
            self.log.engine(&tenant.name, EngineState::Starting, kind)?;
            let env = match &self.mps {
                Some(daemon) => mps_client_env(daemon, tenant),
                None if matches!(tenant.engine, Engine::Vllm(_)) => no_mps.clone(),
                None => Vec::new(),
            };
            match self
                .ctx
                .start_engine(tenant, &slot.adapters, gpu.clone(), &log_dir, &env)
                .await
            {
                Ok(engine) => {
                    let detail = match engine.pgid() {
                        Some(pgid) => format!("{} (process group {pgid})", engine.base_url),
                        None => engine.base_url.clone(),
                    };
                    self.log.engine(&tenant.name, EngineState::Ready, detail)?;
                    slot.engine = Some(engine);
                }
                Err(e) => {
                    self.log
                        .engine(&tenant.name, EngineState::Failed, e.to_string())?;
                    return Err(TrialFailure::EngineStart(e).into());
                }
            }
        }
        Ok(())
    }

    /// Under MPS, refuses to measure unless every engine is a client of the trial's daemon: a
    /// client that missed the daemon would run time-sliced without any error.
    pub(super) async fn verify_mps(&mut self) -> Result<(), Halt> {
        let Some(daemon) = &self.mps else {
            return Ok(());
        };
        match verify_mps_clients(daemon, &self.engines).await {
            Ok(detail) => Ok(self.log.mps(MpsState::Verified, detail)?),
            Err(e) => {
                self.log.mps(MpsState::Failed, e.to_string())?;
                Err(TrialFailure::MpsNotShared(e).into())
            }
        }
    }

    /// One task per process engine that waits for an exit during the trial. An exit cancels
    /// the trial's load (the results cannot be trusted, and under MPS a fault reaches every
    /// tenant); the tasks end with `None` once `measuring` is cancelled for any other reason.
    pub(super) fn watch_engine_exits(
        &self,
        measuring: &CancellationToken,
    ) -> Vec<(usize, JoinHandle<Option<EngineDeath>>)> {
        let clock = self.ctx.clock;
        self.engines
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let mut exited = slot.engine.as_ref()?.exit_watch()?;
                let measuring = measuring.clone();
                let watcher = self.tasks.spawn(async move {
                    tokio::select! {
                        changed = exited.wait_for(Option::is_some) => {
                            let report = changed.ok()?.clone()?;
                            measuring.cancel();
                            Some(EngineDeath { at_ns: clock.now_ns(), report })
                        }
                        () = measuring.cancelled() => None,
                    }
                });
                Some((index, watcher))
            })
            .collect()
    }

    /// Waits for the exit watchers and records every engine that died while measuring.
    pub(super) async fn record_engine_deaths(
        &mut self,
        watchers: Vec<(usize, JoinHandle<Option<EngineDeath>>)>,
    ) -> std::io::Result<()> {
        for (index, watcher) in watchers {
            if let Ok(Some(death)) = watcher.await {
                self.engines[index].death = Some(death);
            }
        }
        for slot in &self.engines {
            let Some(death) = &slot.death else { continue };
            let detail = format!("exited during the trial: {}", death.report.describe());
            self.log
                .engine_at(death.at_ns, slot.name(), EngineState::Exited, detail)?;
        }
        Ok(())
    }

    /// Stops every engine the trial started; those that died are only reaped.
    pub(super) async fn stop_engines(&mut self) -> std::io::Result<()> {
        for slot in &mut self.engines {
            let Some(engine) = slot.engine.take() else {
                continue;
            };
            if slot.death.is_some() {
                engine.stop().await;
                continue;
            }
            let name = &slot.owner.name;
            self.log
                .engine(name, EngineState::Stopping, String::new())?;
            let detail = match engine.stop().await {
                Some(report) => format!("stopped by the agent ({})", report.status),
                None => "stopped by the agent".into(),
            };
            self.log.engine(name, EngineState::Exited, detail)?;
        }
        Ok(())
    }

    /// Quits the trial's MPS daemon, if it has one.
    pub(super) async fn quit_mps(&mut self) -> std::io::Result<()> {
        if let Some(daemon) = self.mps.take() {
            let report = daemon.quit().await;
            self.log.mps(MpsState::Stopped, report.status)?;
        }
        Ok(())
    }
}
