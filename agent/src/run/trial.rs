//! One trial: its phases in order, each tenant's parts in one [`TenantSlot`], every task it
//! spawns in one tracker, and its end recorded once everything it started has stopped.

use std::sync::Arc;

use multitenant::config::{SharingMode, Trial};
use multitenant::events::{Event, ProbeStoppedEvent, StreamKind};
use multitenant::layout::StreamName;
use tokio_util::task::TaskTracker;

use super::engine_slot::EngineSlot;
use super::gpu_setup::ModeHold;
use super::loads::{judge, run_loads};
use super::log::TrialLog;
use super::outcome::TrialFailure;
use super::sampling::Samplers;
use super::slot::{LoadOutcome, TenantSlot};
use super::RunContext;
use crate::loadgen::start_line::{start_line, StartTicket};
use crate::loadgen::{self, prompt_log::PromptLog, prompts::PromptFactory};
use crate::mps::MpsDaemon;

/// Why a phase did not lead on to the next: the trial failed (it ends `invalid` with the
/// reason), or the agent could not write its own stream.
pub(super) enum Halt {
    Failed(TrialFailure),
    Io(std::io::Error),
}

impl From<TrialFailure> for Halt {
    fn from(failure: TrialFailure) -> Self {
        Halt::Failed(failure)
    }
}

impl From<std::io::Error> for Halt {
    fn from(e: std::io::Error) -> Self {
        Halt::Io(e)
    }
}

/// A trial while it runs.
pub(super) struct TrialRunner<'a> {
    pub ctx: &'a RunContext,
    pub trial: Trial,
    pub log: TrialLog,
    pub slots: Vec<TenantSlot<'a>>,
    /// The engines the trial runs: its tenants' own, and the base of each adapter in it.
    pub engines: Vec<EngineSlot<'a>>,
    pub mps: Option<MpsDaemon>,
    /// The GPU's compute mode as the trial set it, to put back after.
    pub compute_mode: Option<ModeHold>,
    /// The empty MPS pipe folder that keeps the engines of a trial without MPS away from any
    /// daemon on the node.
    pub no_mps_pipe: Option<std::path::PathBuf>,
    /// Every task the trial spawns; all have ended before the trial's end is recorded.
    pub tasks: TaskTracker,
}

