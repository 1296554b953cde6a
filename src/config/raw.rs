//! Serde mirror of the experiment YAML. Nothing here is checked beyond types: [`super::validate`]
//! turns it into an [`super::Experiment`]. Fields are flat (no tagged enums) so that every unknown
//! key is seen and reported with its path, not swallowed by serde's content buffering.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
pub struct RawExperiment {
    pub name: Option<String>,
    pub output_dir: Option<String>,
    pub seed: Option<u64>,
    pub launcher: Option<RawLauncher>,
    pub slo: Option<RawSlo>,
    pub capacity: Option<RawCapacity>,
    pub cost: Option<RawCost>,
    pub workloads: Option<BTreeMap<String, RawWorkload>>,
    pub nodes: Option<Vec<RawNode>>,
}

/// `capacity:`.
#[derive(Debug, Deserialize)]
pub struct RawCapacity {
    pub probe: Option<RawProbe>,
    pub min_rate: Option<f64>,
    pub max_rate: Option<f64>,
    pub precision: Option<f64>,
    pub repeats: Option<u32>,
    pub max_probes: Option<u32>,
    pub mix: Option<BTreeMap<String, f64>>,
    pub directions: Option<u32>,
    pub budget: Option<String>,
    pub until: Option<String>,
}

/// `cost:`.
#[derive(Debug, Deserialize)]
pub struct RawCost {
    pub gpu_hour: Option<f64>,
    pub currency: Option<String>,
}

/// `capacity.probe:`.
#[derive(Debug, Deserialize)]
pub struct RawProbe {
    pub warmup: Option<String>,
    pub duration: Option<String>,
}

/// `launcher:`.
#[derive(Debug, Deserialize)]
pub struct RawLauncher {
    pub kind: Option<String>,
    pub keep: Option<bool>,
    pub on_node_failure: Option<String>,
    pub lease: Option<String>,
    pub tls: Option<RawTls>,
    pub agents: Option<Vec<RawStaticAgent>>,
    pub skypilot: Option<RawSkyPilot>,
}

/// `launcher.tls:`.
#[derive(Debug, Deserialize)]
pub struct RawTls {
    pub ca_cert: Option<String>,
    pub ca_key: Option<String>,
}

/// One of `launcher.agents:`.
#[derive(Debug, Deserialize)]
pub struct RawStaticAgent {
    pub node: Option<String>,
    pub url: Option<String>,
    pub token_env: Option<String>,
}

/// `launcher.skypilot:`.
#[derive(Debug, Deserialize)]
pub struct RawSkyPilot {
    pub cluster_prefix: Option<String>,
    pub infra: Option<String>,
    pub use_spot: Option<bool>,
    pub disk_size: Option<u32>,
    pub image_id: Option<String>,
    pub idle_minutes_to_autostop: Option<u32>,
    pub agent_port: Option<u16>,
    pub engine_setup: Option<String>,
    pub agent_install: Option<String>,
    pub agent_url: Option<String>,
    pub agent_sha256: Option<String>,
    pub node_platform: Option<String>,
    pub vllm_version: Option<String>,
}

/// One entry of `workloads:`.
#[derive(Debug, Deserialize)]
pub struct RawWorkload {
    pub api: Option<String>,
    pub stream: Option<bool>,
    pub arrival: Option<RawArrival>,
    pub data: Option<RawData>,
    pub warmup: Option<String>,
    pub duration: Option<String>,
    pub max_requests: Option<u64>,
    pub drain_timeout: Option<String>,
    pub ignore_eos: Option<bool>,
    pub request_fields: Option<BTreeMap<String, serde_json::Value>>,
    pub slo: Option<RawSlo>,
    pub keep_responses: Option<u32>,
}

/// `slo:` (top level, or a workload's own).
#[derive(Debug, Deserialize)]
pub struct RawSlo {
    pub ttft_ms: Option<BTreeMap<String, f64>>,
    pub tpot_ms: Option<BTreeMap<String, f64>>,
    pub itl_ms: Option<BTreeMap<String, f64>>,
    pub e2e_ms: Option<BTreeMap<String, f64>>,
    pub error_rate: Option<f64>,
}

