//! Whether the engine's PyTorch can use this node's GPU driver: `agent doctor`'s `cuda` check.
//!
//! `vllm --version` never touches CUDA, so a vLLM whose PyTorch was built for a newer CUDA than
//! the driver supports looks fine until its first engine starts. Since vLLM 0.20 the default
//! wheels are built for CUDA 13 (vLLM PR #39878), which a CUDA 12.x driver cannot run: PyTorch
//! then fails with "The NVIDIA driver on your system is too old (found version …)"
//! (`c10/cuda/CUDAFunctions.cpp`, `device_count_impl`). Within one major version CUDA's
//! minor-version compatibility lets an older driver run a newer build.
//!
//! The check reads the driver's CUDA version from NVML, runs the Python of the engine's own
//! environment once to read `torch.version.cuda` (the toolkit the wheel was built with), and
//! initialises CUDA there for real, so that what would fail at the first engine fails here.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the engine's Python may take to import PyTorch and initialise CUDA.
const PROBE_TIMEOUT: Duration = Duration::from_secs(180);

/// What the engine's Python prints: one JSON object.
const PROBE: &str = r#"
import json
out = {}
try:
    import torch
    out["torch"] = torch.__version__
    out["build"] = torch.version.cuda
    if out["build"]:
        torch.cuda.init()
        out["device"] = torch.cuda.get_device_name(0)
        free, total = torch.cuda.mem_get_info(0)
        out["touched"] = True
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"#;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct TorchCuda {
    /// `torch.__version__`, when PyTorch imported.
    pub torch: Option<String>,
    /// `torch.version.cuda`: the CUDA the wheel was built with (`None`: a CPU build).
    pub build: Option<String>,
    /// The GPU CUDA found, when it initialised.
    pub device: Option<String>,
    /// Whether CUDA was initialised and its memory read.
    #[serde(default)]
    pub touched: bool,
    /// What failed, in PyTorch's words.
    pub error: Option<String>,
}

/// The judgement: `Ok(detail)` when the engine can use the GPU, `Err(detail with the fix)`.
pub type Verdict = Result<String, String>;

/// The Python that runs `vllm` (a path): the interpreter its launcher script names (pip's
/// `#!…/python` line, or the `'''exec' "…/python"` line of a long-path launcher), else the
/// `python3` beside it.
pub fn engine_python(vllm: &Path) -> PathBuf {
    let head = std::fs::read(vllm)
        .map(|bytes| String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).into_owned())
        .unwrap_or_default();
    let mut lines = head.lines();
    let shebang = lines
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map(str::trim);
    match shebang {
        Some(interpreter) if interpreter.contains("python") && !interpreter.contains(' ') => {
            return PathBuf::from(interpreter);
        }
        Some(line) if line.starts_with("/usr/bin/env ") => {
            let name = line.split_whitespace().nth(1).unwrap_or("python3");
            if let Some(found) = crate::engine::find_executable(name) {
                return found;
            }
        }
        Some("/bin/sh") => {
            let exec = lines.find_map(|l| l.strip_prefix("'''exec' \""));
            if let Some(rest) = exec.and_then(|r| r.split('"').next()) {
                return PathBuf::from(rest);
            }
        }
        _ => {}
    }
    vllm.with_file_name("python3")
}

/// Runs the probe in `python`.
pub async fn probe(python: &Path) -> Result<TorchCuda, String> {
    let output = tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::process::Command::new(python)
            .arg("-c")
            .arg(PROBE)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| {
        format!(
            "{} did not answer within {PROBE_TIMEOUT:?}",
            python.display()
        )
    })?
    .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    line.and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            format!(
                "{} printed no answer ({}): {}",
                python.display(),
                output.status,
                stderr.lines().last().unwrap_or("")
            )
        })
}

