//! A trial's agent stream, `agent.jsonl`, and the clock its events are stamped by.

use std::sync::Arc;

use multitenant::events::{
    EngineEvent, EngineState, Event, MpsEvent, MpsState, TenantInvalidEvent, TrialEvent,
    TrialState, WarningEvent,
};

use crate::clock::RunClock;
use crate::recorder::StreamFile;

/// Appends the trial's lifecycle events, each stamped now unless it carries its own time.
pub(super) struct TrialLog {
    pub stream: Arc<StreamFile>,
    pub clock: RunClock,
}

impl TrialLog {
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
