//! Engines that serve tenants: starting them, waiting until they answer, stopping them.
//!
//! The simulated engine runs inside the agent on a loopback port; an external engine is an
//! OpenAI-compatible server somebody else runs, which the agent only checks and never stops.

pub mod sim_gpu;
mod sim_scheduler;
pub mod simulated;

use std::sync::Arc;
use std::time::Duration;

use multitenant::config::{Engine, Tenant};

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
    External,
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
    /// Brings up `tenant`'s engine. Simulated engines share `gpu`, which models the trial's
    /// sharing mode; their seed is derived from the experiment seed and the tenant name.
    pub async fn start(tenant: &Tenant, seed: u64, gpu: Arc<SimGpu>) -> Result<Self, EngineError> {
        match &tenant.engine {
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
                    timing: *timing,
                    faults: *faults,
                    seed: seed ^ name_hash(&tenant.name),
                    record_truth: false,
                };
                let engine = SimEngine::start(listener, config, gpu).map_err(|source| {
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

    /// Stops an engine the agent started; an external engine is left running.
    pub async fn stop(self) {
        match self.handle {
            Handle::Simulated(engine) => engine.stop().await,
            Handle::External => {}
        }
    }
}

/// FNV-1a of a name, to give each tenant its own seed stream.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
