//! The MPS daemon of one `mps` trial: started privately, verified, stopped.
//!
//! Each trial gets its own pipe directory (short, under the system temp folder, because the
//! daemon's UNIX sockets live there and socket paths are limited to about 100 bytes) and its
//! own log directory (in the trial's folder, kept as a record). A daemon left behind in that
//! pipe directory is told to quit first. The daemon runs in the foreground (`-f`) as a
//! supervised process group, so it dies with the agent like an engine does. Defaults such as
//! `set_default_active_thread_percentage` are issued before any client starts, because MPS
//! applies them only to servers spawned afterwards. Before the measure phase, every vLLM
//! engine must be among the MPS server's clients: a client that missed the daemon would run
//! time-sliced, silently, and the numbers would be wrong.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use multitenant::config::MpsSettings;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::engine::process::{EngineProcess, ExitReport};

/// How long one control command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to quit when told to.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to answer its first command.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why MPS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    /// There is no control binary.
    #[error("MPS is not available on this node: {0} not found")]
    NotInstalled(String),
    /// The daemon did not come up.
    #[error("the MPS control daemon did not answer within {READY_TIMEOUT:?}: {0}")]
    NotReady(String),
    /// A control command failed.
    #[error("MPS control command `{command}` failed: {message}")]
    Command {
        /// The command.
        command: String,
        /// What happened.
        message: String,
    },
    /// Setting up its folders failed.
    #[error("MPS folders: {0}")]
    Io(#[from] std::io::Error),
}

/// A running MPS control daemon.
pub struct MpsDaemon {
    control: PathBuf,
    pipe_dir: PathBuf,
    log_dir: PathBuf,
    process: EngineProcess,
}

impl MpsDaemon {
    /// Starts a daemon for one trial. `key` names the trial uniquely on this machine (its pipe
    /// folder is derived from it); logs go to `log_dir`.
    pub async fn start(
        control: &Path,
        key: &str,
        log_dir: &Path,
        settings: &MpsSettings,
    ) -> Result<Self, MpsError> {
        let control = crate::engine::find_executable(&control.to_string_lossy())
            .ok_or_else(|| MpsError::NotInstalled(control.display().to_string()))?;
        let pipe_dir = std::env::temp_dir().join(format!(
            "multitenant-mps-{:016x}",
            crate::engine::name_hash(key)
        ));
        std::fs::create_dir_all(log_dir)?;
        if pipe_dir.exists() {
            // A daemon of an earlier, killed agent may still own this folder.
            let _ = run_command(&control, &pipe_dir, log_dir, "quit").await;
            std::fs::remove_dir_all(&pipe_dir)?;
        }
        std::fs::create_dir_all(&pipe_dir)?;
        let env = dir_env(&pipe_dir, log_dir);
        let process = EngineProcess::spawn(
            &control.to_string_lossy(),
            &["-f".into()],
            &env,
            &log_dir.join("daemon.log"),
        )?;
        let daemon = Self {
            control,
            pipe_dir,
            log_dir: log_dir.to_owned(),
            process,
        };
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            match daemon.command("get_default_active_thread_percentage").await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    let report = daemon.stop_process().await;
                    return Err(MpsError::NotReady(format!(
                        "{e}; daemon: {}",
                        report.describe()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if let Some(pct) = settings.default_active_thread_percentage {
            if let Err(e) = daemon
                .command(&format!("set_default_active_thread_percentage {pct}"))
                .await
            {
                daemon.stop_process().await;
                return Err(e);
            }
        }
        Ok(daemon)
    }

    /// The environment every client needs to reach this daemon.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![(
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            self.pipe_dir.display().to_string(),
        )]
    }

    /// Sends one command and returns what the daemon answered.
    pub async fn command(&self, command: &str) -> Result<String, MpsError> {
        run_command(&self.control, &self.pipe_dir, &self.log_dir, command).await
    }

    /// PIDs of every client of every MPS server of this daemon.
    pub async fn client_pids(&self) -> Result<BTreeSet<i32>, MpsError> {
        let mut clients = BTreeSet::new();
        for server in pids(&self.command("get_server_list").await?) {
            clients.extend(pids(
                &self.command(&format!("get_client_list {server}")).await?,
            ));
        }
        Ok(clients)
    }

    /// Tells the daemon to quit, waits for it, and removes the pipe folder. Returns how the
    /// daemon process ended.
    pub async fn quit(self) -> ExitReport {
        if let Err(e) = self.command("quit").await {
            tracing::warn!("{e}; stopping the MPS daemon by signal");
        }
        let pipe_dir = self.pipe_dir.clone();
        let mut process = self.process;
        // Give the daemon the chance to quit by itself; the stop below only cleans up.
        let _ = tokio::time::timeout(QUIT_TIMEOUT, process.wait()).await;
        let report = process.stop().await;
        if let Err(e) = std::fs::remove_dir_all(&pipe_dir) {
            tracing::warn!("removing {}: {e}", pipe_dir.display());
        }
        report
    }

    async fn stop_process(self) -> ExitReport {
        self.process.stop().await
    }
}

fn dir_env(pipe_dir: &Path, log_dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            pipe_dir.display().to_string(),
        ),
        (
            "CUDA_MPS_LOG_DIRECTORY".into(),
            log_dir.display().to_string(),
        ),
    ]
}

/// Runs `control` with `command` on its standard input, as `echo command | control` does.
async fn run_command(
    control: &Path,
    pipe_dir: &Path,
    log_dir: &Path,
    command: &str,
) -> Result<String, MpsError> {
    let failed = |message: String| MpsError::Command {
        command: command.to_owned(),
        message,
    };
    let mut child = Command::new(control)
        .envs(dir_env(pipe_dir, log_dir))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(format!("no answer within {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(format!("{}: {}", output.status, stderr.trim())));
    }
    Ok(stdout)
}

fn pids(text: &str) -> impl Iterator<Item = i32> + '_ {
    text.split_whitespace().filter_map(|w| w.parse().ok())
}
