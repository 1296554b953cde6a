//! One tenant's part of a trial: its workload, arrivals, prompts, the engine serving it and
//! its load report, owned together so that nothing can be handed to the wrong tenant.

use std::sync::Arc;

use multitenant::config::{Arrival, Tenant, Workload};
use multitenant::events::TenantHeader;

use crate::engine::RunningEngine;
use crate::loadgen::{
    client::Target, prompt_log::PromptLog, prompts::PromptFactory, schedule::ArrivalSchedule,
    start_line::StartTicket, LoadPanicked, LoadReport, TenantLoad,
};
use crate::recorder::StreamFile;

/// How a tenant's load ended.
#[derive(Debug, Default)]
pub(super) enum LoadOutcome {
    /// It did not run (the trial failed before measuring, or was stopped first).
    #[default]
    NotRun,
    /// It ran to its end, with this report.
    Ran(LoadReport),
    /// Its task panicked: only this tenant's figures are lost.
    Panicked(LoadPanicked),
}

/// Everything of one tenant in one trial.
pub(super) struct TenantSlot<'a> {
    /// The tenant.
    pub tenant: &'a Tenant,
    /// Its workload.
    pub workload: &'a Workload,
    /// The seed of its arrivals and prompts: the same in every trial, so a tenant sends the
    /// same requests alone and shared.
    pub seed: u64,
    /// Its arrival process in this trial, once planned.
    pub arrival: Option<Arrival>,
    /// Its prompts, once made.
    pub prompts: Option<Arc<PromptFactory>>,
    /// The index of the engine serving it among the trial's engines (its own, or its base's
    /// for an adapter).
    pub host: usize,
    /// How its load ended.
    pub load: LoadOutcome,
    /// Warmup and measured phase replacing its workload's (capacity probes).
    pub phases: Option<(std::time::Duration, std::time::Duration)>,
    /// A capacity probe's SLO bounds, watched for its early stop.
    pub watch: Option<Arc<crate::loadgen::bound_watch::BoundWatch>>,
}

impl<'a> TenantSlot<'a> {
    /// An empty slot for `tenant`, served by the trial's engine `host`.
    pub fn new(tenant: &'a Tenant, workload: &'a Workload, seed: u64, host: usize) -> Self {
        Self {
            tenant,
            workload,
            seed,
            arrival: None,
            prompts: None,
            host,
            load: LoadOutcome::NotRun,
            phases: None,
            watch: None,
        }
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.tenant.name
    }

    /// The header of its request stream in this trial.
    pub fn stream_header(&self, arrival: &Arrival) -> TenantHeader {
        let workload = self.workload;
        let (warmup, duration) = self.phases.unwrap_or((workload.warmup, workload.duration));
        TenantHeader {
            name: self.tenant.name.clone(),
            model: self.tenant.engine.model().into(),
            engine: self.tenant.engine.kind().into(),
            served_by: self.tenant.engine.base().map(str::to_owned),
            workload: self.tenant.workload.clone(),
            api: workload.api,
            arrival: arrival.describe(),
            offered_rate: arrival
                .offered_rate()
                .or_else(|| self.replayed_rate(arrival, warmup, duration)),
            streaming: workload.stream,
            forced_length: workload.ignore_eos,
            slo: (!workload.slo.is_empty()).then(|| workload.slo.clone()),
            planned_ms: Some((warmup + duration).as_millis() as u64),
            shared_prefixes: workload.data.shared_prefixes(),
        }
    }

    /// The rate a trace replay offers in the measured phase: its records scheduled in it.
    fn replayed_rate(
        &self,
        arrival: &Arrival,
        warmup: std::time::Duration,
        duration: std::time::Duration,
    ) -> Option<f64> {
        let Arrival::Trace { time_scale } = *arrival else {
            return None;
        };
        let times = self.prompts.as_ref()?.trace_times()?;
        let phase = warmup..warmup + duration;
        // The replay's own schedule, so the count agrees with the sends to the nanosecond.
        let sent = ArrivalSchedule::replay(times, time_scale)
            .filter(|at| phase.contains(at))
            .count();
        Some(sent as f64 / duration.as_secs_f64().max(1e-9))
    }

    /// The load to run against `engine` (the one serving it), recorded into `stream`, its
    /// prompts into `prompt_log`, started from `start`; `None` before the slot has its arrivals
    /// and prompts.
    pub fn tenant_load(
        &self,
        engine: &RunningEngine,
        clock: crate::clock::RunClock,
        stream: Arc<StreamFile>,
        prompt_log: PromptLog,
        start: StartTicket,
    ) -> Option<TenantLoad> {
        let (arrival, prompts) = (self.arrival?, self.prompts.clone()?);
        let mut workload = self.workload.clone();
        if let Some((warmup, duration)) = self.phases {
            workload.warmup = warmup;
            workload.duration = duration;
        }
        let target = Target {
            base_url: engine.base_url.clone(),
            api: workload.api,
            model: self.tenant.engine.model().into(),
            api_key: engine.api_key.clone(),
            stream: workload.stream,
            ignore_eos: workload.ignore_eos,
            request_fields: workload.request_fields.clone(),
        };
        Some(TenantLoad {
            tenant: self.tenant.name.clone(),
            target,
            workload,
            arrival,
            seed: self.seed,
            prompts,
            clock,
            stream,
            prompt_log: Some(prompt_log),
            max_in_flight: u64::from(multitenant::config::MAX_IN_FLIGHT),
            start,
            watch: self.watch.clone(),
        })
    }

    /// The report of a load that ran to its end.
    pub fn report(&self) -> Option<&LoadReport> {
        match &self.load {
            LoadOutcome::Ran(report) => Some(report),
            _ => None,
        }
    }
}
