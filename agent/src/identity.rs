//! The identity of a daemon agent, made once by `agent init`: a state folder (0700) that holds
//! its token, a CA of its own, its server certificate, the URL it is reached at, and a record
//! of the coordinators it enrolled. Secrets are files (0600), never arguments or unit lines.
//!
//! Trust: the pairing string carries the token and the CA certificate, so a coordinator that
//! holds it can verify the agent (TLS) and prove itself (token). Enrolment then signs the
//! coordinator's own key with the CA, and every later call needs that client certificate
//! and the token. `--rotate` makes a new token and CA: every earlier pairing stops working.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};
use multitenant::auth::BearerToken;
use multitenant::pairing::{der_of_pem, PairingCode};
use multitenant::tls::agent_server_certificate;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

use crate::clock::unix_now;
use crate::server::ServerTls;

/// File of the token (first line).
pub const TOKEN_FILE: &str = "token";
/// The agent's CA certificate (public: it is in the pairing string).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's key.
pub const CA_KEY_FILE: &str = "ca.key";
/// The server certificate, for [`multitenant::tls::AGENT_SERVER_NAME`].
pub const SERVER_CERT_FILE: &str = "server.pem";
/// Its key.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The `https://host:port` coordinators reach the agent at.
pub const URL_FILE: &str = "url";
/// One JSON line per enrolled coordinator.
pub const CLIENTS_FILE: &str = "clients.jsonl";
/// Subfolder of the runs.
pub const RUNS_DIR: &str = "runs";

/// Port of the default URL.
pub const DEFAULT_PORT: u16 = 7777;

/// The identity read from (or just written to) a state folder.
pub struct NodeIdentity {
    dir: PathBuf,
    token: BearerToken,
    url: String,
    ca_pem: String,
    ca_key_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

/// What `agent init` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new identity in a new folder.
    Created,
    /// The folder already held one; it is kept (its URL updated if another was given).
    Kept,
    /// `--rotate`: a new token and CA replace the old; earlier pairings no longer work.
    Rotated,
}

/// A CA of the user's own that signs the agent's server certificate and its coordinators'
/// client certificates, instead of one the agent makes.
pub struct UserCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl UserCa {
    /// Reads the CA certificate and key at `cert` and `key` and checks that they are a CA and
    /// its key, naming the file that is wrong.
    pub fn read(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let ca = Self {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        ca.check()
            .with_context(|| format!("--ca-cert {} --ca-key {}", cert.display(), key.display()))?;
        Ok(ca)
    }

    /// Checks that the certificate is a CA's and the key is its key; returns the key.
    fn check(&self) -> anyhow::Result<KeyPair> {
        let der = der_of_pem(&self.cert_pem).context("the CA certificate is not PEM")?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| anyhow::anyhow!("the CA certificate cannot be read: {e}"))?;
        if !cert.is_ca() {
            bail!("the certificate is not a CA's (its basicConstraints lack CA:TRUE): it cannot sign the agent's certificates");
        }
        let key =
            KeyPair::from_pem(&self.key_pem).context("the CA key is not a PEM private key")?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
            bail!("the CA key is not the key of the CA certificate: give the pair that belong together");
        }
        Ok(key)
    }
}

