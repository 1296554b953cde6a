//! One engine of a trial: the tenant whose engine it is, the adapter tenants it serves, the
//! running engine and its exit, owned together. Tenants reach it through their slot's `host`.

use multitenant::config::Tenant;

use super::outcome::EngineDeath;
use crate::engine::RunningEngine;

/// An engine a trial starts (or, for an external engine, checks).
pub(super) struct EngineSlot<'a> {
    /// The tenant whose engine it is; it names the engine in events and files. It may send
    /// nothing in the trial (the base of an adapter measured alone).
    pub owner: &'a Tenant,
    /// The adapter tenants of the node it serves beside its own model, whichever of them the
    /// trial loads: the engine is the same in every trial.
    pub adapters: Vec<&'a Tenant>,
    /// The engine, once started.
    pub engine: Option<RunningEngine>,
    /// Its exit during the measurement, if it exited.
    pub death: Option<EngineDeath>,
}

impl<'a> EngineSlot<'a> {
    /// An engine not yet started for `owner`, serving `adapters`.
    pub fn new(owner: &'a Tenant, adapters: Vec<&'a Tenant>) -> Self {
        Self {
            owner,
            adapters,
            engine: None,
            death: None,
        }
    }

    /// The owner's name: the engine's name in events and files.
    pub fn name(&self) -> &str {
        &self.owner.name
    }
}
