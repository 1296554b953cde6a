//! Engines that serve tenants: starting them, waiting until they answer, stopping them.
//!
//! The simulated engine runs inside the agent on a loopback port; a vLLM engine is a
//! supervised process group (see [`process`]); an external engine is an OpenAI-compatible
//! server somebody else runs, which the agent only checks and never stops.

pub mod arrival_stamp;
mod model_source;
pub mod process;
pub mod sim_gpu;
mod sim_prefix_cache;
mod sim_scheduler;
pub mod simulated;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use multitenant::config::accelerators::gib;
use multitenant::config::{Engine, Tenant, VllmEngine, VllmMemory};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use process::{EngineProcess, ExitReport};
use sim_gpu::SimGpu;
use simulated::{SimEngine, SimEngineConfig};

/// Why an engine could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The tenant's port could not be bound.
    #[error("tenant {tenant}: cannot listen on 127.0.0.1:{port}: {source}")]
    Bind {
        /// Tenant.
        tenant: String,
        /// Port asked for (0 = any).
        port: u16,
        /// The bind error.
        source: std::io::Error,
    },
    /// The API key's environment variable is not set.
    #[error("tenant {tenant}: environment variable {var} (engine.api_key_env) is not set")]
    MissingApiKey {
        /// Tenant.
        tenant: String,
        /// Variable name.
        var: String,
    },
    /// The share of GPU memory a vLLM server checks for at start is not free.
    #[error(
        "tenant {tenant}: vLLM checks at start that {share} of GPU 0 ({}) is free, and only {} of its {} is free now (the engines started before it and other processes hold the rest: nvidia-smi shows them); lower this tenant's engine.gpu_memory_fraction, or the others'",
        gib(*asked), gib(*free), gib(*total)
    )]
    GpuMemoryShort {
        /// Tenant.
        tenant: String,
        /// The fraction of the total asked for.
        share: f64,
        /// Bytes asked for.
        asked: u64,
        /// Bytes free.
        free: u64,
        /// Bytes in all.
        total: u64,
    },
    /// The engine's executable is not there.
    #[error("tenant {tenant}: engine executable {executable:?} not found (on PATH or as a path)")]
    NotFound {
        /// Tenant.
        tenant: String,
        /// What was looked for.
        executable: String,
    },
    /// A variable of `env_from` is not in the agent's environment.
    #[error(
        "tenant {tenant}: environment variable {var} (engine.env_from) is not set for the agent"
    )]
    MissingEnv {
        /// Tenant.
        tenant: String,
        /// Variable name.
        var: String,
    },
    /// The `env_file` cannot be used. The message never quotes a value.
    #[error("tenant {tenant}: engine.env_file {}: {message}", path.display())]
    EnvFile {
        /// Tenant.
        tenant: String,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A bucket model could not be synced to local disk.
    #[error("tenant {tenant}: syncing {model}: {message}")]
    Sync {
        /// Tenant.
        tenant: String,
        /// The bucket folder.
        model: String,
        /// What went wrong.
        message: String,
    },
    /// The model is a local path that does not exist.
    #[error("tenant {tenant}: model path {path} does not exist")]
    ModelMissing {
        /// Tenant.
        tenant: String,
        /// The path.
        path: String,
    },
    /// An adapter's local folder does not exist.
    #[error("tenant {tenant}: adapter path {path} does not exist")]
    AdapterMissing {
        /// The adapter tenant.
        tenant: String,
        /// The path.
        path: String,
    },
    /// The tenant is an adapter, which has no engine of its own.
    #[error("tenant {tenant} is an adapter: the engine of {base} serves it")]
    NoEngineOfItsOwn {
        /// The adapter tenant.
        tenant: String,
        /// Its base.
        base: String,
    },
    /// The engine process could not be started.
    #[error("tenant {tenant}: cannot start the engine: {source}")]
    Spawn {
        /// Tenant.
        tenant: String,
        /// The error.
        source: std::io::Error,
    },
    /// The engine exited before it became healthy.
    #[error("tenant {tenant}: the engine exited before it became healthy: {}", report.describe())]
    Exited {
        /// Tenant.
        tenant: String,
        /// How it ended.
        report: ExitReport,
    },
    /// The run was stopped while the engine was starting.
    #[error("tenant {tenant}: start abandoned because the run was stopped")]
    Cancelled {
        /// Tenant.
        tenant: String,
    },
    /// The engine did not answer its health check in time.
    #[error("tenant {tenant}: {url} did not become healthy within {timeout:?}: {last_error}")]
    Unhealthy {
        /// Tenant.
        tenant: String,
        /// Base URL probed.
        url: String,
        /// How long we waited.
        timeout: Duration,
        /// The last probe's failure.
        last_error: String,
    },
}

