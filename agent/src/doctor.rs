//! `agent doctor`: what this node has and which sharing modes it can run, one line per check.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use nvml_wrapper::enum_wrappers::device::ComputeMode;

use crate::engine::find_executable;
use crate::gpu::NodeGpus;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Present and usable.
    Ok,
    /// Present, but something limits it.
    Warn,
    /// Not there.
    Missing,
    /// There, and it will fail: the detail says how to fix it.
    Fail,
    /// Not checked: nothing asked for it.
    Skipped,
}

impl Status {
    /// `ok`, `warn`, `missing` or `skipped`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
            Status::Fail => "FAIL",
            Status::Skipped => "skipped",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// How it came out.
    pub status: Status,
    /// What was checked.
    pub name: &'static str,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<7} {:<14} {}",
            self.status.name(),
            self.name,
            self.detail
        )
    }
}

fn check(status: Status, name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        status,
        name,
        detail: detail.into(),
    }
}

/// Runs every check. `vllm` and `mps_control` are names on PATH or paths (vLLM is skipped when
/// `None`: nothing on the node needs it); `data_dir` is where runs would be written.
pub async fn run(
    gpus: &NodeGpus,
    vllm: Option<&str>,
    mps_control: &str,
    data_dir: &Path,
) -> Vec<Check> {
    let mut checks = Vec::new();
    match &gpus.nvml {
        None => checks.push(check(Status::Missing, "gpu", gpus.status.describe())),
        Some(nvml) => {
            let driver = nvml
                .sys_driver_version()
                .unwrap_or_else(|e| format!("unknown ({e})"));
            let cuda = nvml
                .sys_cuda_driver_version()
                .map_or("unknown".into(), |v| {
                    format!("{}.{}", v / 1000, v % 1000 / 10)
                });
            checks.push(check(
                Status::Ok,
                "gpu",
                format!("{}; driver {driver}, CUDA {cuda}", gpus.status.describe()),
            ));
            for index in 0..nvml.device_count().unwrap_or(0) {
                let Ok(device) = nvml.device_by_index(index) else {
                    continue;
                };
                let (status, detail) = match device.compute_mode() {
                    Ok(mode @ (ComputeMode::ExclusiveProcess | ComputeMode::Default)) => (Status::Ok, format!("{mode:?} now; each trial of vLLM engines sets what it needs (mps: EXCLUSIVE_PROCESS, others: DEFAULT) through nvidia-smi, which needs root, and puts it back")),
                    Ok(mode) => (Status::Warn, format!("{mode:?}: no CUDA process can start until the agent (as root) or `sudo nvidia-smi -i {index} -c DEFAULT` changes it")),
                    Err(e) => (Status::Warn, format!("unknown ({e})")),
                };
                checks.push(check(
                    status,
                    "compute mode",
                    format!("GPU {index}: {detail}"),
                ));
            }
        }
    }
    let mps = find_executable(mps_control);
    checks.push(match &mps {
        Some(path) => check(Status::Ok, "mps", format!("{} found", path.display())),
        None => check(
            Status::Missing,
            "mps",
            format!("{mps_control} not found: mps trials cannot run"),
        ),
    });
    let vllm_version = match vllm {
        Some(vllm) => {
            let version = vllm_version(vllm).await;
            checks.push(match &version {
                Ok(v) => check(Status::Ok, "vllm", format!("{vllm}: version {v}")),
                Err(why) => check(Status::Missing, "vllm", format!("{vllm}: {why}")),
            });
            version
        }
        None => {
            checks.push(check(
                Status::Skipped,
                "vllm",
                "not checked: no vllm tenant on this node",
            ));
            Err("not checked".into())
        }
    };
    let cuda = match (&vllm_version, vllm.and_then(find_executable)) {
        (Ok(_), Some(path)) => {
            let check = cuda_check(gpus, &path).await;
            let usable = check.status != Status::Fail;
            checks.push(check);
            usable
        }
        _ => false,
    };
    checks.push(disk_check(data_dir));
    checks.push(memory_check());
    let mut modes = vec!["simulated engines: solo, mps, timeslice (simulated)".to_owned()];
    if vllm_version.is_ok() && (cuda || gpus.nvml.is_none()) {
        modes.push("vllm: solo, timeslice".into());
        if gpus.nvml.is_some() && mps.is_some() {
            modes.push("vllm: mps".into());
        }
    }
    checks.push(check(Status::Ok, "sharing modes", modes.join("; ")));
    checks
}

