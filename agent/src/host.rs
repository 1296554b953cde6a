//! Host sampling (sysinfo): CPU and memory of the node and of each engine's process group,
//! into `host.jsonl`.

use std::sync::Arc;
use std::time::Duration;

use multitenant::events::{EngineProcessSample, Event, HostSample};
use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, RefreshKind,
    System,
};
use tokio_util::sync::CancellationToken;

use crate::clock::RunClock;
use crate::engine::process::group_pids;
use crate::recorder::StreamFile;

/// Samples every `interval` until `cancel`, then closes the stream. `engines` are the
/// `(tenant, process group)` of the engines the agent runs as processes.
pub async fn sample(
    stream: Arc<StreamFile>,
    clock: RunClock,
    interval: Duration,
    engines: Vec<(String, i32)>,
    cancel: CancellationToken,
) {
    let mut system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first CPU reading needs a previous one to compare with.
    system.refresh_cpu_usage();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cancel.cancelled() => break,
        }
        system.refresh_cpu_usage();
        system.refresh_memory();
        let sample = HostSample {
            at_ns: clock.now_ns(),
            cpu_percent: system.global_cpu_usage(),
            memory_used_bytes: system.used_memory(),
            memory_total_bytes: system.total_memory(),
            engines: engines
                .iter()
                .map(|(tenant, pgid)| engine_sample(&mut system, tenant, *pgid))
                .collect(),
        };
        if let Err(e) = stream.append(&Event::HostSample(sample)) {
            tracing::warn!("host sampling stopped: {e}");
            break;
        }
    }
    if let Err(e) = stream.close() {
        tracing::warn!("closing {}: {e}", stream.rel_path());
    }
}

/// CPU and memory of the processes in group `pgid` now. A process's CPU share needs two
/// refreshes, so a process seen for the first time counts 0% CPU in its first sample.
fn engine_sample(system: &mut System, tenant: &str, pgid: i32) -> EngineProcessSample {
    let pids: Vec<u32> = group_pids(pgid)
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect();
    let sys_pids: Vec<Pid> = pids.iter().map(|&p| Pid::from_u32(p)).collect();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&sys_pids),
        true,
        ProcessRefreshKind::nothing().with_cpu().with_memory(),
    );
    let processes: Vec<_> = sys_pids.iter().filter_map(|p| system.process(*p)).collect();
    EngineProcessSample {
        tenant: tenant.to_owned(),
        pids,
        cpu_percent: processes.iter().map(|p| p.cpu_usage()).sum(),
        memory_rss_bytes: processes.iter().map(|p| p.memory()).sum(),
    }
}
