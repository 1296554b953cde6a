//! A trial's agent stream, `agent.jsonl`, and the clock its events are stamped by.

use std::sync::Arc;

use multitenant::events::{
    ComputeModeEvent, ComputeModeState, EngineEvent, EngineState, Event, GpuComputeMode, MpsEvent,
    MpsState, TenantInvalidEvent, TrialEvent, TrialState, WarningEvent,
};

use multitenant::config::Trial;
use multitenant::layout::StreamName;

use super::context::RunContext;
use super::outcome::TrialFailure;
use crate::clock::RunClock;
use crate::gpu::GpuStatus;
use crate::recorder::StreamFile;

/// Appends the trial's lifecycle events, each stamped now unless it carries its own time.
pub(super) struct TrialLog {
    pub stream: Arc<StreamFile>,
    pub clock: RunClock,
}

impl TrialLog {
    /// Creates `trial`'s agent stream and records its start, with what the reader must know
    /// from the outset (no GPU sampling, simulated engines).
    pub fn open(ctx: &RunContext, trial: &Trial, simulated: bool) -> std::io::Result<Self> {
        let kind = multitenant::events::StreamKind::Agent;
        let log = TrialLog {
            stream: ctx.create_stream(trial, &StreamName::Agent, kind, simulated, None)?,
            clock: ctx.clock,
        };
        log.trial(TrialState::Started, None)?;
        if let GpuStatus::Unavailable(reason) = &ctx.gpu.status {
            log.warn(format!("GPU sampling is off: {reason}"))?;
        }
        if simulated {
            log.warn("simulated engine(s) on a simulated GPU: every latency and throughput here is SIMULATED".into())?;
        }
        Ok(log)
    }

    /// Records how the trial ended (stopped when the run was `stopped`, for that reason
    /// unless a `failure` came first; invalid with a `failure`; else finished) and closes the
    /// stream.
    pub fn end(
        &self,
        stopped: Option<TrialFailure>,
        failure: Option<TrialFailure>,
    ) -> std::io::Result<()> {
        let (state, failure) = match (stopped, failure) {
            (Some(cause), failure) => (TrialState::Stopped, Some(failure.unwrap_or(cause))),
            (None, Some(failure)) => (TrialState::Invalid, Some(failure)),
            (None, None) => (TrialState::Finished, None),
        };
        self.trial(state, failure.map(|f| f.to_string()))?;
        self.stream.close()
    }

    pub fn append(&self, event: Event) -> std::io::Result<()> {
        self.stream.append(&event)
    }

    pub fn trial(&self, state: TrialState, reason: Option<String>) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.append(Event::Trial(TrialEvent {
            at_ns,
            state,
            reason,
        }))
    }

    pub fn warn(&self, message: String) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.append(Event::Warning(WarningEvent { at_ns, message }))
    }

    pub fn engine(&self, tenant: &str, state: EngineState, detail: String) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.engine_at(at_ns, tenant, state, detail)
    }

    pub fn engine_at(
        &self,
        at_ns: u64,
        tenant: &str,
        state: EngineState,
        detail: String,
    ) -> std::io::Result<()> {
        self.append(Event::Engine(EngineEvent {
            at_ns,
            tenant: tenant.to_owned(),
            state,
            detail,
        }))
    }

    pub fn mps(&self, state: MpsState, detail: String) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.append(Event::Mps(MpsEvent {
            at_ns,
            state,
            detail,
        }))
    }

    /// Records what the agent did with GPU `gpu`'s compute mode.
    pub fn compute_mode(
        &self,
        gpu: u32,
        state: ComputeModeState,
        mode: GpuComputeMode,
        detail: String,
    ) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.append(Event::ComputeMode(ComputeModeEvent {
            at_ns,
            gpu,
            state,
            mode,
            detail,
        }))
    }

    /// Records that one tenant's figures in this trial are not valid, and why.
    pub fn tenant_invalid(&self, tenant: &str, reason: String) -> std::io::Result<()> {
        let at_ns = self.clock.now_ns();
        self.append(Event::TenantInvalid(TenantInvalidEvent {
            at_ns,
            tenant: tenant.to_owned(),
            reason,
        }))
    }
}
