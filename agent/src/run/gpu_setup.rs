//! The GPU around a trial's real engines: its compute mode set for the trial and put back after
//! (see [`crate::compute_mode`]), and the engines of a trial without MPS kept away from any MPS
//! daemon on the node.
//!
//! A CUDA process joins whichever MPS daemon answers at `CUDA_MPS_PIPE_DIRECTORY`, and
//! `/tmp/nvidia-mps` when the variable is unset (NVIDIA's MPS guide, "CUDA_MPS_PIPE_DIRECTORY");
//! where no daemon answers, it runs without MPS (`nvidia-cuda-mps-control(1)`). A leftover or
//! system daemon would silently turn a timeslice baseline into MPS, so every engine of a trial
//! without MPS is given an empty pipe folder of its own.

use std::path::PathBuf;

use multitenant::config::{Engine, SharingMode};
use multitenant::events::{ComputeModeState, GpuComputeMode};

use super::outcome::TrialFailure;
use super::trial::{Halt, TrialRunner};
use crate::compute_mode::{self, smi_name, NvidiaSmi};
use crate::engine::process::EngineProcess;

/// The GPU every engine of a trial uses (the preflight judges the same one).
const TRIAL_GPU: u32 = 0;

/// A compute mode the trial set, and the keeper that puts the earlier one back.
pub(in crate::run) struct ModeHold {
    smi: NvidiaSmi,
    before: GpuComputeMode,
    keeper: EngineProcess,
}

impl TrialRunner<'_> {
    /// The tenants whose engines are CUDA processes (vLLM); simulated engines use no GPU.
    pub(super) fn cuda_tenants(&self) -> Vec<&str> {
        self.engines
            .iter()
            .filter(|e| matches!(e.owner.engine, Engine::Vllm(_)))
            .map(|e| e.owner.name.as_str())
            .collect()
    }

    /// Puts the GPU in the compute mode the trial needs: EXCLUSIVE_PROCESS for mps, DEFAULT
    /// otherwise. When the agent may not change it, a trial the current mode breaks is refused
    /// with the GPU, the tenants and the fix; one it does not break runs, with a note.
    pub(super) async fn hold_compute_mode(&mut self) -> Result<(), Halt> {
        let tenants = self.cuda_tenants();
        if tenants.is_empty() {
            return Ok(());
        }
        let Some(smi) = NvidiaSmi::find(&self.ctx.nvidia_smi) else {
            if self.ctx.gpu.nvml.is_some() {
                self.log.warn(format!("the GPU's compute mode is not managed: {} was not found; a timeslice trial fails under EXCLUSIVE_PROCESS", self.ctx.nvidia_smi.display()))?;
            }
            return Ok(());
        };
        let mps = self.trial.mode == SharingMode::Mps;
        let wanted = if mps {
            GpuComputeMode::ExclusiveProcess
        } else {
            GpuComputeMode::Default
        };
        let before = match smi.mode(TRIAL_GPU).await {
            Ok(mode) => mode,
            Err(e) => {
                self.log.warn(format!(
                    "the GPU's compute mode could not be read, so it is left as it is: {e}"
                ))?;
                return Ok(());
            }
        };
        if before == wanted {
            let detail = String::new();
            self.log
                .compute_mode(TRIAL_GPU, ComputeModeState::Kept, before, detail)?;
            return Ok(());
        }
        let log = self.trial_dir().join("compute-mode.log");
        let keeper = smi
            .keeper(TRIAL_GPU, before, &log)
            .await
            .map_err(|e| TrialFailure::Refused(vec![e.to_string()]))?;
        match smi.set(TRIAL_GPU, wanted).await {
            Ok(said) => {
                self.log
                    .compute_mode(TRIAL_GPU, ComputeModeState::Set, wanted, said)?;
                self.compute_mode = Some(ModeHold {
                    smi,
                    before,
                    keeper,
                });
                Ok(())
            }
            Err(e) => {
                keeper.stop().await;
                // Under MPS the one context is the MPS server's.
                let contexts = if mps { 1 } else { tenants.len() };
                let refusal = compute_mode::blocks(before, contexts).map(|why| {
                    format!(
                        "GPU {TRIAL_GPU} is in {} and the agent could not set {} for this {} trial ({e}): {why}, for the engines of {}. Run the agent as root, or run `sudo nvidia-smi -i {TRIAL_GPU} -c {}` before the run",
                        smi_name(before), smi_name(wanted), self.trial.mode.name(), tenants.join(", "), smi_name(wanted)
                    )
                });
                let detail = refusal.clone().unwrap_or_else(|| {
                    let still = if mps {
                        "its engines are verified as MPS clients before it measures"
                    } else {
                        "one CUDA context is all it needs"
                    };
                    format!(
                        "the agent could not set {} ({e}); the trial runs in {}: {still}",
                        smi_name(wanted),
                        smi_name(before)
                    )
                });
                self.log
                    .compute_mode(TRIAL_GPU, ComputeModeState::Refused, before, detail)?;
                match refusal {
                    Some(reason) => Err(TrialFailure::Refused(vec![reason]).into()),
                    None => Ok(()),
                }
            }
        }
    }

    /// The environment that keeps an engine of a trial without MPS off any MPS daemon: an
    /// empty pipe folder of the trial's own, made on first use.
    pub(super) fn no_mps_env(&mut self) -> std::io::Result<Vec<(String, String)>> {
        let dir = match &self.no_mps_pipe {
            Some(dir) => dir.clone(),
            None => {
                let key = format!(
                    "{}/{}",
                    self.ctx.run.streams.root().display(),
                    self.trial.name
                );
                let dir = std::env::temp_dir().join(format!(
                    "multitenant-no-mps-{:016x}",
                    crate::engine::name_hash(&key)
                ));
                let context = |e: std::io::Error| {
                    std::io::Error::new(
                        e.kind(),
                        format!("{} could not be made empty ({e})", dir.display()),
                    )
                };
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(context)?;
                }
                std::fs::create_dir_all(&dir).map_err(context)?;
                self.no_mps_pipe = Some(dir.clone());
                dir
            }
        };
        Ok(vec![(
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            dir.display().to_string(),
        )])
    }

    /// Puts back the compute mode the GPU had before the trial, and removes the empty pipe
    /// folder.
    pub(super) async fn release_gpu(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.no_mps_pipe.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!("removing {}: {e}", dir.display());
            }
        }
        let Some(hold) = self.compute_mode.take() else {
            return Ok(());
        };
        let report = hold.keeper.stop().await;
        let (mode, detail) = match hold.smi.mode(TRIAL_GPU).await {
            Ok(mode) if mode == hold.before => (mode, String::new()),
            Ok(mode) => (
                mode,
                format!(
                    "{} was asked for and the GPU is in {} ({})",
                    smi_name(hold.before),
                    smi_name(mode),
                    report.describe()
                ),
            ),
            Err(e) => (hold.before, format!("the mode could not be read back: {e}")),
        };
        self.log
            .compute_mode(TRIAL_GPU, ComputeModeState::Restored, mode, detail)
    }

    fn trial_dir(&self) -> PathBuf {
        self.ctx.run.streams.root().join(&self.trial.name)
    }
}
