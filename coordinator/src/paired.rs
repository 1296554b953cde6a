//! Agents this coordinator has paired with (`coordinator pair`), kept in the user's config
//! folder, one private file per node: what a `static` launcher entry that names only its node
//! (`agents: [{node: gpu-a}]`) connects with.
//!
//! Pairing: the string from `agent init` gives the agent's URL, token and CA. The coordinator
//! makes a key of its own, has the agent sign it (`Pairing.Enroll`, under the token, over TLS
//! verified against that CA), then makes a first `Info` call with the full identity before it
//! stores anything.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use multitenant::auth::BearerToken;
use multitenant::pairing::PairingCode;
use multitenant::proto::v1::pairing_client::PairingClient;
use multitenant::proto::v1::{EnrollRequest, InfoRequest, InfoResponse};
use multitenant::tls::AGENT_SERVER_NAME;
use rcgen::{CertificateParams, DnType, KeyPair};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::agent_client::with_sources;
use crate::launch::AgentEndpoint;

/// Overrides the folder of paired agents (tests, or several identities on one machine).
pub const CONFIG_DIR_ENV: &str = "MULTITENANT_CONFIG_DIR";

/// Longest node name (it is a file name).
const MAX_NODE_NAME: usize = 64;

/// One paired agent, as stored.
#[derive(Serialize, Deserialize)]
pub struct PairedAgent {
    /// The node name it was paired as.
    pub node: String,
    /// `https://host:port`.
    pub url: String,
    /// Its token.
    token: String,
    /// Its CA (PEM).
    ca_pem: String,
    /// This coordinator's client certificate, signed by that CA (PEM).
    client_cert_pem: String,
    /// Its key (PEM).
    client_key_pem: String,
    /// The node's host name, as the agent reported it.
    pub hostname: String,
    /// When it was paired (UTC, RFC 3339).
    pub paired_at: String,
}

/// `$MULTITENANT_CONFIG_DIR`, else `$XDG_CONFIG_HOME/multitenant`, else
/// `~/.config/multitenant`; the paired agents are in its `agents/`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither HOME nor XDG_CONFIG_HOME is set: set MULTITENANT_CONFIG_DIR to the folder of paired agents")?;
    Ok(base.join("multitenant"))
}

fn agents_dir() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("agents"))
}

fn record_path(node: &str) -> anyhow::Result<PathBuf> {
    let valid = !node.is_empty()
        && node.len() <= MAX_NODE_NAME
        && node != "."
        && node != ".."
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        bail!("node name {node:?}: use 1–{MAX_NODE_NAME} letters, digits, '-', '_' or '.'");
    }
    Ok(agents_dir()?.join(format!("{node}.json")))
}

impl PairedAgent {
    /// How to reach it: its URL, token, and mutual TLS with its CA.
    pub fn endpoint(&self) -> anyhow::Result<AgentEndpoint> {
        let token = BearerToken::new(&self.token)
            .with_context(|| format!("the stored token of node {}", self.node))?;
        Ok(AgentEndpoint {
            url: self.url.clone(),
            token,
            tls: Some(client_tls(&self.ca_pem).identity(Identity::from_pem(
                &self.client_cert_pem,
                &self.client_key_pem,
            ))),
        })
    }
}

/// TLS that trusts only `ca_pem` and checks the agents' fixed name.
fn client_tls(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(AGENT_SERVER_NAME)
}

/// The agent paired as `node`.
pub fn load(node: &str) -> anyhow::Result<PairedAgent> {
    let path = record_path(node)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "node {node:?} is not paired ({} does not exist): run `agent init` on the node, then `coordinator pair <pairing string> --node {node}` here",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
}

/// Every paired agent, by node name.
pub fn list() -> anyhow::Result<Vec<PairedAgent>> {
    let dir = agents_dir()?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut nodes: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_owned)
        })
        .collect();
    nodes.sort();
    nodes.iter().map(|n| load(n)).collect()
}

