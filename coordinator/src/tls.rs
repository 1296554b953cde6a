//! The certificates of one experiment: a CA (made for the experiment, or the user's), a server
//! certificate per agent for [`AGENT_SERVER_NAME`], and the coordinator's client certificate.
//! Only the CA certificate is written into the experiment folder; keys stay in memory or go to
//! an agent as a SkyPilot secret.

use std::path::Path;

use anyhow::Context;
use multitenant::config::UserCa;
use multitenant::tls::{
    agent_server_certificate, AGENT_SERVER_NAME, CERT_ENV, CLIENT_CA_ENV, KEY_ENV,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A CA and the coordinator's client identity under it.
pub struct ExperimentTls {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    client_cert_pem: String,
    client_key_pem: String,
}

/// An agent's certificate and key, with the CA it must trust for clients, as the environment
/// variables `agent serve --tls` reads.
pub struct AgentSecrets {
    /// `(name, PEM)` pairs.
    pub env: Vec<(&'static str, String)>,
}

impl ExperimentTls {
    /// A fresh CA for `experiment`, valid for as long as any run lasts.
    pub fn generate(experiment: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("making the experiment's CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("multitenant experiment {experiment} CA"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .context("signing the experiment's CA")?;
        Self::with_issuer(cert.pem(), Issuer::new(params, key))
    }

    /// The user's CA, from its PEM files.
    pub fn from_user_ca(ca: &UserCa) -> anyhow::Result<Self> {
        let cert = std::fs::read_to_string(&ca.cert)
            .with_context(|| format!("reading the CA certificate {}", ca.cert.display()))?;
        let key = std::fs::read_to_string(&ca.key)
            .with_context(|| format!("reading the CA key {}", ca.key.display()))?;
        let key = KeyPair::from_pem(&key)
            .with_context(|| format!("{} is not a PEM private key", ca.key.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key)
            .with_context(|| format!("{} is not a PEM CA certificate", ca.cert.display()))?;
        Self::with_issuer(cert, issuer)
    }

    fn with_issuer(ca_pem: String, issuer: Issuer<'static, KeyPair>) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "multitenant coordinator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the coordinator's client certificate")?;
        Ok(Self {
            ca_pem,
            issuer,
            client_cert_pem: cert.pem(),
            client_key_pem: key.serialize_pem(),
        })
    }

    /// A new server certificate for one agent.
    pub fn agent_secrets(&self) -> anyhow::Result<AgentSecrets> {
        let (cert_pem, key_pem) =
            agent_server_certificate(&self.issuer).context("signing an agent certificate")?;
        Ok(AgentSecrets {
            env: vec![
                (CERT_ENV, cert_pem),
                (KEY_ENV, key_pem),
                (CLIENT_CA_ENV, self.ca_pem.clone()),
            ],
        })
    }

    /// How the coordinator connects: trusts only this CA, checks the agent name, presents its
    /// client certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(AGENT_SERVER_NAME)
            .identity(Identity::from_pem(
                &self.client_cert_pem,
                &self.client_key_pem,
            ))
    }

    /// Writes the CA certificate (public) to `dir/ca.pem`, for whoever inspects the agents.
    pub fn write_ca(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(multitenant::layout::CA_PEM);
        std::fs::write(&path, &self.ca_pem).with_context(|| format!("writing {}", path.display()))
    }
}
