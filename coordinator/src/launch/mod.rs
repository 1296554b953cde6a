//! Bringing agents up and taking them down again, behind one [`Launcher`] trait:
//!
//! - [`LocalLauncher`]: `agent serve` spawned on this machine's loopback for every node;
//! - [`StaticLauncher`]: agents that already run (`launcher.static`, or endpoints given);
//! - [`SkyPilotLauncher`]: one SkyPilot cluster per node, torn down whatever happens.
//!
//! `coordinator run` drives whichever it is given through the trait alone; a fourth launcher
//! (Kubernetes, a SLURM allocation) implements the same three methods.

mod local;
mod skypilot;
mod static_agents;

use std::future::Future;

use tokio_util::sync::CancellationToken;

pub use self::skypilot::SkyPilotLauncher;
pub use local::{find_agent_binary, LocalAgent, LocalLauncher};
pub use static_agents::StaticLauncher;

use crate::run::ExperimentRun;

/// Where an agent listens and the token it wants.
#[derive(Debug, Clone)]
pub struct AgentEndpoint {
    /// `http://host:port`, or `https://host:port` with `tls`.
    pub url: String,
    /// Its token.
    pub token: multitenant::auth::BearerToken,
    /// How to check the agent and present ourselves to it; `None` for plain loopback.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

/// What a launch brought up.
pub struct Launched {
    /// Per node, in config order: its agent, or why it could not be brought up.
    pub nodes: Vec<Result<AgentEndpoint, String>>,
    /// The config text the agents get (a launcher may point its file paths at the copies
    /// on its nodes).
    pub config: String,
}

/// What a teardown leaves for the reader.
#[derive(Debug, Default)]
pub struct Teardown {
    /// Printed, and kept in the summary's warnings.
    pub notes: Vec<String>,
    /// Failures of the teardown itself: they fail the run.
    pub failures: Vec<String>,
}

/// One way of bringing up an agent per node.
pub trait Launcher {
    /// Its name in `plan.json`.
    fn name(&self) -> &'static str;

    /// Brings every node's agent up, or refuses before anything is brought up (`Err`). A node
    /// that could not be brought up is an `Err` of its own in [`Launched::nodes`]. `cancel`
    /// (Ctrl-C) abandons what is still starting.
    fn launch(
        &mut self,
        run: &ExperimentRun<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = anyhow::Result<Launched>> + Send;

    /// Takes down whatever the launch brought up, whatever happened since; safe to call after
    /// a failed launch.
    fn tear_down(&mut self) -> impl Future<Output = Teardown> + Send;
}