/// `coordinator pair`: enrols with the agent of `code`, checks it answers with the new
/// identity, and stores it as `node` (refusing a node already paired unless `replace`).
pub async fn pair(code: &str, node: &str, replace: bool) -> anyhow::Result<PairedAgent> {
    let code: PairingCode = code.parse()?;
    let path = record_path(node)?;
    if !replace {
        if let Ok(existing) = load(node) {
            bail!(
                "node {node:?} is already paired with the agent at {} (host {}, paired {}); pass --replace to pair it with this one instead",
                existing.url, existing.hostname, existing.paired_at
            );
        }
    }
    let key = KeyPair::generate().context("making the coordinator's key")?;
    let label = format!(
        "{}@{}",
        std::env::var("USER").unwrap_or_else(|_| "user".into()),
        hostname()
    );
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("multitenant coordinator {label}"),
    );
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .context("making the certificate request")?;
    let ca_pem = code.ca_pem();
    let channel = Endpoint::from_shared(code.url.clone())
        .with_context(|| format!("{:?} is not a valid agent address", code.url))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        .tls_config(client_tls(&ca_pem))
        .context("TLS settings")?
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the agent at {} over TLS with the pairing string's CA: {} (is `agent serve --state-dir` running there, reachable, and is this its current pairing string?)",
                code.url,
                with_sources(&e)
            )
        })?;
    let token = code.token.clone();
    let mut pairing = PairingClient::with_interceptor(channel, move |req| token.attach(req));
    let enrolled = pairing
        .enroll(EnrollRequest {
            csr_pem,
            label: label.clone(),
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "the agent at {} refused the pairing: {}{}",
                code.url,
                s.message(),
                if s.code() == tonic::Code::Unauthenticated {
                    " (the token is not this agent's: was it rotated with `agent init --rotate`? print the current string with `agent pairing`)"
                } else {
                    ""
                }
            )
        })?
        .into_inner();
    let agent = PairedAgent {
        node: node.to_owned(),
        url: code.url.clone(),
        token: code.token.expose().to_owned(),
        ca_pem,
        client_cert_pem: enrolled.client_cert_pem,
        client_key_pem: key.serialize_pem(),
        hostname: enrolled.hostname,
        paired_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    // The first call with the identity it will use from now on.
    info(&agent)
        .await
        .context("the agent enrolled this coordinator but refused its first call")?;
    store(&path, &agent)?;
    Ok(agent)
}

/// The agent's `Info`, through the stored identity.
pub async fn info(agent: &PairedAgent) -> anyhow::Result<InfoResponse> {
    let endpoint = agent.endpoint()?;
    let mut client =
        crate::agent_client::connect(&endpoint.url, endpoint.token, endpoint.tls).await?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.info(InfoRequest {}))
        .await
        .with_context(|| format!("the agent at {} did not answer within 10 s", agent.url))?
        .map_err(|s| anyhow::anyhow!("the agent at {} refused: {}", agent.url, s.message()))?;
    Ok(response.into_inner())
}

fn store(path: &Path, agent: &PairedAgent) -> anyhow::Result<()> {
    let dir = path.parent().context("the agents folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    let text = serde_json::to_string_pretty(agent)?;
    // Written whole beside the record, then renamed over it: never half a record.
    let partial = path.with_extension("json.partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "coordinator".into())
}

/// `coordinator agents`: one line per paired agent, saying whether it answers.
pub async fn print_agents() -> anyhow::Result<()> {
    let agents = list()?;
    if agents.is_empty() {
        println!(
            "no paired agents in {} (`coordinator pair <pairing string> --node <name>` adds one)",
            agents_dir()?.display()
        );
        return Ok(());
    }
    for agent in &agents {
        let state = match info(agent).await {
            Ok(info) => {
                let gpus = match info.gpus.as_slice() {
                    [] => format!("no GPU ({})", info.gpu_unavailable_reason),
                    [first, ..] => format!("{} × {}", info.gpus.len(), first.name),
                };
                format!(
                    "answers: agent {} on {}, {gpus}, MPS {}",
                    info.agent_version, info.hostname, info.mps
                )
            }
            Err(e) => format!("does not answer: {e:#}"),
        };
        println!("{}  {}  {state}", agent.node, agent.url);
    }
    Ok(())
}
