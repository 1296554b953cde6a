//! Stage planning inside a run: which arrival process a tenant runs in a trial's stage, and
//! what the stages measured that later stages need (an automatic sweep's end rates).

use std::collections::HashMap;
use std::sync::Mutex;

use multitenant::config::{Arrival, ArrivalPlan, Stage, StageArrival, Trial, Workload};

use super::outcome::TrialFailure;

/// Measured ends of an automatic sweep.
#[derive(Debug, Clone, Copy, Default)]
struct SweepRates {
    sync: Option<f64>,
    max: Option<f64>,
}

/// Per tenant, the request rates its automatic sweep measured in its synchronous and
/// throughput stages, taken from the first trial that ran them (the solo trial, when there is
/// one, so that shared trials are offered the same rates as the baseline).
#[derive(Debug, Default)]
pub(super) struct StagePlanner {
    sweep_rates: Mutex<HashMap<String, SweepRates>>,
}

impl StagePlanner {
    /// The arrival process `tenant` runs in `trial`: its workload's process, or the trial's
    /// stage of its sweep. Rate stages of an automatic sweep need the tenant's synchronous
    /// and throughput rates, measured earlier; without them the trial cannot run.
    pub(super) fn arrival(
        &self,
        trial: &Trial,
        tenant: &str,
        workload: &Workload,
    ) -> Result<Arrival, TrialFailure> {
        match workload.arrival.stage(trial.stage) {
            StageArrival::Fixed(arrival) => Ok(arrival),
            StageArrival::AutoRate { step, sweep } => {
                let rates = self.sweep_rates.lock().unwrap_or_else(|e| e.into_inner());
                let measured = rates.get(tenant).copied().unwrap_or_default();
                match (measured.sync, measured.max) {
                    (Some(sync), Some(max)) => Ok(sweep.arrival(sweep.rate(step, sync, max))),
                    _ => Err(TrialFailure::SweepRatesUnmeasured {
                        tenant: tenant.to_owned(),
                        step,
                    }),
                }
            }
        }
    }

    /// Keeps what the synchronous (stage 1) and throughput (stage 2) stages of an automatic
    /// sweep measured, the first time `tenant` runs them.
    pub(super) fn remember(
        &self,
        trial: &Trial,
        tenant: &str,
        workload: &Workload,
        completed_rate: Option<f64>,
    ) {
        if !matches!(workload.arrival, ArrivalPlan::Auto(_)) {
            return;
        }
        let mut rates = self.sweep_rates.lock().unwrap_or_else(|e| e.into_inner());
        let entry = rates.entry(tenant.to_owned()).or_default();
        let slot = match trial.stage.map(Stage::number) {
            Some(1) => &mut entry.sync,
            Some(2) => &mut entry.max,
            _ => return,
        };
        if slot.is_none() {
            *slot = completed_rate;
        }
    }
}