/// `agent init`: makes the identity in `dir`, or keeps the one there unless `rotate`.
/// `url` defaults to the stored one, else `https://<host name>:7777`. With `user_ca`, the
/// certificates are that CA's instead of a CA the agent makes.
pub fn init(
    dir: &Path,
    url: Option<&str>,
    rotate: bool,
    user_ca: Option<&UserCa>,
) -> anyhow::Result<(NodeIdentity, InitOutcome)> {
    if let Some(url) = url {
        check_url(url)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (0700)", dir.display()))?;
    let existing = dir.join(TOKEN_FILE).exists();
    if existing && !rotate && user_ca.is_some() {
        bail!(
            "{} already holds an agent identity; pass --rotate to replace its CA with yours (every earlier pairing then stops working)",
            dir.display()
        );
    }
    if existing && !rotate {
        let mut identity = load(dir)?;
        if let Some(url) = url.filter(|u| *u != identity.url) {
            write_file(&dir.join(URL_FILE), url, 0o644)?;
            url.clone_into(&mut identity.url);
        }
        return Ok((identity, InitOutcome::Kept));
    }
    let url = match url {
        Some(url) => url.to_owned(),
        None if existing => load(dir)?.url,
        None => default_url(),
    };
    let identity = generate(dir, url, user_ca)?;
    identity.write()?;
    let outcome = if existing {
        InitOutcome::Rotated
    } else {
        InitOutcome::Created
    };
    Ok((identity, outcome))
}

/// Reads the identity of `dir`, naming the file that is missing or wrong.
pub fn load(dir: &Path) -> anyhow::Result<NodeIdentity> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}: is {} an agent state folder? `agent init --state-dir {}` makes one",
                path.display(),
                dir.display(),
                dir.display()
            )
        })
    };
    let token = read(TOKEN_FILE)?;
    let token = BearerToken::new(token.lines().next().unwrap_or_default())
        .with_context(|| format!("the token in {}", dir.join(TOKEN_FILE).display()))?;
    let url = read(URL_FILE)?.trim().to_owned();
    check_url(&url).with_context(|| format!("the URL in {}", dir.join(URL_FILE).display()))?;
    let identity = NodeIdentity {
        dir: dir.to_owned(),
        token,
        url,
        ca_pem: read(CA_CERT_FILE)?,
        ca_key_pem: read(CA_KEY_FILE)?,
        server_cert_pem: read(SERVER_CERT_FILE)?,
        server_key_pem: read(SERVER_KEY_FILE)?,
    };
    if der_of_pem(&identity.ca_pem).is_none() {
        bail!(
            "{} holds no PEM certificate",
            dir.join(CA_CERT_FILE).display()
        );
    }
    Ok(identity)
}

/// `https://<this host's name>:7777`.
fn default_url() -> String {
    let host = sysinfo::System::host_name().unwrap_or_else(|| "localhost".into());
    format!("https://{host}:{DEFAULT_PORT}")
}

fn check_url(url: &str) -> anyhow::Result<()> {
    let Some(rest) = url.strip_prefix("https://") else {
        bail!("the agent URL {url:?} must start with https:// (a daemon agent always serves TLS)");
    };
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, ""));
    if host.is_empty() || port.parse::<u16>().is_err() || rest.contains('/') {
        bail!("the agent URL {url:?} must be https://HOST:PORT, e.g. https://203.0.113.7:7777");
    }
    Ok(())
}

fn generate(dir: &Path, url: String, user_ca: Option<&UserCa>) -> anyhow::Result<NodeIdentity> {
    let (ca_pem, ca_key_pem, issuer) = match user_ca {
        Some(ca) => {
            let key = ca.check()?;
            let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key)
                .context("the CA certificate cannot sign")?;
            (ca.cert_pem.clone(), ca.key_pem.clone(), issuer)
        }
        None => {
            let ca_key = KeyPair::generate().context("making the agent's CA key")?;
            let mut ca = CertificateParams::new(Vec::<String>::new())?;
            let host = sysinfo::System::host_name().unwrap_or_else(|| "node".into());
            ca.distinguished_name
                .push(DnType::CommonName, format!("multitenant agent {host} CA"));
            ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca_cert = ca.self_signed(&ca_key).context("signing the agent's CA")?;
            let ca_key_pem = ca_key.serialize_pem();
            (ca_cert.pem(), ca_key_pem, Issuer::new(ca, ca_key))
        }
    };
    let (server_cert_pem, server_key_pem) =
        agent_server_certificate(&issuer).context("signing the agent's server certificate")?;
    Ok(NodeIdentity {
        dir: dir.to_owned(),
        token: BearerToken::from_random_bytes(rand::random()),
        url,
        ca_pem,
        ca_key_pem,
        server_cert_pem,
        server_key_pem,
    })
}

