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

/// The vLLM a SkyPilot node gets unless `launcher.skypilot.vllm_version` says otherwise: the
/// version the tests here run against (its CPU build).
pub const DEFAULT_VLLM_VERSION: &str = "0.32.0";

/// Where the default engine set-up puts vLLM on a node, relative to the home folder.
pub const NODE_VLLM_VENV: &str = ".multitenant/vllm-venv";

/// How nodes are brought up.
#[derive(Debug, Clone, PartialEq)]
pub enum LauncherKind {
    /// An agent spawned on this machine for every node, on loopback.
    Local,
    /// Agents that already run, one per node.
    Static(Vec<StaticAgent>),
    /// One SkyPilot cluster per node, through the `sky` CLI.
    SkyPilot(Box<SkyPilotSettings>),
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
    /// How the coordinator reaches it.
    pub address: AgentAddress,
}

/// How the coordinator reaches a static agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddress {
    /// Written in the config.
    Given {
        /// `http://127.0.0.1:port` (loopback only) or `https://host:port` (TLS with the
        /// launcher's CA).
        url: String,
        /// Environment variable of this coordinator that holds the agent's token.
        token_env: String,
    },
    /// The agent paired as this node (`coordinator pair`): its URL, token and certificates
    /// are in the coordinator's config folder.
    Paired,
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
    /// Shell commands of the task's `setup` that install the engine: by default, vLLM
    /// [`SkyPilotSettings::vllm_version`] into its own virtualenv (`~/.multitenant/vllm-venv`,
    /// first on the agent's PATH), skipped when that version is there already.
    pub engine_setup: String,
    /// The vLLM version the default `engine_setup` installs.
    pub vllm_version: String,
    /// How the agent gets onto the node.
    pub agent_install: AgentInstall,
    /// The nodes' OS and architecture, which `agent_install: binary` must match.
    pub node_platform: Platform,
}

/// How a SkyPilot node gets its agent (`launcher.skypilot.agent_install`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentInstall {
    /// The agent's source, shipped with the task and built on the node with the locked
    /// dependencies (once per source per cluster): works from any laptop.
    Source,
    /// This machine's agent binary, copied to the node: only when this machine's platform is
    /// the node's.
    Binary,
    /// A prebuilt agent binary downloaded by the node.
    Url {
        /// `https://` address of the binary.
        url: String,
        /// Its SHA-256 (lowercase hex), checked on the node before it runs, when given.
        sha256: Option<String>,
    },
}

/// An operating system and CPU architecture, as Rust names them (`linux-x86_64`,
/// `macos-aarch64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `macos`, …
    pub os: String,
    /// `x86_64`, `aarch64`, …
    pub arch: String,
}

impl Platform {
    /// The platform this program was built for.
    pub fn this_machine() -> Self {
        Self {
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        }
    }

    /// `os-arch`, e.g. `linux-x86_64`; `None` unless both parts are there.
    pub fn parse(text: &str) -> Option<Self> {
        let (os, arch) = text.split_once('-')?;
        let word = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        (word(os) && word(arch)).then(|| Self {
            os: os.to_owned(),
            arch: arch.to_owned(),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.os, self.arch)
    }
}
