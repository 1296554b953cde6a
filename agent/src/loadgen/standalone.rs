//! One workload against one endpoint, recorded to `<dir>/<trial>/t.jsonl` outside any run:
//! what `agent bench` measures with and what the load generator's tests drive.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use multitenant::config::{ArrivalPlan, SharingMode, Workload};
use multitenant::events::{read_stream, Header, RequestEvent, StreamKind};
use tokio_util::sync::CancellationToken;

use super::client::Target;
use super::prompts::PromptFactory;
use super::{LoadReport, TenantLoad};
use crate::clock::RunClock;
use crate::recorder::RunStreams;

/// What a standalone load produced.
pub struct Recorded {
    /// The load generator's own report.
    pub report: LoadReport,
    /// The clock the events are stamped by.
    pub clock: RunClock,
    /// Every request event, in file order.
    pub requests: Vec<RequestEvent>,
    /// Lines of the stream that could not be read back (none, unless something is wrong).
    pub warnings: Vec<String>,
}

/// Drives `workload` (one arrival process, not a sweep) at `model` behind `base_url` with
/// prompts and arrivals from `seed`, records it as tenant `t` of trial `trial` under `dir`,
/// and reads the stream back.
pub async fn record_workload(
    base_url: &str,
    model: &str,
    workload: Workload,
    dir: &Path,
    trial: &str,
    seed: u64,
) -> anyhow::Result<Recorded> {
    let cap = u64::from(multitenant::config::MAX_IN_FLIGHT);
    record_workload_capped(base_url, model, workload, dir, trial, seed, cap).await
}

/// [`record_workload`] with at most `max_in_flight` requests in flight.
pub async fn record_workload_capped(
    base_url: &str,
    model: &str,
    workload: Workload,
    dir: &Path,
    trial: &str,
    seed: u64,
    max_in_flight: u64,
) -> anyhow::Result<Recorded> {
    let clock = RunClock::start();
    let streams =
        RunStreams::new(dir.to_owned()).with_context(|| format!("creating {}", dir.display()))?;
    let header = Header {
        schema_version: multitenant::events::SCHEMA_VERSION.into(),
        tool_version: multitenant::TOOL_VERSION.into(),
        experiment: "standalone".into(),
        run_id: "standalone".into(),
        node: "local".into(),
        trial: trial.into(),
        mode: SharingMode::Solo,
        stream: StreamKind::Tenant,
        zero_wall_ns: clock.zero_wall_ns(),
        simulated: true,
        stage: None,
        tenant: None,
    };
    let path = format!("{trial}/t.jsonl");
    let stream = streams.create(&path, header)?;
    let ArrivalPlan::Single(arrival) = workload.arrival else {
        bail!("a standalone load runs one arrival process, not a sweep");
    };
    let (prompts, _) = PromptFactory::new(&workload.data, None, seed, "t")?;
    let load = TenantLoad {
        tenant: "t".into(),
        target: Target {
            base_url: base_url.into(),
            api: workload.api,
            model: model.into(),
            api_key: None,
            stream: workload.stream,
            ignore_eos: workload.ignore_eos,
            request_fields: workload.request_fields.clone(),
        },
        workload,
        arrival,
        seed,
        prompts: Arc::new(prompts),
        clock,
        stream: stream.clone(),
        prompt_log: None,
        watch: None,
        max_in_flight,
        start: super::start_line::StartTicket::alone(clock),
    };
    let report = super::run_tenant_load(load, CancellationToken::new()).await?;
    stream.close()?;
    streams.release_reserve();
    let contents = read_stream(&dir.join(&path))?;
    Ok(Recorded {
        report,
        clock,
        requests: contents.requests().cloned().collect(),
        warnings: contents.warnings,
    })
}
