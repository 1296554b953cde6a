//! How the agent gets onto a SkyPilot node (`launcher.skypilot.agent_install`), whatever the
//! coordinator's machine runs:
//!
//! - `source` (the default): the agent's source, embedded in this coordinator when it was
//!   built (see `coordinator/build.rs`), goes to the node as a file mount, and the task's
//!   `setup` builds it there with the locked dependencies;
//! - `binary`: this machine's agent binary, refused unless this machine's platform is the
//!   node's;
//! - `url`: the node downloads a prebuilt binary, checked against its SHA-256 when given.
//!
//! Every way ends in `~/.multitenant/agents/<key>/agent` on the node, kept there, so that a
//! relaunch on the cluster skips the build or the download; `install-agent.sh` does that part.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use multitenant::config::{AgentInstall, Platform};
use sha2::{Digest, Sha256};

/// The agent's source as a deterministic `.tar.gz`, packed when this coordinator was built.
const SOURCE_ARCHIVE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/agent-source.tar.gz"));
/// SHA-256 of the embedded source archive, lowercase hex.
pub const SOURCE_SHA256: &str = env!("MULTITENANT_AGENT_SOURCE_SHA256");
/// The workspace's `rust-version`: the oldest toolchain the node may build with.
const RUST_VERSION: &str = env!("CARGO_PKG_RUST_VERSION");
/// The shell of the task's `setup` that installs the agent.
const INSTALL_SCRIPT: &str = include_str!("install-agent.sh");
/// Where uploads go on a node, relative to the home folder.
const REMOTE_UPLOADS: &str = ".multitenant/upload";

/// What a task needs to install the agent: file mounts and the `setup` shell.
#[derive(Debug, Clone)]
pub struct AgentUpload {
    /// `(path on the node, relative to home; file on this machine)`.
    pub mounts: Vec<(String, PathBuf)>,
    /// Shell for the task's `setup`; leaves `~/.multitenant/bin/agent` ready to run.
    pub setup: String,
    /// What the launch progress says the node's setup is doing, e.g. "building the agent".
    pub describe: &'static str,
}

/// Refuses `agent_install: binary` unless this machine's platform (`local`) is the nodes'.
pub fn check_binary_platform(local: &Platform, node: &Platform) -> anyhow::Result<()> {
    if local == node {
        return Ok(());
    }
    let why = if local.os == "macos" {
        format!("this machine runs macOS ({local}) and the nodes run {node}: a macOS binary cannot run on a Linux node")
    } else {
        format!(
            "this machine is {local} and the nodes are {node} (launcher.skypilot.node_platform)"
        )
    };
    bail!("launcher.skypilot.agent_install: binary copies this machine's agent binary to every node, but {why}. Use agent_install: source (the default: each node builds the agent from the source this coordinator carries) or agent_install: url with a binary built for {node}")
}