/// Whether the engine's PyTorch can use the GPU's driver: its CUDA build against the driver's
/// CUDA version, and CUDA initialised once for real (see [`crate::cuda_probe`]).
async fn cuda_check(gpus: &NodeGpus, vllm: &Path) -> Check {
    let Some(nvml) = &gpus.nvml else {
        return check(
            Status::Skipped,
            "cuda",
            "not checked: no GPU driver (NVML not loaded)",
        );
    };
    let driver = match nvml.sys_cuda_driver_version() {
        Ok(v) => v,
        Err(e) => {
            return check(
                Status::Warn,
                "cuda",
                format!("the driver's CUDA version is unknown ({e})"),
            )
        }
    };
    let python = crate::cuda_probe::engine_python(vllm);
    match crate::cuda_probe::probe(&python).await {
        Ok(found) => match crate::cuda_probe::judge(&found, driver) {
            Ok(detail) => check(Status::Ok, "cuda", detail),
            Err(detail) => check(Status::Fail, "cuda", detail),
        },
        // The probe itself could not run: that says nothing certain of the engine.
        Err(why) => check(
            Status::Warn,
            "cuda",
            format!("the engine's Python could not be asked: {why}"),
        ),
    }
}

/// `vllm --version`, with a deadline (its import takes seconds).
async fn vllm_version(vllm: &str) -> Result<String, String> {
    let path = find_executable(vllm).ok_or("not found on PATH or as a path")?;
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&path)
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "`--version` did not answer within 120 s".to_owned())?
    .map_err(|e| format!("cannot run it: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "`--version` failed ({}): {}",
            output.status,
            stderr.lines().last().unwrap_or("")
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .ok_or_else(|| "`--version` printed nothing".into())
}

/// Free space where runs are written (the nearest existing folder up from `data_dir`).
fn disk_check(data_dir: &Path) -> Check {
    let absolute =
        std::env::current_dir().map_or_else(|_| data_dir.to_owned(), |cwd| cwd.join(data_dir));
    let existing = absolute
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(existing) {
        Ok(fs) => {
            let free = fs.blocks_available() * fs.fragment_size();
            let status = if free < 20 << 30 {
                Status::Warn
            } else {
                Status::Ok
            };
            check(
                status,
                "disk",
                format!(
                    "{} free at {} (models and vLLM want tens of GB)",
                    gib(free),
                    existing.display()
                ),
            )
        }
        Err(e) => check(
            Status::Warn,
            "disk",
            format!("cannot read free space at {}: {e}", existing.display()),
        ),
    }
}

fn memory_check() -> Check {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    check(
        Status::Ok,
        "memory",
        format!(
            "{} available of {}",
            gib(system.available_memory()),
            gib(system.total_memory())
        ),
    )
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_gpu_mps_or_vllm_only_simulated_modes_are_offered() {
        let gpus = NodeGpus::unavailable("NVML could not be loaded (test)");
        let dir = tempfile::tempdir().expect("tempdir");
        let checks = run(
            &gpus,
            Some("no-such-vllm"),
            "no-such-mps-control",
            dir.path(),
        )
        .await;
        let find = |name: &str| {
            checks
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no {name} check"))
        };
        assert_eq!(find("gpu").status, Status::Missing);
        assert!(find("gpu")
            .detail
            .contains("GPU sampling is off: NVML could not be loaded (test)"));
        assert_eq!(find("mps").status, Status::Missing);
        assert!(find("vllm").detail.contains("no-such-vllm: not found"));
        assert!(find("disk").detail.contains("GiB free"));
        assert_eq!(
            find("sharing modes").detail,
            "simulated engines: solo, mps, timeslice (simulated)"
        );
        assert!(find("mps").to_string().starts_with("missing mps "));
    }

    #[tokio::test]
    async fn a_working_vllm_adds_its_modes_and_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("vllm");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'INFO some log line' >&2\necho 0.32.0+cpu\n",
        )
        .expect("write");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let gpus = NodeGpus::unavailable("test");
        let checks = run(
            &gpus,
            Some(&fake.display().to_string()),
            "no-such-mps-control",
            dir.path(),
        )
        .await;
        let vllm = checks
            .iter()
            .find(|c| c.name == "vllm")
            .expect("vllm check");
        assert_eq!(vllm.status, Status::Ok);
        assert!(
            vllm.detail.ends_with("version 0.32.0+cpu"),
            "{}",
            vllm.detail
        );
        let modes = checks
            .iter()
            .find(|c| c.name == "sharing modes")
            .expect("modes");
        assert!(
            modes.detail.contains("vllm: solo, timeslice") && !modes.detail.contains("vllm: mps"),
            "{}",
            modes.detail
        );
    }
}
