//! The compute mode of the GPU a trial's real engines share, set for the trial and put back
//! after it.
//!
//! An mps trial wants EXCLUSIVE_PROCESS: one CUDA context per GPU, the MPS server's, so an
//! engine that misses the daemon fails loudly instead of running time-sliced. Every other trial
//! wants DEFAULT: under EXCLUSIVE_PROCESS the second plain CUDA process fails with "CUDA-capable
//! device(s) is/are busy or unavailable" (`cudaErrorDevicesUnavailable`). NVIDIA's own MPS
//! daemon does the same: `nvidia-smi -i <uuid> -c EXCLUSIVE_PROCESS` when it starts and
//! `-c DEFAULT` when it stops (k8s-device-plugin, `cmd/mps-control-daemon/mps/daemon.go`).
//!
//! The mode to restore is held by a keeper: a process behind the same guard as an engine
//! ([`EngineProcess`]), which runs `nvidia-smi -c <the earlier mode>` when it is told to stop,
//! and also when the agent dies, since the guard stops it then.

use std::path::{Path, PathBuf};
use std::time::Duration;

use multitenant::events::GpuComputeMode;
use tokio::process::Command;

use crate::engine::process::EngineProcess;

/// How long one `nvidia-smi` call may take.
const SMI_TIMEOUT: Duration = Duration::from_secs(30);

/// The keeper: sleeps until told to stop (SIGTERM from its guard), then restores the mode.
/// `$0` is nvidia-smi, `$1` the GPU, `$2` the mode to restore. It says [`KEEPER_READY`] once
/// its trap is set: a SIGTERM before that would end it without restoring anything.
const KEEPER: &str = r#"trap 'exec "$0" -i "$1" -c "$2"' TERM
echo "compute-mode keeper ready"
while :; do sleep 1; done"#;

/// What the keeper prints to its log once it can restore the mode.
const KEEPER_READY: &str = "compute-mode keeper ready";

/// How long the keeper may take to set its trap.
const KEEPER_START: Duration = Duration::from_secs(10);

/// Why the compute mode could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum ComputeModeError {
    /// nvidia-smi could not be run or did not answer.
    #[error("{tool} -i {gpu} {args}: {message}")]
    Tool {
        /// The nvidia-smi used.
        tool: String,
        /// The GPU.
        gpu: u32,
        /// Its arguments after `-i N`.
        args: String,
        /// What it said, or why it could not run.
        message: String,
    },
    /// The keeper could not be started.
    #[error("the compute-mode keeper could not start: {0}")]
    Keeper(std::io::Error),
}

/// `nvidia-smi`, as a name on PATH or a path.
#[derive(Debug, Clone)]
pub struct NvidiaSmi {
    path: PathBuf,
}

impl NvidiaSmi {
    /// The tool at `path`, when it is there.
    pub fn find(path: &Path) -> Option<Self> {
        crate::engine::find_executable(&path.display().to_string()).map(|path| Self { path })
    }

    /// GPU `gpu`'s compute mode now.
    pub async fn mode(&self, gpu: u32) -> Result<GpuComputeMode, ComputeModeError> {
        let args = ["--query-gpu=compute_mode", "--format=csv,noheader"];
        let answer = self.run(gpu, &args).await?;
        parse_mode(answer.trim())
            .ok_or_else(|| self.failed(gpu, &args, format!("unknown compute mode {answer:?}")))
    }

    /// Sets GPU `gpu`'s compute mode; returns what nvidia-smi said.
    pub async fn set(&self, gpu: u32, mode: GpuComputeMode) -> Result<String, ComputeModeError> {
        self.run(gpu, &["-c", smi_name(mode)]).await
    }

