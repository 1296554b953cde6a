//! The static launcher: agents that already run, one per node, from `launcher.static` (tokens
//! from the environment and TLS with the user's CA, or agents paired with `coordinator pair`)
//! or given directly; nothing to tear down.

use anyhow::{bail, Context};
use multitenant::auth::BearerToken;
use multitenant::config::{AgentAddress, Experiment, StaticAgent};
use tokio_util::sync::CancellationToken;

use super::{AgentEndpoint, Launched, Launcher, Teardown};
use crate::run::ExperimentRun;
use crate::tls::ExperimentTls;

/// Agents that already run.
pub struct StaticLauncher {
    endpoints: Vec<AgentEndpoint>,
}

impl StaticLauncher {
    /// The given agents, one per node in node order.
    pub fn given(endpoints: Vec<AgentEndpoint>) -> Self {
        Self { endpoints }
    }

    /// The config's static agents, in node order: tokens from the environment, or the
    /// agents paired as their nodes.
    pub fn from_config(experiment: &Experiment, agents: &[StaticAgent]) -> anyhow::Result<Self> {
        let tls = match &experiment.launcher.tls {
            Some(ca) => Some(ExperimentTls::from_user_ca(ca)?),
            None => None,
        };
        let endpoints = experiment
            .nodes
            .iter()
            .map(|node| {
                let agent = agents
                    .iter()
                    .find(|a| a.node == node.name)
                    .with_context(|| format!("node {} has no agent", node.name))?;
                let (url, token_env) = match &agent.address {
                    AgentAddress::Paired => return crate::paired::load(&node.name)?.endpoint(),
                    AgentAddress::Given { url, token_env } => (url, token_env),
                };
                let secret = std::env::var(token_env).with_context(|| {
                    format!(
                        "node {}: the agent token is read from {token_env}, which is not set",
                        node.name
                    )
                })?;
                let token = BearerToken::new(&secret)
                    .with_context(|| format!("node {}: the token in {token_env}", node.name))?;
                let tls = match (&tls, url.starts_with("https://")) {
                    (Some(t), true) => Some(t.client_config()),
                    _ => None,
                };
                Ok(AgentEndpoint {
                    url: url.clone(),
                    token,
                    tls,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { endpoints })
    }
}

impl StaticLauncher {
    /// Its agents, one per node in node order.
    pub fn into_endpoints(self) -> Vec<AgentEndpoint> {
        self.endpoints
    }
}

impl Launcher for StaticLauncher {
    fn name(&self) -> &'static str {
        "static"
    }

    async fn launch(
        &mut self,
        run: &ExperimentRun<'_>,
        _cancel: &CancellationToken,
    ) -> anyhow::Result<Launched> {
        if self.endpoints.len() != run.experiment.nodes.len() {
            bail!(
                "{} agent endpoints given for {} nodes",
                self.endpoints.len(),
                run.experiment.nodes.len()
            );
        }
        Ok(Launched {
            nodes: self.endpoints.iter().cloned().map(Ok).collect(),
            config: run.config.to_owned(),
        })
    }

    async fn tear_down(&mut self) -> Teardown {
        Teardown::default()
    }
}