impl NodeIdentity {
    fn write(&self) -> anyhow::Result<()> {
        let dir = &self.dir;
        write_file(&dir.join(TOKEN_FILE), self.token.expose(), 0o600)?;
        write_file(&dir.join(CA_KEY_FILE), &self.ca_key_pem, 0o600)?;
        write_file(&dir.join(SERVER_KEY_FILE), &self.server_key_pem, 0o600)?;
        write_file(&dir.join(CA_CERT_FILE), &self.ca_pem, 0o644)?;
        write_file(&dir.join(SERVER_CERT_FILE), &self.server_cert_pem, 0o644)?;
        write_file(&dir.join(URL_FILE), &self.url, 0o644)?;
        // Coordinators enrolled under the old CA are no longer trusted.
        write_file(&dir.join(CLIENTS_FILE), "", 0o600)
    }

    /// The token every call must carry.
    pub fn token(&self) -> &BearerToken {
        &self.token
    }

    /// Where coordinators reach this agent.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The folder of the runs.
    pub fn runs_dir(&self) -> PathBuf {
        self.dir.join(RUNS_DIR)
    }

    /// The string a coordinator pairs with.
    pub fn pairing(&self) -> PairingCode {
        PairingCode {
            url: self.url.clone(),
            token: self.token.clone(),
            ca_der: der_of_pem(&self.ca_pem).unwrap_or_default(),
        }
    }

    /// TLS that accepts client certificates of this agent's CA, and serves enrolment.
    pub fn server_tls(&self) -> anyhow::Result<ServerTls> {
        let key = KeyPair::from_pem(&self.ca_key_pem).with_context(|| {
            format!("{} is not a PEM key", self.dir.join(CA_KEY_FILE).display())
        })?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, key).with_context(|| {
            format!(
                "{} is not a CA certificate",
                self.dir.join(CA_CERT_FILE).display()
            )
        })?;
        Ok(ServerTls {
            cert_pem: self.server_cert_pem.clone(),
            key_pem: self.server_key_pem.clone(),
            client_ca_pem: self.ca_pem.clone(),
            enrolment: Some(std::sync::Arc::new(Enroller {
                issuer,
                clients: Mutex::new(self.dir.join(CLIENTS_FILE)),
            })),
        })
    }
}

/// Signs coordinators' certificate requests with the agent's CA.
pub struct Enroller {
    issuer: Issuer<'static, KeyPair>,
    /// The record of enrolled coordinators; the lock orders its lines.
    clients: Mutex<PathBuf>,
}

/// Why an enrolment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The request is not a valid, self-signed PKCS#10 request.
    #[error("the certificate request is not a valid PEM PKCS#10 request: {0}")]
    BadRequest(String),
    /// Signing or recording failed on the agent's side.
    #[error("the agent could not enrol the coordinator: {0}")]
    Agent(String),
}

/// Most characters of a label kept.
const MAX_LABEL: usize = 64;

