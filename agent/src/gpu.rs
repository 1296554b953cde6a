//! The node's GPUs through NVML, loaded at run time: discovery at start, and sampling into
//! `gpu.jsonl` during a trial. Without NVML (no driver, no GPU) GPU sampling is off, the reason
//! is stated once, and no GPU number is ever made up; a figure a GPU does not support is left
//! out of its sample rather than filled in.

use std::sync::Arc;
use std::time::Duration;

use multitenant::events::{Event, GpuProcess, GpuSample};
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::{Bits, NvmlError};
use nvml_wrapper::gpm::{gpm_metrics_get, GpmSample};
use nvml_wrapper::struct_wrappers::device::ProcessInfo;
use nvml_wrapper::{Device, Nvml};
use tokio_util::sync::CancellationToken;

use crate::clock::RunClock;
use crate::recorder::StreamFile;

/// One GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// NVML index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
}

/// What the agent knows about the node's GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuStatus {
    /// NVML answered.
    Available(Vec<GpuDevice>),
    /// NVML could not be used; GPU sampling is off.
    Unavailable(String),
}

/// The loaded NVML library, shared by every trial's sampler.
pub type NvmlHandle = Arc<Nvml>;

/// The node's GPUs: what is known of them, and NVML when it could be loaded.
#[derive(Clone)]
pub struct NodeGpus {
    /// What the agent reports.
    pub status: GpuStatus,
    /// NVML, for sampling; `None` when it could not be used.
    pub nvml: Option<NvmlHandle>,
}

impl NodeGpus {
    /// Loads NVML and lists the GPUs.
    pub fn probe() -> Self {
        let (status, nvml) = GpuStatus::probe();
        Self { status, nvml }
    }

    /// GPU `index`'s memory as NVML reports it now; `None` without NVML or that GPU.
    pub fn memory_now(&self, index: u32) -> Option<crate::engine::GpuMemoryNow> {
        let info = self
            .nvml
            .as_ref()?
            .device_by_index(index)
            .ok()?
            .memory_info()
            .ok()?;
        Some(crate::engine::GpuMemoryNow {
            total: info.total,
            free: info.free,
        })
    }

    /// A node where GPU sampling is off for `reason`.
    pub fn unavailable(reason: &str) -> Self {
        Self {
            status: GpuStatus::Unavailable(reason.to_owned()),
            nvml: None,
        }
    }
}

impl GpuStatus {
    /// Loads NVML and lists the GPUs; the handle is kept for sampling when there are any.
    fn probe() -> (Self, Option<NvmlHandle>) {
        let unavailable = |reason: String| (GpuStatus::Unavailable(reason), None);
        let nvml = match Nvml::init() {
            Ok(n) => n,
            Err(e) => return unavailable(format!("NVML could not be loaded ({e})")),
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => return unavailable(format!("NVML could not count GPUs ({e})")),
        };
        let mut devices = Vec::new();
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            devices.push(GpuDevice {
                index,
                name: device.name().unwrap_or_else(|e| format!("unknown ({e})")),
                memory_total_bytes: device.memory_info().map_or(0, |m| m.total),
            });
        }
        if devices.is_empty() {
            return unavailable("NVML loaded but reports no GPU".into());
        }
        (GpuStatus::Available(devices), Some(Arc::new(nvml)))
    }

    /// The one line the agent prints at start.
    pub fn describe(&self) -> String {
        match self {
            GpuStatus::Available(d) => {
                let names: Vec<String> = d
                    .iter()
                    .map(|g| format!("{}: {}", g.index, g.name))
                    .collect();
                format!("GPUs found through NVML: {}", names.join(", "))
            }
            GpuStatus::Unavailable(reason) => format!("GPU sampling is off: {reason}"),
        }
    }
}

/// What the agent says at start when the launcher set `CUDA_VISIBLE_DEVICES`: the engines see
/// only those GPUs, renumbered from 0, while NVML (and so the agent's samples) lists every GPU
/// of the node by its own index.
pub fn visible_devices_note(visible: Option<String>) -> Option<String> {
    let visible = visible?;
    Some(match visible.trim() {
        "" => "CUDA_VISIBLE_DEVICES is set and empty: engines will see no GPU".to_owned(),
        list => format!(
            "CUDA_VISIBLE_DEVICES={list}: engines see only these GPUs, numbered from 0 in this order; NVML and the agent's GPU samples number every GPU of the node by its own index"
        ),
    })
}

/// Samples every GPU every `interval` until `stop`, then closes the stream. NVML calls block,
/// so this runs on a blocking thread.
pub async fn sample(
    nvml: NvmlHandle,
    stream: Arc<StreamFile>,
    clock: RunClock,
    interval: Duration,
    stop: CancellationToken,
) {
    let worker_stream = stream.clone();
    let sampler = tokio::task::spawn_blocking(move || {
        sample_blocking(&nvml, &worker_stream, clock, interval, &stop)
    });
    if let Err(e) = sampler.await {
        tracing::warn!("GPU sampling ended abnormally: {e}");
    }
    if let Err(e) = stream.close() {
        tracing::warn!("closing {}: {e}", stream.rel_path());
    }
}