enum Handle {
    Simulated(SimEngine),
    Process(ProcessHandle),
    External,
}

/// A supervised engine process: a task owns it, waits for it, and stops it on request.
struct ProcessHandle {
    pgid: i32,
    stop: oneshot::Sender<()>,
    exited: watch::Receiver<Option<ExitReport>>,
    task: JoinHandle<ExitReport>,
}

impl ProcessHandle {
    fn supervise(mut process: EngineProcess) -> Self {
        let pgid = process.pgid();
        let (stop, stop_requested) = oneshot::channel();
        let (exited_tx, exited) = watch::channel(None);
        let task = tokio::spawn(async move {
            tokio::select! {
                report = process.wait() => {
                    exited_tx.send_replace(Some(report.clone()));
                    // Whatever the engine left in its group goes too.
                    process.stop().await;
                    report
                }
                _ = stop_requested => process.stop().await,
            }
        });
        Self {
            pgid,
            stop,
            exited,
            task,
        }
    }
}

/// An engine serving one tenant.
pub struct RunningEngine {
    /// Base URL, without a trailing slash.
    pub base_url: String,
    /// Bearer key to send, for external engines that need one. Never logged.
    pub api_key: Option<String>,
    handle: Handle,
}

impl RunningEngine {
    /// Brings up `tenant`'s engine in `ctx`, serving the LoRA `adapters` (tenants of kind
    /// adapter) beside its own model. Simulated engines share `ctx.gpu`, which models the
    /// trial's sharing mode; their seed is derived from the experiment seed and the tenant name.
    pub async fn start(
        tenant: &Tenant,
        adapters: &[&Tenant],
        ctx: StartContext<'_>,
    ) -> Result<Self, EngineError> {
        match &tenant.engine {
            Engine::Vllm(vllm) => start_vllm(tenant, vllm, adapters, &ctx).await,
            Engine::Adapter(a) => Err(EngineError::NoEngineOfItsOwn {
                tenant: tenant.name.clone(),
                base: a.of.clone(),
            }),
            Engine::Simulated {
                model,
                timing,
                faults,
            } => {
                let port = tenant.port.unwrap_or(0);
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .map_err(|source| EngineError::Bind {
                        tenant: tenant.name.clone(),
                        port,
                        source,
                    })?;
                let config = SimEngineConfig {
                    model: model.clone(),
                    adapters: adapters
                        .iter()
                        .map(|a| a.engine.model().to_owned())
                        .collect(),
                    timing: *timing,
                    faults: *faults,
                    seed: ctx.seed ^ name_hash(&tenant.name),
                    record_truth: false,
                };
                let engine = SimEngine::start(listener, config, ctx.gpu).map_err(|source| {
                    EngineError::Bind {
                        tenant: tenant.name.clone(),
                        port,
                        source,
                    }
                })?;
                Ok(Self {
                    base_url: engine.base_url(),
                    api_key: None,
                    handle: Handle::Simulated(engine),
                })
            }
            Engine::External {
                url, api_key_env, ..
            } => {
                let api_key = match api_key_env {
                    None => None,
                    Some(var) => {
                        Some(std::env::var(var).map_err(|_| EngineError::MissingApiKey {
                            tenant: tenant.name.clone(),
                            var: var.clone(),
                        })?)
                    }
                };
                Ok(Self {
                    base_url: url.clone(),
                    api_key,
                    handle: Handle::External,
                })
            }
        }
    }

