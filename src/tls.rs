//! What both sides agree on for TLS between the coordinator and its agents.
//!
//! Each experiment has a certificate authority of its own (made by the coordinator, or the
//! user's). Every agent gets a server certificate from it for the fixed name
//! [`AGENT_SERVER_NAME`], whatever address the cloud gives the node, and the coordinator a
//! client certificate: the agent accepts only connections that present one (mutual TLS), and
//! the bearer token is still checked on every call. The PEM texts reach an agent through the
//! environment variables named here, never through its command line.

/// The name in every agent's certificate; the coordinator verifies it instead of an address
/// that is known only once the node is up.
pub const AGENT_SERVER_NAME: &str = "agent.multitenant.invalid";

/// PEM of the agent's certificate.
pub const CERT_ENV: &str = "MULTITENANT_TLS_CERT";
/// PEM of the agent's private key.
pub const KEY_ENV: &str = "MULTITENANT_TLS_KEY";
/// PEM of the CA whose client certificates the agent accepts.
pub const CLIENT_CA_ENV: &str = "MULTITENANT_TLS_CLIENT_CA";
