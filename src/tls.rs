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

/// A new server certificate for [`AGENT_SERVER_NAME`], signed by `issuer` (the experiment's CA
/// or an agent's own): its PEM and its key's PEM.
pub fn agent_server_certificate(
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![AGENT_SERVER_NAME.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, AGENT_SERVER_NAME);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}
