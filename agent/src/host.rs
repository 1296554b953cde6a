//! Host sampling (sysinfo): CPU and memory of the node, into `host.jsonl`.

use std::sync::Arc;
use std::time::Duration;

use multitenant::events::{Event, HostSample};
use sysinfo::{MemoryRefreshKind, RefreshKind, System};
use tokio_util::sync::CancellationToken;

use crate::clock::RunClock;
use crate::recorder::StreamFile;

/// Samples every `interval` until `cancel`, then closes the stream.
pub async fn sample(
    stream: Arc<StreamFile>,
    clock: RunClock,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(sysinfo::CpuRefreshKind::nothing().with_cpu_usage())
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