impl Enroller {
    /// A client certificate (PEM) for the key of `csr_pem`, named after `label`. The request
    /// only lends its key: names, usages and validity are the agent's.
    pub fn sign(&self, csr_pem: &str, label: &str) -> Result<String, EnrolError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| EnrolError::BadRequest(e.to_string()))?;
        let label: String = label
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(MAX_LABEL)
            .collect();
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| EnrolError::Agent(e.to_string()))?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("multitenant coordinator {label}").trim_end(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let signed = CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| EnrolError::Agent(e.to_string()))?;
        let line = serde_json::json!({
            "label": label,
            "enrolled_at": unix_now(),
            "sha256": hex::encode(Sha256::digest(signed.der())),
        });
        let path = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        append_line(&path, &line.to_string()).map_err(|e| EnrolError::Agent(format!("{e:#}")))?;
        Ok(signed.pem())
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // `mode` applies only to a file made now; an older one is set explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn append_line(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("appending to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn init_makes_a_private_folder_and_keeps_it_unless_rotated() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        let (first, outcome) =
            init(&dir, Some("https://127.0.0.1:7000"), false, None).expect("init");
        assert_eq!(outcome, InitOutcome::Created);
        assert_eq!(mode(&dir), 0o700);
        for secret in [TOKEN_FILE, CA_KEY_FILE, SERVER_KEY_FILE, CLIENTS_FILE] {
            assert_eq!(mode(&dir.join(secret)), 0o600, "{secret}");
        }
        let (again, outcome) = init(&dir, None, false, None).expect("again");
        assert_eq!(outcome, InitOutcome::Kept);
        assert_eq!(again.pairing(), first.pairing());
        let (moved, _) = init(&dir, Some("https://10.0.0.9:7777"), false, None).expect("new url");
        assert_eq!(moved.token(), first.token());
        assert_eq!(load(&dir).expect("load").url(), "https://10.0.0.9:7777");
        let (rotated, outcome) = init(&dir, None, true, None).expect("rotate");
        assert_eq!(outcome, InitOutcome::Rotated);
        assert_ne!(rotated.token(), first.token());
        assert_ne!(rotated.pairing().ca_der, first.pairing().ca_der);
        assert_eq!(rotated.url(), "https://10.0.0.9:7777");
    }

    #[test]
    fn a_users_own_ca_signs_the_server_certificate_and_a_key_of_another_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let make_ca = || {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).expect("self-signed");
            UserCa {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        };
        let (ours, other) = (make_ca(), make_ca());
        let dir = tmp.path().join("state");
        let (identity, _) =
            init(&dir, Some("https://127.0.0.1:7000"), false, Some(&ours)).expect("init");
        assert_eq!(
            identity.pairing().ca_der,
            der_of_pem(&ours.cert_pem).expect("der")
        );
        // The server certificate is issued by it and serves TLS.
        identity.server_tls().expect("tls");
        // Kept unless rotated; a CA given beside an identity already there is refused.
        let e = init(&dir, None, false, Some(&other))
            .err()
            .expect("refused");
        assert!(e.to_string().contains("pass --rotate"), "{e}");
        let mismatched = UserCa {
            cert_pem: ours.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        let e = init(&dir, None, true, Some(&mismatched))
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("not the key of the CA certificate"),
            "{e}"
        );
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["leaf.example".to_owned()])
            .expect("params")
            .self_signed(&leaf_key)
            .expect("leaf");
        let not_a_ca = UserCa {
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        };
        let e = init(&dir, None, true, Some(&not_a_ca))
            .err()
            .expect("refused");
        assert!(e.to_string().contains("lack CA:TRUE"), "{e}");
    }

    #[test]
    fn bad_urls_and_missing_folders_are_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for url in ["http://x:1", "https://x", "https://:7", "https://x:7/path"] {
            let e = init(tmp.path(), Some(url), false, None).err().expect(url);
            assert!(e.to_string().contains(url), "{e}");
        }
        let e = load(&tmp.path().join("none")).err().expect("refused");
        assert!(format!("{e:#}").contains("agent init --state-dir"), "{e:#}");
    }

    #[test]
    fn enrolment_signs_a_client_certificate_for_the_requests_key_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (identity, _) =
            init(tmp.path(), Some("https://127.0.0.1:7000"), false, None).expect("init");
        let tls = identity.server_tls().expect("tls");
        let enroller = tls.enrolment.expect("enrolment");
        let key = KeyPair::generate().expect("key");
        let mut asked = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let pem = enroller.sign(&csr, "laptop\nx").expect("signed");
        let der = der_of_pem(&pem).expect("der");
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("multitenant coordinator laptopx"), "{text}");
        assert!(
            !text.contains("evil.example"),
            "names come from the agent, not the request"
        );
        let clients = std::fs::read_to_string(tmp.path().join(CLIENTS_FILE)).expect("log");
        assert_eq!(clients.lines().count(), 1);
        assert!(clients.contains("\"label\":\"laptopx\""), "{clients}");
        assert!(matches!(
            enroller.sign("not a request", "x"),
            Err(EnrolError::BadRequest(_))
        ));
    }
}