/// How long a trial waits for GPU memory the node's preflight finds short, before refusing.
const GPU_MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl<'a> TrialRunner<'a> {
    /// Creates the trial's agent stream and records its start, with what the reader must know
    /// from the outset (no GPU sampling, simulated engines).
    pub fn open(ctx: &'a RunContext, trial: Trial) -> std::io::Result<Self> {
        let node = &ctx.node;
        let hosts = node.trial_engines(&trial);
        let engines: Vec<EngineSlot<'a>> = hosts
            .iter()
            .map(|&i| EngineSlot::new(&node.tenants[i], node.adapters_of(i)))
            .collect();
        let slots: Vec<TenantSlot<'a>> = trial
            .tenants
            .iter()
            .map(|&i| {
                let tenant = &node.tenants[i];
                let workload = &ctx.experiment.workloads[&tenant.workload];
                let host = hosts
                    .iter()
                    .position(|&h| h == node.host_of(i))
                    .unwrap_or_default();
                TenantSlot::new(tenant, workload, ctx.tenant_seed(tenant), host)
            })
            .collect();
        let simulated = slots.iter().any(|s| s.tenant.engine.is_simulated());
        let log = TrialLog::open(ctx, &trial, simulated)?;
        Ok(Self {
            ctx,
            trial,
            log,
            slots,
            engines,
            mps: None,
            compute_mode: None,
            no_mps_pipe: None,
            tasks: TaskTracker::new(),
        })
    }

    /// Runs the trial: prepares every tenant's load, starts MPS when needed and the engines
    /// one by one, measures, then stops everything it started. A phase that fails marks the
    /// trial invalid with its reason and skips the phases that depend on it. Only an I/O
    /// failure of the agent's own stream is an error.
    pub async fn run(mut self) -> std::io::Result<()> {
        let measured = self.prepare_and_measure().await;
        self.finish(measured).await
    }

    async fn prepare_and_measure(&mut self) -> Result<(), Halt> {
        self.set_up().await?;
        self.measure().await
    }

    /// Every phase before the load: prompts and arrivals, MPS, engines, MPS clients.
    pub(super) async fn set_up(&mut self) -> Result<(), Halt> {
        let refused = self.wait_for_gpu_memory().await;
        self.prepare_load(refused)?;
        self.hold_compute_mode().await?;
        self.start_mps().await?;
        self.start_engines().await?;
        self.verify_mps().await
    }

    /// Stops everything the trial started, waits for its tasks, and records its end.
    pub(super) async fn finish(mut self, measured: Result<(), Halt>) -> std::io::Result<()> {
        self.stop_engines().await?;
        self.quit_mps().await?;
        self.release_gpu().await?;
        self.tasks.close();
        self.tasks.wait().await;
        // A write that failed anywhere in the run is the reason, before what it led to.
        let recording = self.ctx.run.streams.failure().reason().map(str::to_owned);
        let failure = match (recording, measured) {
            (Some(reason), _) => Some(TrialFailure::Recording(reason)),
            (None, Ok(())) => None,
            (None, Err(Halt::Failed(failure))) => Some(failure),
            (None, Err(Halt::Io(e))) => return Err(e),
        };
        self.log.end(self.ctx.run.stop_cause(), failure)
    }

    /// The node's preflight of this trial (MPS, GPUs, free GPU memory; see
    /// [`crate::preflight`]), after waiting at most [`GPU_MEMORY_WAIT`] while GPU memory is all
    /// it finds short: the previous trial's engines may still be giving theirs back.
    async fn wait_for_gpu_memory(&self) -> Vec<crate::preflight::Refusal> {
        let deadline = tokio::time::Instant::now() + GPU_MEMORY_WAIT;
        loop {
            let facts = crate::preflight::NodeFacts::probe(&self.ctx.gpu, &self.ctx.mps_control);
            let refused = crate::preflight::refusals(&self.trial, &self.ctx.node, &facts);
            let only_memory = !refused.is_empty() && refused.iter().all(|r| r.memory);
            if !only_memory || tokio::time::Instant::now() >= deadline || self.ctx.run.is_stopping()
            {
                return refused;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Everything that can be known wrong before an engine starts: the node's preflight
    /// (`refused`, from [`Self::wait_for_gpu_memory`]), engine preflight, this
    /// stage's arrivals, and each tenant's prompts (what a dataset or trace skipped is warned).
    /// The first problem found is the trial's reason.
    fn prepare_load(&mut self, refused: Vec<crate::preflight::Refusal>) -> Result<(), Halt> {
        let mut problems: Vec<String> = refused.into_iter().map(|r| r.reason).collect();
        problems.extend(
            self.engines
                .iter()
                .filter_map(|e| crate::engine::preflight(e.owner, &e.adapters).err())
                .map(|e| e.to_string()),
        );
        let mut failure = (!problems.is_empty()).then_some(TrialFailure::Refused(problems));
        for slot in &mut self.slots {
            let planned = self
                .ctx
                .stages
                .arrival(&self.trial, slot.name(), slot.workload);
            match planned {
                Ok(arrival) => slot.arrival = Some(arrival),
                Err(reason) => {
                    failure.get_or_insert(reason);
                    break;
                }
            }
        }
        for slot in &mut self.slots {
            let workload = slot.workload;
            let tokenizer = workload.tokenizer.as_deref();
            match PromptFactory::new(&workload.data, tokenizer, slot.seed, slot.name()) {
                Ok((factory, notes)) => {
                    for note in notes {
                        self.log.warn(format!("{}: {note}", slot.name()))?;
                    }
                    slot.prompts = Some(Arc::new(factory));
                }
                Err(e) => {
                    failure.get_or_insert(TrialFailure::Prompts {
                        tenant: slot.name().to_owned(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        failure.map_or(Ok(()), |f| Err(f.into()))
    }

    /// Drives every tenant's load at once (one after another in `exclusive` trials) with the
    /// samplers alongside, watching the engines; writes the prompts; judges the trial.
    pub(super) async fn measure(&mut self) -> Result<(), Halt> {
        let measuring = self.ctx.run.cancel.child_token();
        // Ends the exit watchers on every way out of here, errors included.
        let _end_watchers = measuring.clone().drop_guard();
        let watchers = self.watch_engine_exits(&measuring);
        // A write that fails ends the loads at once: nothing after it could be recorded.
        let (failed, stop_loads) = (
            self.ctx.run.streams.failure().token().clone(),
            measuring.clone(),
        );
        self.tasks.spawn(async move {
            tokio::select! {
                () = failed.cancelled() => stop_loads.cancel(),
                () = stop_loads.cancelled() => {}
            }
        });
        let samplers = Samplers::start(self.ctx, &self.trial, &self.engines, &self.tasks)?;
        let mut streams = Vec::new();
        let mut prompt_writers = Vec::new();
        let mut loads = Vec::new();
        let one_at_a_time = self.trial.mode == SharingMode::Exclusive;
        let clock = self.ctx.clock;
        let mut tickets = if one_at_a_time {
            (0..self.slots.len())
                .map(|_| StartTicket::alone(clock))
                .collect()
        } else {
            start_line(clock, self.slots.len())
        };
        for slot in &self.slots {
            let not_prepared =
                || TrialFailure::Load(format!("{}: its load was not prepared", slot.name()));
            let arrival = slot.arrival.ok_or_else(not_prepared)?;
            let prompts = slot.prompts.clone().ok_or_else(not_prepared)?;
            let prompt_stream = self.ctx.create_stream(
                &self.trial,
                &StreamName::Prompts(slot.name().to_owned()),
                StreamKind::Prompts,
                slot.tenant.engine.is_simulated(),
                None,
            )?;
            let (prompt_log, writer) =
                PromptLog::start(slot.name().to_owned(), prompts, prompt_stream.clone())?;
            prompt_writers.push((writer, prompt_stream));
            let stream = self.ctx.create_stream(
                &self.trial,
                &StreamName::Tenant(slot.name().to_owned()),
                StreamKind::Tenant,
                slot.tenant.engine.is_simulated(),
                Some(slot.stream_header(&arrival)),
            )?;
            streams.push(stream.clone());
            let ticket = tickets.pop().ok_or_else(not_prepared)?;
            let engine = self
                .engines
                .get(slot.host)
                .and_then(|e| e.engine.as_ref())
                .ok_or_else(not_prepared)?;
            loads.push(
                slot.tenant_load(engine, clock, stream, prompt_log, ticket)
                    .ok_or_else(not_prepared)?,
            );
        }
        // A capacity probe whose failure is already certain ends now.
        if let Some(tripped) = self.slots.iter().find_map(|s| s.watch.as_ref()) {
            let (tripped, stop) = (tripped.tripped().clone(), measuring.clone());
            self.tasks.spawn(async move {
                tokio::select! {
                    () = tripped.cancelled() => stop.cancel(),
                    () = stop.cancelled() => {}
                }
            });
        }
        let outcomes = run_loads(
            loads,
            one_at_a_time,
            &measuring,
            &self.tasks,
            loadgen::run_tenant_load,
        )
        .await;
        for (slot, outcome) in self.slots.iter_mut().zip(outcomes) {
            slot.load = outcome;
        }
        samplers.stop().await;
        for stream in streams {
            stream.close()?;
        }
        // Every load has ended, so every prompt log is dropped and its writer can finish.
        for (writer, stream) in prompt_writers {
            writer.finish().await?;
            stream.close()?;
        }
        for slot in &self.slots {
            if let Some(report) = slot.report() {
                let rate = report.completed_rate;
                self.ctx
                    .stages
                    .remember(&self.trial, slot.name(), slot.workload, rate);
            }
        }
        measuring.cancel();
        for reason in self.slots.iter().filter_map(|s| s.watch.as_ref()?.reason()) {
            self.log.append(Event::ProbeStopped(ProbeStoppedEvent {
                at_ns: clock.now_ns(),
                reason: reason.to_owned(),
            }))?;
        }
        self.record_engine_deaths(watchers).await?;
        for slot in &self.slots {
            if let LoadOutcome::Panicked(panic) = &slot.load {
                self.log.tenant_invalid(slot.name(), panic.to_string())?;
            }
        }
        let engines = &self.engines;
        let verdict = judge(self.slots.iter().map(|s| {
            let engine = engines.get(s.host);
            let death = engine.and_then(|e| Some((e.name(), e.death.as_ref()?)));
            (&s.load, death)
        }));
        Ok(verdict?)
    }
}
