//! A trial's samplers, started and stopped as one unit: the host, every GPU through NVML
//! (where it works), and the `/metrics` of every vLLM and simulated engine.

use std::time::Duration;

use multitenant::config::{Engine, Trial};
use multitenant::events::StreamKind;
use multitenant::layout::StreamName;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine_slot::EngineSlot;
use super::RunContext;
use crate::{engine_metrics, gpu, host};

/// Host sampling interval.
const HOST_INTERVAL: Duration = Duration::from_secs(1);
/// GPU sampling interval (NVML's utilization window is up to 1 s, so faster mostly re-reads).
const GPU_INTERVAL: Duration = Duration::from_secs(1);
/// How often engines' `/metrics` are scraped.
const ENGINE_METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// The running samplers of one trial; each closes its own stream when stopped.
pub(super) struct Samplers {
    stop: CancellationToken,
    running: Vec<JoinHandle<()>>,
    /// Stops them too when the trial gives up between start and stop (an I/O error), so the
    /// trial's tracker never waits on a sampler nobody will stop.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Samplers {
    /// Starts every sampler the trial has, on `tasks`.
    pub fn start(
        ctx: &RunContext,
        trial: &Trial,
        engines: &[EngineSlot<'_>],
        tasks: &TaskTracker,
    ) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut running = Vec::new();
        let guard = stop.clone().drop_guard();
        let host_stream =
            ctx.create_stream(trial, &StreamName::Host, StreamKind::Host, false, None)?;
        let engine_groups = engines
            .iter()
            .filter_map(|e| Some((e.name().to_owned(), e.engine.as_ref()?.pgid()?)))
            .collect();
        running.push(tasks.spawn(host::sample(
            host_stream,
            ctx.clock,
            HOST_INTERVAL,
            engine_groups,
            stop.clone(),
        )));
        if let Some(nvml) = &ctx.gpu.nvml {
            let stream =
                ctx.create_stream(trial, &StreamName::Gpu, StreamKind::Gpu, false, None)?;
            running.push(tasks.spawn(gpu::sample(
                nvml.clone(),
                stream,
                ctx.clock,
                GPU_INTERVAL,
                stop.clone(),
            )));
        }
        for slot in engines {
            // vLLM's `/metrics`, and the simulated engine's (its prefix-cache counters), once
            // per engine, named by the tenant whose engine it is.
            let (Engine::Vllm(_) | Engine::Simulated { .. }, Some(engine)) =
                (&slot.owner.engine, &slot.engine)
            else {
                continue;
            };
            let name = StreamName::EngineMetrics(slot.name().to_owned());
            let simulated = slot.owner.engine.is_simulated();
            let stream =
                ctx.create_stream(trial, &name, StreamKind::EngineMetrics, simulated, None)?;
            running.push(tasks.spawn(engine_metrics::scrape(
                stream,
                ctx.http.clone(),
                engine.base_url.clone(),
                ctx.clock,
                ENGINE_METRICS_INTERVAL,
                stop.clone(),
            )));
        }
        Ok(Self {
            stop,
            running,
            _stop_on_drop: guard,
        })
    }

    /// Stops every sampler and waits until each has closed its stream.
    pub async fn stop(self) {
        self.stop.cancel();
        for sampler in self.running {
            if let Err(e) = sampler.await {
                tracing::error!("a sampler ended abnormally: {e}");
            }
        }
    }
}