    /// Starts a keeper that restores `mode` on GPU `gpu` when it is stopped or the agent dies;
    /// returns once it is ready to.
    pub async fn keeper(
        &self,
        gpu: u32,
        mode: GpuComputeMode,
        log: &Path,
    ) -> Result<EngineProcess, ComputeModeError> {
        let args = [
            "-c".to_owned(),
            KEEPER.to_owned(),
            self.path.display().to_string(),
            gpu.to_string(),
            smi_name(mode).to_owned(),
        ];
        let keeper =
            EngineProcess::spawn("sh", &args, &[], log).map_err(ComputeModeError::Keeper)?;
        let deadline = tokio::time::Instant::now() + KEEPER_START;
        loop {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            if said.contains(KEEPER_READY) {
                return Ok(keeper);
            }
            if tokio::time::Instant::now() >= deadline {
                keeper.stop().await;
                return Err(ComputeModeError::Keeper(std::io::Error::other(format!(
                    "it did not start within {KEEPER_START:?}"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn run(&self, gpu: u32, args: &[&str]) -> Result<String, ComputeModeError> {
        let output = tokio::time::timeout(
            SMI_TIMEOUT,
            Command::new(&self.path)
                .arg("-i")
                .arg(gpu.to_string())
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| self.failed(gpu, args, format!("no answer within {SMI_TIMEOUT:?}")))?
        .map_err(|e| self.failed(gpu, args, e.to_string()))?;
        let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
        if !output.status.success() {
            let mut message = said(&output.stdout);
            let stderr = said(&output.stderr);
            if !stderr.is_empty() {
                message = format!("{message} {stderr}").trim().to_owned();
            }
            return Err(self.failed(gpu, args, format!("{} ({message})", output.status)));
        }
        Ok(said(&output.stdout))
    }

    fn failed(&self, gpu: u32, args: &[&str], message: String) -> ComputeModeError {
        ComputeModeError::Tool {
            tool: self.path.display().to_string(),
            gpu,
            args: args.join(" "),
            message,
        }
    }
}

/// The mode as `nvidia-smi -c` takes it.
pub fn smi_name(mode: GpuComputeMode) -> &'static str {
    match mode {
        GpuComputeMode::Default => "DEFAULT",
        GpuComputeMode::ExclusiveProcess => "EXCLUSIVE_PROCESS",
        GpuComputeMode::Prohibited => "PROHIBITED",
    }
}

/// The mode as `nvidia-smi --query-gpu=compute_mode` prints it (`Default`,
/// `Exclusive_Process`, `Prohibited`).
fn parse_mode(text: &str) -> Option<GpuComputeMode> {
    match text.to_ascii_lowercase().as_str() {
        "default" => Some(GpuComputeMode::Default),
        "exclusive_process" => Some(GpuComputeMode::ExclusiveProcess),
        "prohibited" => Some(GpuComputeMode::Prohibited),
        _ => None,
    }
}

/// Whether a trial can run in `mode` when the agent could not change it: `engines` plain CUDA
/// processes at once (MPS clients share one context, the server's), or why not.
pub fn blocks(mode: GpuComputeMode, plain_engines: usize) -> Option<&'static str> {
    match mode {
        GpuComputeMode::Prohibited if plain_engines > 0 => {
            Some("PROHIBITED allows no CUDA context at all")
        }
        GpuComputeMode::ExclusiveProcess if plain_engines > 1 => Some(
            "EXCLUSIVE_PROCESS allows one CUDA context per GPU, so the second engine would fail with \"CUDA-capable device(s) is/are busy or unavailable\"",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_nvidia_smi_prints_them() {
        assert_eq!(
            parse_mode("Exclusive_Process"),
            Some(GpuComputeMode::ExclusiveProcess)
        );
        assert_eq!(parse_mode("Default"), Some(GpuComputeMode::Default));
        assert_eq!(parse_mode("[N/A]"), None);
        assert_eq!(
            smi_name(GpuComputeMode::ExclusiveProcess),
            "EXCLUSIVE_PROCESS"
        );
    }

    #[test]
    fn exclusive_process_blocks_two_plain_engines_not_one() {
        assert!(blocks(GpuComputeMode::ExclusiveProcess, 1).is_none());
        assert!(blocks(GpuComputeMode::ExclusiveProcess, 2).is_some());
        assert!(blocks(GpuComputeMode::Default, 3).is_none());
        assert!(blocks(GpuComputeMode::Prohibited, 1).is_some());
    }
}