    /// Waits until `GET /health` (or, for servers without it, `GET /v1/models`) answers 2xx.
    pub async fn wait_healthy(
        &self,
        tenant: &str,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_error = String::from("no probe finished");
        loop {
            if let Some(report) = self.exit_report() {
                return Err(EngineError::Exited {
                    tenant: tenant.to_owned(),
                    report,
                });
            }
            for path in ["/health", "/v1/models"] {
                let mut probe = http
                    .get(format!("{}{path}", self.base_url))
                    .timeout(Duration::from_secs(2));
                if let Some(key) = &self.api_key {
                    probe = probe.bearer_auth(key);
                }
                match probe.send().await {
                    Ok(r) if r.status().is_success() => return Ok(()),
                    Ok(r) => last_error = format!("GET {path} answered {}", r.status()),
                    Err(e) => last_error = format!("GET {path}: {e}"),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EngineError::Unhealthy {
                    tenant: tenant.to_owned(),
                    url: self.base_url.clone(),
                    timeout,
                    last_error,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The process group of an engine the agent runs as a process.
    pub fn pgid(&self) -> Option<i32> {
        match &self.handle {
            Handle::Process(p) => Some(p.pgid),
            _ => None,
        }
    }

    /// How the engine process ended, if it has (only engines the agent runs as processes).
    pub fn exit_report(&self) -> Option<ExitReport> {
        match &self.handle {
            Handle::Process(p) => p.exited.borrow().clone(),
            _ => None,
        }
    }

    /// A receiver that holds `Some` once the engine process has exited on its own.
    pub fn exit_watch(&self) -> Option<watch::Receiver<Option<ExitReport>>> {
        match &self.handle {
            Handle::Process(p) => Some(p.exited.clone()),
            _ => None,
        }
    }

    /// Stops an engine the agent started (an external engine is left running) and says how
    /// a process engine ended.
    pub async fn stop(self) -> Option<ExitReport> {
        match self.handle {
            Handle::Simulated(engine) => {
                engine.stop().await;
                None
            }
            Handle::Process(p) => {
                let _ = p.stop.send(());
                p.task.await.ok()
            }
            Handle::External => None,
        }
    }
}

/// What starting an engine needs beyond its tenant.
pub struct StartContext<'a> {
    /// The experiment seed (simulated engines derive theirs from it and the tenant name).
    pub seed: u64,
    /// The simulated GPU simulated engines of this trial share.
    pub gpu: Arc<SimGpu>,
    /// Engine processes log to `<log_dir>/<tenant>.log`.
    pub log_dir: &'a Path,
    /// Added after an engine process's configured environment (e.g. the MPS pipe folder).
    pub extra_env: &'a [(String, String)],
    /// Where bucket models are synced to.
    pub model_cache: &'a Path,
    /// GPU 0's memory now, where NVML reports it.
    pub gpu_memory: Option<GpuMemoryNow>,
    /// GPU 0's total memory: NVML's, else the node's configured size.
    pub gpu_total: Option<u64>,
}

/// The `vllm serve` arguments that load `adapters`: `--enable-lora`, one `--lora-modules`
/// entry per adapter, and `--max-loras` (vLLM's default, 1, would run one adapter at a time)
/// unless the configured `args` set it.
fn lora_args(adapters: &[&Tenant], args: &[String]) -> Vec<String> {
    let modules: Vec<String> = adapters
        .iter()
        .filter_map(|t| match &t.engine {
            Engine::Adapter(a) => Some(format!("{}={}", a.model, a.adapter)),
            _ => None,
        })
        .collect();
    if modules.is_empty() {
        return Vec::new();
    }
    let mut out = vec!["--enable-lora".to_owned(), "--lora-modules".to_owned()];
    let count = modules.len();
    out.extend(modules);
    let sets_max_loras = args
        .iter()
        .any(|a| a.split('=').next() == Some("--max-loras"));
    if !sets_max_loras {
        out.extend(["--max-loras".to_owned(), count.to_string()]);
    }
    out
}

/// Starts `vllm serve` for `tenant` on loopback, with its `adapters` loaded.
async fn start_vllm(
    tenant: &Tenant,
    vllm: &VllmEngine,
    adapters: &[&Tenant],
    ctx: &StartContext<'_>,
) -> Result<RunningEngine, EngineError> {
    let name = tenant.name.clone();
    preflight(tenant, adapters)?;
    if let Some(gpu) = ctx.gpu_memory {
        startup_memory_check(&name, vllm.memory, gpu)?;
    }
    let sync_log = ctx.log_dir.join(format!("{name}.sync.log"));
    let model = model_source::resolve(
        &name,
        &vllm.model,
        ctx.model_cache,
        &sync_log,
        vllm.startup_timeout,
    )
    .await?;
    // Bind to check the port (or to pick a free one), then hand it to the engine.
    let probe =
        std::net::TcpListener::bind(("127.0.0.1", tenant.port.unwrap_or(0))).map_err(|source| {
            EngineError::Bind {
                tenant: name.clone(),
                port: tenant.port.unwrap_or(0),
                source,
            }
        })?;
    let port = probe
        .local_addr()
        .map_err(|source| EngineError::Bind {
            tenant: name.clone(),
            port: 0,
            source,
        })?
        .port();
    drop(probe);
    let mut args: Vec<String> = vec![
        "serve".into(),
        model,
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--served-model-name".into(),
        vllm.served_model_name.clone(),
    ];
    args.extend(memory_args(vllm.memory, ctx.gpu_total));
    args.extend(lora_args(adapters, &vllm.args));
    args.extend(vllm.args.iter().cloned());
    let mut env: Vec<(String, String)> = vec![
        ("VLLM_NO_USAGE_STATS".into(), "1".into()),
        ("DO_NOT_TRACK".into(), "1".into()),
    ];
    env.extend(vllm.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(secret_env(tenant, vllm)?);
    env.extend(ctx.extra_env.iter().cloned());
    let log = ctx.log_dir.join(format!("{name}.log"));
    let process = EngineProcess::spawn(&vllm.executable, &args, &env, &log).map_err(|source| {
        EngineError::Spawn {
            tenant: name,
            source,
        }
    })?;
    Ok(RunningEngine {
        base_url: format!("http://127.0.0.1:{port}"),
        api_key: None,
        handle: Handle::Process(ProcessHandle::supervise(process)),
    })
}

/// The memory arguments of `vllm serve`. A fixed KV cache always goes with a
/// `--gpu-memory-utilization`: vLLM checks at start that this share of the GPU is free
/// whatever the KV size (`init_device` → `request_memory`, `vllm/v1/worker/gpu_worker.py`), and
/// its default, 0.92, would stop every engine after the first. Without a stated share the agent
/// passes the KV cache's own ([`VllmMemory::kv_startup_fraction`]); on a node without a GPU
/// (`gpu_total` unknown: a CPU vLLM) only the KV size is passed.
pub fn memory_args(memory: VllmMemory, gpu_total: Option<u64>) -> Vec<String> {
    let fraction = |f: f64| ["--gpu-memory-utilization".to_owned(), f.to_string()];
    match memory {
        VllmMemory::Default => Vec::new(),
        VllmMemory::Fraction(f) => fraction(f).to_vec(),
        VllmMemory::KvCacheBytes { bytes, .. } => {
            let mut args = vec!["--kv-cache-memory-bytes".to_owned(), bytes.to_string()];
            let share = memory.startup_share(gpu_total);
            args.extend(share.map(fraction).into_iter().flatten());
            args
        }
    }
}

/// GPU 0's memory as NVML reports it when an engine is about to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemoryNow {
    /// All of it, bytes.
    pub total: u64,
    /// What no process holds, bytes.
    pub free: u64,
}

/// Refuses to start a vLLM server whose start-up check would fail: the share of the GPU it
/// asks for is not free now. vLLM would stop with "Free memory on device … is less than
/// desired GPU memory utilization" after loading for a while; this says so at once, with the
/// figures and the fix.
fn startup_memory_check(
    tenant: &str,
    memory: VllmMemory,
    gpu: GpuMemoryNow,
) -> Result<(), EngineError> {
    let Some(share) = memory.startup_share(Some(gpu.total)) else {
        return Ok(());
    };
    let asked = (gpu.total as f64 * share).ceil() as u64;
    if gpu.free >= asked {
        return Ok(());
    }
    Err(EngineError::GpuMemoryShort {
        tenant: tenant.to_owned(),
        share,
        asked,
        free: gpu.free,
        total: gpu.total,
    })
}

/// Checks what can be checked before any engine of a trial starts: the executable and a local
/// model path of a vllm engine, the local folders of the `adapters` it serves, and that a
/// configured port is free.
pub fn preflight(tenant: &Tenant, adapters: &[&Tenant]) -> Result<(), EngineError> {
    let name = || tenant.name.clone();
    let looks_like_path = |p: &str| {
        ["/", "./", "../"]
            .iter()
            .any(|prefix| p.starts_with(prefix))
    };
    if let Engine::Vllm(vllm) = &tenant.engine {
        if find_executable(&vllm.executable).is_none() {
            return Err(EngineError::NotFound {
                tenant: name(),
                executable: vllm.executable.clone(),
            });
        }
        if looks_like_path(&vllm.model) && !Path::new(&vllm.model).exists() {
            return Err(EngineError::ModelMissing {
                tenant: name(),
                path: vllm.model.clone(),
            });
        }
        secret_env(tenant, vllm)?;
        model_source::preflight(&tenant.name, &vllm.model)?;
        for adapter in adapters {
            let Engine::Adapter(a) = &adapter.engine else {
                continue;
            };
            if looks_like_path(&a.adapter) && !Path::new(&a.adapter).exists() {
                return Err(EngineError::AdapterMissing {
                    tenant: adapter.name.clone(),
                    path: a.adapter.clone(),
                });
            }
        }
    }
    if let Some(port) = tenant.port {
        std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|source| EngineError::Bind {
            tenant: name(),
            port,
            source,
        })?;
    }
    Ok(())
}

/// The secret part of a vllm engine's environment: `env_from` copied from the agent's own
/// environment, then `env_file`'s `KEY=VALUE` lines (blank lines and `#` comments skipped).
fn secret_env(tenant: &Tenant, vllm: &VllmEngine) -> Result<Vec<(String, String)>, EngineError> {
    let mut env = Vec::new();
    for var in &vllm.env_from {
        let value = std::env::var(var).map_err(|_| EngineError::MissingEnv {
            tenant: tenant.name.clone(),
            var: var.clone(),
        })?;
        env.push((var.clone(), value));
    }
    if let Some(path) = &vllm.env_file {
        let bad = |message: String| EngineError::EnvFile {
            tenant: tenant.name.clone(),
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {} is not KEY=VALUE", n + 1)))?;
            let key = key.trim().trim_start_matches("export ").trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(format!(
                    "line {}: {key:?} is not a variable name",
                    n + 1
                )));
            }
            env.push((key.to_owned(), value.trim().trim_matches('"').to_owned()));
        }
    }
    Ok(env)
}

/// The file `name` names: itself if it contains a `/`, else the first match on PATH.
pub fn find_executable(name: &str) -> Option<std::path::PathBuf> {
    if name.contains('/') {
        return Path::new(name)
            .is_file()
            .then(|| Path::new(name).to_owned());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// FNV-1a of a name: a stable seed or key derived from it.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitenant::config::VllmMemory;

    fn tenant(env_from: Vec<String>, env_file: Option<std::path::PathBuf>) -> Tenant {
        Tenant {
            name: "t".into(),
            engine: Engine::Vllm(VllmEngine {
                model: "m".into(),
                served_model_name: "m".into(),
                executable: "sh".into(),
                args: vec![],
                env: Default::default(),
                env_from,
                env_file,
                memory: VllmMemory::Default,
                startup_timeout: Duration::from_secs(1),
            }),
            workload: "w".into(),
            port: None,
            mps_thread_percentage: None,
            mps_pinned_memory_limit: None,
        }
    }

    fn adapter(name: &str, path: &str) -> Tenant {
        Tenant {
            name: name.into(),
            engine: Engine::Adapter(multitenant::config::AdapterEngine {
                of: "t".into(),
                adapter: path.into(),
                model: name.into(),
                simulated: false,
            }),
            ..tenant(vec![], None)
        }
    }

    #[test]
    fn a_base_engine_loads_every_adapter_and_may_batch_them_all() {
        let (sql, chat) = (
            adapter("sql", "hub/sql-lora"),
            adapter("chat", "/adapters/chat"),
        );
        assert_eq!(
            lora_args(&[&sql, &chat], &[]),
            [
                "--enable-lora",
                "--lora-modules",
                "sql=hub/sql-lora",
                "chat=/adapters/chat",
                "--max-loras",
                "2"
            ]
        );
        let own = ["--max-loras=1".to_owned()];
        assert_eq!(
            lora_args(&[&sql], &own).last().map(String::as_str),
            Some("sql=hub/sql-lora")
        );
        assert!(lora_args(&[], &[]).is_empty());
        // The executable is `sh`, found on PATH; the adapter folder is not there.
        let err = preflight(&tenant(vec![], None), &[&sql, &chat])
            .expect_err("missing folder")
            .to_string();
        assert_eq!(
            err,
            "tenant chat: adapter path /adapters/chat does not exist"
        );
    }

    fn secrets(t: &Tenant) -> Result<Vec<(String, String)>, EngineError> {
        let Engine::Vllm(v) = &t.engine else {
            unreachable!("built as vllm")
        };
        secret_env(t, v)
    }

    #[test]
    fn secrets_come_from_the_agent_env_or_a_file_and_errors_never_show_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secrets.env");
        std::fs::write(
            &file,
            "# tokens\nexport HF_TOKEN=\"hf_s3cr3t\"\n\nOTHER = x=y\n",
        )
        .expect("write");
        let t = tenant(vec!["PATH".into()], Some(file.clone()));
        let env = secrets(&t).expect("secrets");
        assert_eq!(env[0].0, "PATH");
        assert_eq!(
            &env[1..],
            [
                ("HF_TOKEN".to_owned(), "hf_s3cr3t".to_owned()),
                ("OTHER".to_owned(), "x=y".to_owned())
            ]
        );
        assert!(preflight(&t, &[]).is_ok());

        std::fs::write(
            &file,
            "HF_TOKEN=hf_s3cr3t\nthis line has the secret hf_s3cr3t but no equals\n",
        )
        .expect("write");
        let err = secrets(&t).expect_err("bad line").to_string();
        assert!(
            err.contains("line 2 is not KEY=VALUE") && !err.contains("hf_s3cr3t"),
            "{err}"
        );
        let missing = tenant(vec!["MULTITENANT_TEST_SURELY_UNSET".into()], None);
        let err = preflight(&missing, &[])
            .expect_err("missing var")
            .to_string();
        assert!(
            err.contains("MULTITENANT_TEST_SURELY_UNSET (engine.env_from) is not set"),
            "{err}"
        );
    }
}
