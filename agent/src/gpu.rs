//! What the node's GPUs are, through NVML loaded at run time. Without NVML (no driver, no GPU)
//! GPU sampling is off and the reason is stated once; no GPU number is ever made up.

use nvml_wrapper::Nvml;

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

impl GpuStatus {
    /// Loads NVML and lists the GPUs.
    pub fn probe() -> Self {
        let nvml = match Nvml::init() {
            Ok(n) => n,
            Err(e) => return GpuStatus::Unavailable(format!("NVML could not be loaded ({e})")),
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => return GpuStatus::Unavailable(format!("NVML could not count GPUs ({e})")),
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
            return GpuStatus::Unavailable("NVML loaded but reports no GPU".into());
        }
        GpuStatus::Available(devices)
    }

    /// The one line the agent prints at start.
    pub fn describe(&self) -> String {
        match self {
            GpuStatus::Available(d) => {
                let names: Vec<String> = d
                    .iter()
                    .map(|g| format!("{}: {}", g.index, g.name))
                    .collect();
                format!(
                    "GPUs found: {}; GPU sampling is not in this version yet",
                    names.join(", ")
                )
            }
            GpuStatus::Unavailable(reason) => format!("GPU sampling is off: {reason}"),
        }
    }
}