fn sample_blocking(
    nvml: &Nvml,
    stream: &StreamFile,
    clock: RunClock,
    interval: Duration,
    stop: &CancellationToken,
) {
    let count = nvml.device_count().unwrap_or(0);
    let devices: Vec<(u32, Device<'_>)> = (0..count)
        .filter_map(|i| Some((i, nvml.device_by_index(i).ok()?)))
        .collect();
    // GPM figures come from two samples of the same device; the previous one is kept here.
    let mut previous: Vec<Option<GpmSample<'_>>> = devices.iter().map(|_| None).collect();
    while !stop.is_cancelled() {
        let started = std::time::Instant::now();
        for ((index, device), last_gpm) in devices.iter().zip(previous.iter_mut()) {
            let mut sample = read_device(device);
            sample.gpu = *index;
            if device.gpm_support().unwrap_or(false) {
                if let Ok(now) = device.gpm_sample() {
                    if let Some(before) = last_gpm.as_ref() {
                        add_gpm(nvml, before, &now, &mut sample);
                    }
                    *last_gpm = Some(now);
                }
            }
            sample.at_ns = clock.now_ns();
            if let Err(e) = stream.append(&Event::GpuSample(sample)) {
                tracing::warn!("GPU sampling stopped: {e}");
                return;
            }
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()).min(interval));
    }
}

/// Everything NVML gives for one device; unsupported figures stay `None`.
fn read_device(device: &Device<'_>) -> GpuSample {
    let utilization = device.utilization_rates().ok();
    let memory = device.memory_info().ok();
    GpuSample {
        utilization_gpu_pct: utilization.as_ref().map(|u| u.gpu),
        utilization_memory_pct: utilization.as_ref().map(|u| u.memory),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        power_mw: device.power_usage().ok(),
        energy_mj: device.total_energy_consumption().ok(),
        sm_clock_mhz: device.clock_info(Clock::SM).ok(),
        memory_clock_mhz: device.clock_info(Clock::Memory).ok(),
        temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
        throttle_reasons: throttle_bits(device),
        processes: process_list(|| device.running_compute_processes()),
        mps_processes: process_list(|| device.mps_running_compute_processes()),
        ..GpuSample::default()
    }
}

/// Every throttle-reason bit NVML set, those newer than the crate's flags too: the crate's
/// lenient call drops unknown bits (`from_bits_truncate`), its strict one returns them in the
/// error (nvml-wrapper 0.13, `Device::current_throttle_reasons_strict`).
fn throttle_bits(device: &Device<'_>) -> Option<u64> {
    match device.current_throttle_reasons_strict() {
        Ok(reasons) => Some(reasons.bits()),
        Err(NvmlError::IncorrectBits(Bits::U64(raw))) => Some(raw),
        Err(NvmlError::IncorrectBits(Bits::U32(raw))) => Some(u64::from(raw)),
        Err(_) => None,
    }
}

/// A list of processes on the GPU. NVML is asked twice, for the count and then the list, and a
/// process that starts in between makes the second call fail with INSUFFICIENT_SIZE
/// (nvml-wrapper 0.13 adds no headroom for MPS clients); asked again up to three times.
fn process_list(list: impl Fn() -> Result<Vec<ProcessInfo>, NvmlError>) -> Vec<GpuProcess> {
    for _ in 0..3 {
        match list() {
            Ok(found) => return processes(found),
            Err(NvmlError::InsufficientSize(_)) => continue,
            Err(_) => break,
        }
    }
    Vec::new()
}

fn processes(list: Vec<ProcessInfo>) -> Vec<GpuProcess> {
    list.into_iter()
        .map(|p| GpuProcess {
            pid: p.pid,
            used_bytes: match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            },
        })
        .collect()
}

fn add_gpm(nvml: &Nvml, before: &GpmSample<'_>, now: &GpmSample<'_>, sample: &mut GpuSample) {
    let wanted = [
        GpmMetricId::SmUtil,
        GpmMetricId::SmOccupancy,
        GpmMetricId::AnyTensorUtil,
        GpmMetricId::DramBwUtil,
    ];
    let Ok(results) = gpm_metrics_get(nvml, before, now, &wanted) else {
        return;
    };
    for result in results.into_iter().flatten() {
        let value = Some(result.value);
        match result.metric_id {
            GpmMetricId::SmUtil => sample.gpm_sm_util_pct = value,
            GpmMetricId::SmOccupancy => sample.gpm_sm_occupancy_pct = value,
            GpmMetricId::AnyTensorUtil => sample.gpm_tensor_util_pct = value,
            GpmMetricId::DramBwUtil => sample.gpm_dram_bw_util_pct = value,
            _ => {}
        }
    }
}
