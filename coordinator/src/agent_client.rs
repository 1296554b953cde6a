//! Connecting to an agent with its token attached to every call.

use std::time::Duration;

use anyhow::Context;
use multitenant::auth::BearerToken;
use multitenant::proto::v1::agent_client::AgentClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// Attaches the bearer token to each request.
#[derive(Clone)]
pub struct WithToken(BearerToken);

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0.attach(request)
    }
}

/// `error` and every error under it, joined: a TLS refusal (unknown CA, wrong name, a
/// certificate the agent does not accept) is only named at the bottom of the chain.
pub fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = s.source();
    }
    for (alert, meaning) in [
        (
            "UnknownCA",
            "the other side does not trust our certificate's CA",
        ),
        ("BadCertificate", "the other side rejected our certificate"),
        (
            "DecryptError",
            "the other side could not verify our certificate with the CA it trusts",
        ),
        (
            "CertificateRequired",
            "the agent requires a client certificate",
        ),
        (
            "invalid peer certificate",
            "the agent's certificate is not from this experiment's CA or not for its name",
        ),
    ] {
        if text.contains(alert) {
            text = format!("{text} ({meaning})");
        }
    }
    text
}

/// Why the first call on a new connection failed: the error and its sources and, over TLS
/// when they do not name a certificate, how an agent refuses a client certificate it does not
/// accept (it closes the connection once the handshake is done, so the call sees a closed or
/// cancelled connection and no word about certificates).
pub fn first_call_refused(status: &Status, over_tls: bool) -> String {
    let mut reason = with_sources(status);
    if over_tls && !reason.contains("certificate") {
        reason.push_str(" (over TLS, a closed connection on the first call is how an agent refuses a client certificate it does not accept: check that it runs with this experiment's CA, or that this coordinator was paired with it since its identity last changed)");
    }
    reason
}

/// A client of one agent.
pub type Client = AgentClient<InterceptedService<Channel, WithToken>>;

/// Connects to `endpoint` (e.g. `http://127.0.0.1:7777`, or `https://…` with `tls`). The
/// channel reconnects by itself after a broken connection, so one client lasts a whole
/// experiment.
pub async fn connect(
    endpoint: &str,
    token: BearerToken,
    tls: Option<ClientTlsConfig>,
) -> anyhow::Result<Client> {
    let mut builder = Endpoint::from_shared(endpoint.to_owned())
        .with_context(|| format!("{endpoint:?} is not a valid agent address"))?
        .connect_timeout(Duration::from_secs(5))
        // Pings find an agent whose machine vanished without closing the connection.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .with_context(|| format!("TLS settings for {endpoint}"))?;
    }
    let channel = builder.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "connecting to the agent at {endpoint}: {}",
            with_sources(&e)
        )
    })?;
    Ok(AgentClient::with_interceptor(channel, WithToken(token)))
}
