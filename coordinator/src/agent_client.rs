//! Connecting to an agent with its token attached to every call.

use std::time::Duration;

use anyhow::Context;
use multitenant::auth::BearerToken;
use multitenant::proto::v1::agent_client::AgentClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Attaches the bearer token to each request.
#[derive(Clone)]
pub struct WithToken(BearerToken);

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0.attach(request)
    }
}

/// A client of one agent.
pub type Client = AgentClient<InterceptedService<Channel, WithToken>>;

/// Connects to `endpoint` (e.g. `http://127.0.0.1:7777`). The channel reconnects by itself
/// after a broken connection, so one client lasts a whole experiment.
pub async fn connect(endpoint: &str, token: BearerToken) -> anyhow::Result<Client> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .with_context(|| format!("{endpoint:?} is not a valid agent address"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to the agent at {endpoint}"))?;
    Ok(AgentClient::with_interceptor(channel, WithToken(token)))
}