/// `arrival:` of a workload.
#[derive(Debug, Deserialize)]
pub struct RawArrival {
    pub kind: Option<String>,
    pub rate: Option<f64>,
    pub cv: Option<f64>,
    pub n: Option<i64>,
    pub from: Option<f64>,
    pub to: Option<f64>,
    pub spacing: Option<String>,
    pub rates: Option<Vec<f64>>,
    pub concurrencies: Option<Vec<i64>>,
    pub steps: Option<i64>,
    pub max_concurrency: Option<i64>,
    pub path: Option<String>,
    pub format: Option<String>,
    pub time_scale: Option<f64>,
    pub start: Option<String>,
    pub limit: Option<u64>,
    pub tenant_map: Option<RawTenantMap>,
}

/// `tenant_map:` of a trace arrival.
#[derive(Debug, Deserialize)]
pub struct RawTenantMap {
    pub column: Option<String>,
    pub to: Option<BTreeMap<String, String>>,
    pub hash: Option<Vec<String>>,
}

/// `data:` of a workload.
#[derive(Debug, Deserialize)]
pub struct RawData {
    pub kind: Option<String>,
    /// A number, `{mean, stddev, min?, max?}` or `{min, max}`; read by hand in validation
    /// because serde's untagged enums hide which key was wrong.
    pub prompt_tokens: Option<serde_yaml::Value>,
    /// As `prompt_tokens`.
    pub output_tokens: Option<serde_yaml::Value>,
    pub profile: Option<String>,
    pub path: Option<String>,
    pub tokenizer: Option<String>,
    /// As `prompt_tokens`.
    pub turns: Option<serde_yaml::Value>,
    /// A duration, `{min, max}` or `{mean}` of durations.
    pub think_time: Option<serde_yaml::Value>,
    pub shared_system_prompt_tokens: Option<i64>,
}

/// One entry of `nodes:`.
#[derive(Debug, Deserialize)]
pub struct RawNode {
    pub name: Option<String>,
    pub accelerators: Option<String>,
    pub gpu_memory: Option<String>,
    pub trials: Option<Vec<String>>,
    pub sim_gpu: Option<RawSimGpu>,
    pub mps: Option<RawMps>,
    pub tenants: Option<Vec<RawTenant>>,
}

/// `mps:` of a node: settings of the MPS daemon for `mps` trials.
#[derive(Debug, Deserialize)]
pub struct RawMps {
    pub default_active_thread_percentage: Option<f64>,
}

/// `sim_gpu:` of a node: how simulated tenants slow each other down.
#[derive(Debug, Deserialize)]
pub struct RawSimGpu {
    pub mps_interference: Option<f64>,
}

/// One tenant of a node.
#[derive(Debug, Deserialize)]
pub struct RawTenant {
    pub name: Option<String>,
    pub engine: Option<RawEngine>,
    pub workload: Option<String>,
    pub port: Option<i64>,
    pub mps_thread_percentage: Option<f64>,
    pub mps_pinned_memory_limit: Option<String>,
}

/// `engine:` of a tenant.
#[derive(Debug, Deserialize)]
pub struct RawEngine {
    pub kind: Option<String>,
    pub model: Option<String>,
    pub url: Option<String>,
    pub api_key_env: Option<String>,
    pub timing: Option<RawSimTiming>,
    pub faults: Option<RawSimFaults>,
    pub served_model_name: Option<String>,
    pub executable: Option<String>,
    pub args: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub env_from: Option<Vec<String>>,
    pub env_file: Option<String>,
    pub gpu_memory_fraction: Option<f64>,
    pub kv_cache_memory_bytes: Option<u64>,
    pub startup_timeout: Option<String>,
    pub of: Option<String>,
    pub adapter: Option<String>,
}

/// `timing:` of a simulated engine.
#[derive(Debug, Deserialize)]
pub struct RawSimTiming {
    pub max_batch: Option<i64>,
    pub prefill_us_per_token: Option<f64>,
    pub decode_step_us: Option<f64>,
    pub decode_step_us_per_seq: Option<f64>,
    pub prefix_cache_tokens: Option<u64>,
    pub lora_step_us_per_adapter: Option<f64>,
    pub max_loras: Option<i64>,
}

/// `faults:` of a simulated engine: probabilities per request, seeded.
#[derive(Debug, Deserialize)]
pub struct RawSimFaults {
    pub http_error: Option<f64>,
    pub malformed_chunk: Option<f64>,
    pub drop_connection: Option<f64>,
}
