//! How an experiment's nodes are brought up, reached and torn down.

use std::path::PathBuf;
use std::time::Duration;

/// The `launcher:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Launcher {
    /// Which launcher.
    pub kind: LauncherKind,
    /// Leave launched nodes up after the run (the summary says so); by default every node
    /// this experiment launched is torn down, on success, failure or Ctrl-C.
    pub keep: bool,
    /// What happens to the other nodes when one cannot be launched or reached.
    pub on_node_failure: OnNodeFailure,
    /// The user's CA for coordinator–agent TLS; without it, the coordinator makes one per
    /// experiment (and needs one for `static` agents that are not on loopback).
    pub tls: Option<UserCa>,
    /// How long an agent goes on with a run whose coordinator has stopped calling (no call,
    /// no open event stream): after it, the run is stopped, its engines are ended and its
    /// files kept; an agent a launcher started exits once it has no run and no call for as
    /// long.
    pub lease: Duration,
}

/// The lease unless `launcher.lease` says otherwise: long enough for a laptop's network to
/// come back, short enough that a forgotten GPU node goes idle (and autostops) soon.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(180);

/// How nodes are brought up.
#[derive(Debug, Clone, PartialEq)]
pub enum LauncherKind {
    /// An agent spawned on this machine for every node, on loopback.
    Local,
    /// Agents that already run, one per node.
    Static(Vec<StaticAgent>),
    /// One SkyPilot cluster per node, through the `sky` CLI.
    SkyPilot(SkyPilotSettings),
}

impl LauncherKind {
    /// `local`, `static` or `skypilot`.
    pub fn name(&self) -> &'static str {
        match self {
            LauncherKind::Local => "local",
            LauncherKind::Static(_) => "static",
            LauncherKind::SkyPilot(_) => "skypilot",
        }
    }
}

/// What to do when a node fails to come up or to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNodeFailure {
    /// Stop the experiment (tearing down every node launched).
    Stop,
    /// Run on with the nodes that are up; the failed node is reported.
    Continue,
}

/// A CA certificate and its key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCa {
    /// CA certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// An agent that already runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAgent {
    /// The node it serves.
    pub node: String,
    /// `http://127.0.0.1:port` (loopback only) or `https://host:port` (TLS with the
    /// launcher's CA).
    pub url: String,
    /// Environment variable of this coordinator that holds the agent's token.
    pub token_env: String,
}

/// Settings of the SkyPilot launcher (SkyPilot 0.14's task YAML and CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkyPilotSettings {
    /// Cluster names are `<prefix>-<node>-<run>`.
    pub cluster_prefix: String,
    /// SkyPilot `infra` (`aws`, `gcp/us-central1`, `k8s`); `None` lets SkyPilot choose.
    pub infra: Option<String>,
    /// Spot instances.
    pub use_spot: bool,
    /// Disk size, GB.
    pub disk_size: Option<u32>,
    /// `resources.image_id` (e.g. `docker:vllm/vllm-openai:v0.11.0`).
    pub image_id: Option<String>,
    /// Autostop (and down) after this many idle minutes: the safety net if teardown fails.
    pub idle_minutes_to_autostop: u32,
    /// Port the agent listens on, declared in `resources.ports`.
    pub agent_port: u16,
    /// Shell commands of the task's `setup` that install the engine.
    pub engine_setup: String,
}