/// Judges the probe against the driver's CUDA version (`cudaDriverGetVersion`'s number, e.g.
/// 12040 for 12.4, as NVML's `nvmlSystemGetCudaDriverVersion_v2` gives it).
pub fn judge(found: &TorchCuda, driver: i32) -> Verdict {
    let driver_text = format!("{}.{}", driver / 1000, driver % 1000 / 10);
    let torch = found.torch.as_deref().unwrap_or("not importable");
    let Some(build) = found.build.as_deref() else {
        return match &found.error {
            Some(e) => Err(format!("the engine's Python cannot import PyTorch ({e}); reinstall vLLM in that environment")),
            None => Err(format!("the engine's PyTorch {torch} is a CPU build: it cannot use the GPU; install a CUDA build of vLLM")),
        };
    };
    let build_major: i32 = build
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let fix = format!(
        "install a vLLM wheel built for CUDA {} (scripts/node-setup.sh picks the variant from the driver), or update the NVIDIA driver to one that supports CUDA {build}",
        driver / 1000
    );
    if build_major > driver / 1000 {
        return match (&found.error, found.touched) {
            // Forward compatibility (NVIDIA's cuda-compat package) can run a newer build.
            (None, true) => Ok(format!(
                "PyTorch {torch}, built for CUDA {build}, initialised CUDA on {} although the driver supports CUDA {driver_text} (forward compatibility)",
                found.device.as_deref().unwrap_or("the GPU")
            )),
            (error, _) => Err(format!(
                "the engine's PyTorch {torch} is built for CUDA {build} and the driver supports CUDA {driver_text} ({}); {fix}",
                error.as_deref().unwrap_or("CUDA was not initialised")
            )),
        };
    }
    if let Some(e) = &found.error {
        return Err(format!(
            "the engine's PyTorch {torch} (CUDA {build}) could not use the GPU: {e}; driver CUDA {driver_text}"
        ));
    }
    let device = found.device.as_deref().unwrap_or("the GPU");
    Ok(format!(
        "PyTorch {torch}, built for CUDA {build}, initialised CUDA on {device} (driver CUDA {driver_text})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(build: Option<&str>, error: Option<&str>) -> TorchCuda {
        TorchCuda {
            torch: Some("2.14.0".into()),
            build: build.map(str::to_owned),
            device: error.is_none().then(|| "NVIDIA H100 80GB HBM3".to_owned()),
            touched: error.is_none(),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_build_newer_than_the_driver_fails_with_the_fix() {
        let said = judge(&found(Some("13.0"), Some("RuntimeError: The NVIDIA driver on your system is too old (found version 12040).")), 12040)
            .expect_err("fails");
        assert!(
            said.contains("built for CUDA 13.0 and the driver supports CUDA 12.4"),
            "{said}"
        );
        assert!(
            said.contains("install a vLLM wheel built for CUDA 12"),
            "{said}"
        );
        let ok = judge(&found(Some("12.9"), None), 12040).expect("minor-version compatible");
        assert!(ok.contains("initialised CUDA on NVIDIA H100"), "{ok}");
        assert!(judge(&found(None, None), 12040).is_err());
        // A newer build that initialised anyway runs through forward compatibility.
        let forward = judge(&found(Some("13.0"), None), 12040).expect("initialised");
        assert!(forward.contains("forward compatibility"), "{forward}");
    }

    #[test]
    fn the_engines_python_comes_from_its_launcher() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("vllm");
        std::fs::write(&plain, "#!/opt/venv/bin/python3\nimport sys\n").expect("write");
        assert_eq!(
            engine_python(&plain),
            PathBuf::from("/opt/venv/bin/python3")
        );
        std::fs::write(
            &plain,
            "#!/bin/sh\n'''exec' \"/a long/path/python\" \"$0\" \"$@\"\n' '''\n",
        )
        .expect("write");
        assert_eq!(engine_python(&plain), PathBuf::from("/a long/path/python"));
        std::fs::write(&plain, "\x7fELF").expect("write");
        assert_eq!(engine_python(&plain), dir.path().join("python3"));
    }
}