/// Prepares `install` for the task files in `task_dir`: writes the source archive there for
/// `source`, checks the platform and finds the binary for `binary`.
pub fn prepare(
    install: &AgentInstall,
    local: &Platform,
    node: &Platform,
    task_dir: &Path,
    agent_binary: impl FnOnce() -> anyhow::Result<PathBuf>,
) -> anyhow::Result<AgentUpload> {
    let mut vars: Vec<(&str, String)> = Vec::new();
    let mut mounts = Vec::new();
    let describe = match install {
        AgentInstall::Source => {
            let name = format!("agent-source-{}.tar.gz", &SOURCE_SHA256[..16]);
            let local_archive = task_dir.join(&name);
            // Written whole, then renamed: an interrupted write never leaves a half archive
            // under the name of a whole one.
            let partial = task_dir.join(format!("{name}.partial"));
            std::fs::write(&partial, SOURCE_ARCHIVE)
                .and_then(|()| std::fs::rename(&partial, &local_archive))
                .with_context(|| format!("writing {}", local_archive.display()))?;
            let remote = format!("{REMOTE_UPLOADS}/{name}");
            vars.push(("MT_AGENT_INSTALL", "source".into()));
            vars.push(("MT_AGENT_KEY", format!("source-{}", &SOURCE_SHA256[..16])));
            vars.push(("MT_SOURCE_ARCHIVE", format!("$HOME/{remote}")));
            vars.push(("MT_RUST_VERSION", RUST_VERSION.into()));
            mounts.push((remote, local_archive));
            "building the agent"
        }
        AgentInstall::Binary => {
            check_binary_platform(local, node)?;
            let binary = agent_binary()?;
            let bytes = std::fs::read(&binary)
                .with_context(|| format!("reading the agent binary {}", binary.display()))?;
            let sha = hex::encode(Sha256::digest(&bytes));
            let remote = format!("{REMOTE_UPLOADS}/agent");
            vars.push(("MT_AGENT_INSTALL", "binary".into()));
            vars.push(("MT_AGENT_KEY", format!("binary-{}", &sha[..16])));
            vars.push(("MT_UPLOADED_AGENT", format!("$HOME/{remote}")));
            mounts.push((remote, binary));
            "installing the agent binary"
        }
        AgentInstall::Url { url, sha256 } => {
            let key = Sha256::digest(format!("{url}\n{}", sha256.as_deref().unwrap_or("")));
            vars.push(("MT_AGENT_INSTALL", "url".into()));
            vars.push(("MT_AGENT_KEY", format!("url-{}", &hex::encode(key)[..16])));
            vars.push(("MT_AGENT_URL", shell_quote(url)));
            vars.push(("MT_AGENT_SHA256", sha256.clone().unwrap_or_default()));
            "downloading the agent"
        }
    };
    let mut setup = String::new();
    for (name, value) in vars {
        // Values are hex digits, versions, `$HOME/<fixed path>` (expanded here on purpose)
        // or an already quoted url.
        setup.push_str(&format!("{name}=\"{value}\"\n"));
    }
    setup.push_str(INSTALL_SCRIPT);
    Ok(AgentUpload {
        mounts,
        setup,
        describe,
    })
}

/// `text` as one shell word inside double quotes: `"`, `\`, `$` and `` ` `` escaped.
fn shell_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(text: &str) -> Platform {
        Platform::parse(text).expect("platform")
    }

    #[test]
    fn a_binary_from_a_mac_is_refused_for_a_linux_node() {
        let err = check_binary_platform(&platform("macos-aarch64"), &platform("linux-x86_64"))
            .expect_err("a macOS binary on Linux")
            .to_string();
        assert!(err.contains("runs macOS (macos-aarch64)"), "{err}");
        assert!(err.contains("cannot run on a Linux node"), "{err}");
        assert!(err.contains("agent_install: source"), "{err}");
        let err = check_binary_platform(&platform("linux-x86_64"), &platform("linux-aarch64"))
            .expect_err("another architecture")
            .to_string();
        assert!(
            err.contains("this machine is linux-x86_64 and the nodes are linux-aarch64"),
            "{err}"
        );
        check_binary_platform(&platform("linux-x86_64"), &platform("linux-x86_64"))
            .expect("same platform");
    }

    #[test]
    fn the_refusal_comes_before_any_binary_is_looked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = prepare(
            &AgentInstall::Binary,
            &platform("macos-aarch64"),
            &platform("linux-x86_64"),
            dir.path(),
            || panic!("no binary is needed to refuse"),
        )
        .expect_err("refused");
        assert!(err.to_string().contains("macOS"), "{err}");
    }

    #[test]
    fn the_source_way_ships_the_embedded_archive_under_its_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let here = Platform::this_machine();
        let upload = prepare(&AgentInstall::Source, &here, &here, dir.path(), || {
            panic!("the source way needs no local binary")
        })
        .expect("source");
        let (remote, local) = &upload.mounts[0];
        assert!(remote.ends_with(&format!("agent-source-{}.tar.gz", &SOURCE_SHA256[..16])));
        let written = std::fs::read(local).expect("archive written");
        assert_eq!(hex::encode(Sha256::digest(&written)), SOURCE_SHA256);
        assert!(upload.setup.starts_with("MT_AGENT_INSTALL=\"source\"\n"));
        assert!(upload
            .setup
            .contains(&format!("MT_RUST_VERSION=\"{RUST_VERSION}\"")));
    }

    #[test]
    fn urls_are_quoted_for_the_shell() {
        assert_eq!(
            shell_quote("https://x/a$b\"c`d"),
            "https://x/a\\$b\\\"c\\`d"
        );
    }
}
