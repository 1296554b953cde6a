//! The local launcher: one `agent serve` per node on this machine's loopback, each with a
//! fresh token, its data in `.agent/<node>/` of the experiment folder; stopped at teardown.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use multitenant::auth::{BearerToken, TOKEN_ENV};
use multitenant::layout::ExperimentDir;
use rand::RngCore;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{AgentEndpoint, Launched, Launcher, Teardown};
use crate::console::say;
use crate::run::ExperimentRun;

/// How long a spawned agent may take to say where it listens.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped agent may take to finish its records before it is killed.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// An agent process this coordinator started.
pub struct LocalAgent {
    child: Child,
    /// The write end of the agent's standard input: the agent lives while it is open, so it
    /// dies with this process however this process ends (`--exit-with-stdin`).
    _lifeline: Option<tokio::process::ChildStdin>,
    /// Where it listens.
    pub endpoint: AgentEndpoint,
}

/// Finds the `agent` binary: `MULTITENANT_AGENT_BIN`, else beside this executable (or one folder
/// up, for test binaries under `target/*/deps`).
pub fn find_agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("MULTITENANT_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the coordinator executable")?;
    let dir = exe
        .parent()
        .context("the coordinator executable has no folder")?;
    for candidate in [dir.join("agent"), dir.join("../agent")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no agent binary beside {}: build it with `cargo build --release -p agent` or set MULTITENANT_AGENT_BIN", exe.display())
}

impl LocalAgent {
    /// Spawns `agent serve` on a free loopback port, with its data in `data_dir` and its log
    /// in `log_path`. The agent gets its own process group, so a Ctrl-C at the terminal reaches
    /// the coordinator only, which then stops the agent in order.
    pub async fn spawn(agent_bin: &Path, data_dir: &Path, log_path: &Path) -> anyhow::Result<Self> {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = BearerToken::from_random_bytes(secret);
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new(agent_bin)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--exit-with-stdin")
            .env(TOKEN_ENV, token.expose())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", agent_bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("agent stdout was not captured")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(AGENT_START_TIMEOUT, lines.next_line()).await;
        let addr = match first {
            Ok(Ok(Some(line))) => match line.strip_prefix("listening on ") {
                Some(addr) => addr.trim().to_owned(),
                None => bail!(
                    "the agent printed {line:?} instead of its address; see {}",
                    log_path.display()
                ),
            },
            Ok(_) => bail!(
                "the agent exited before listening; see {}",
                log_path.display()
            ),
            Err(_) => bail!(
                "the agent did not listen within {AGENT_START_TIMEOUT:?}; see {}",
                log_path.display()
            ),
        };
        let lifeline = child.stdin.take();
        Ok(Self {
            child,
            _lifeline: lifeline,
            endpoint: AgentEndpoint {
                url: format!("http://{addr}"),
                token,
                tls: None,
            },
        })
    }

    /// Stops the agent: SIGTERM, a deadline for it to close its records, then SIGKILL.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let pid =
                nix::unistd::Pid::from_raw(i32::try_from(pid).context("agent pid out of range")?);
            // The child is ours and still unreaped, so the pid cannot name another process.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(AGENT_STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for the agent")?;
                if !status.success() {
                    bail!("the agent exited with {status}");
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await.context("killing the agent")?;
                bail!("the agent did not stop within {AGENT_STOP_TIMEOUT:?} and was killed")
            }
        }
    }
}

/// Spawns one agent per node at launch and stops them all at teardown.
#[derive(Default)]
pub struct LocalLauncher {
    agents: Vec<(String, LocalAgent)>,
}

impl Launcher for LocalLauncher {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn launch(
        &mut self,
        run: &ExperimentRun<'_>,
        _cancel: &CancellationToken,
    ) -> anyhow::Result<Launched> {
        let agent_bin = find_agent_binary()?;
        let dir = ExperimentDir::new(run.dir);
        let mut nodes = Vec::new();
        for node in &run.experiment.nodes {
            let data_dir = dir.local_agent_data(&node.name);
            let spawned = async {
                std::fs::create_dir_all(&data_dir)
                    .with_context(|| format!("creating {}", data_dir.display()))?;
                LocalAgent::spawn(&agent_bin, &data_dir, &dir.local_agent_log(&node.name)).await
            };
            nodes.push(match spawned.await {
                Ok(agent) => {
                    let endpoint = agent.endpoint.clone();
                    self.agents.push((node.name.clone(), agent));
                    Ok(endpoint)
                }
                Err(e) => Err(format!("{e:#}")),
            });
        }
        Ok(Launched {
            nodes,
            config: run.config.to_owned(),
        })
    }

    async fn tear_down(&mut self) -> Teardown {
        for (node, agent) in self.agents.drain(..) {
            if let Err(e) = agent.stop().await {
                say!("node {node}: {e:#}");
            }
        }
        Teardown::default()
    }
}
