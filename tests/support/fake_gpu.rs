//! A stand-in GPU: the folder that the stand-in `nvidia-smi` (tests/fixtures/fake-nvidia-smi.sh),
//! the stand-in vLLM (tests/fixtures/fake-vllm.sh) and the stand-in NVML library
//! (tests/fixtures/fake-nvml.c) share, as the real ones share the driver.

use std::path::{Path, PathBuf};

use multitenant::events::{read_stream, ComputeModeEvent, Event};

use super::binaries;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One stand-in GPU of `total_gib`, in a folder under a test's temporary folder.
pub struct FakeGpu {
    /// Its state: `total_bytes`, `compute_mode`, `contexts/<pid>`, `smi.log`.
    pub dir: PathBuf,
    /// An `nvidia-smi` that acts on it.
    pub nvidia_smi: PathBuf,
    /// The folder standing in for `/tmp/nvidia-mps`, the MPS default pipe.
    pub default_pipe: PathBuf,
}

impl FakeGpu {
    /// A GPU of `total_gib` in compute mode `mode` (`Default`, `Exclusive_Process`).
    pub fn new(root: &Path, total_gib: u64, mode: &str) -> Self {
        let dir = root.join("gpu");
        std::fs::create_dir_all(dir.join("contexts")).expect("gpu folder");
        std::fs::write(dir.join("total_bytes"), (total_gib << 30).to_string()).expect("total");
        std::fs::write(dir.join("compute_mode"), format!("{mode}\n")).expect("mode");
        let nvidia_smi = root.join("bin/nvidia-smi");
        std::fs::create_dir_all(root.join("bin")).expect("bin");
        std::fs::write(
            &nvidia_smi,
            format!(
                "#!/bin/sh\nFAKE_GPU_DIR='{}' exec '{}' \"$@\"\n",
                dir.display(),
                fixture("fake-nvidia-smi.sh").display()
            ),
        )
        .expect("nvidia-smi");
        make_executable(&nvidia_smi);
        let default_pipe = root.join("default-mps-pipe");
        std::fs::create_dir_all(&default_pipe).expect("default pipe");
        Self {
            dir,
            nvidia_smi,
            default_pipe,
        }
    }

    /// Its compute mode now, as nvidia-smi prints it.
    pub fn mode(&self) -> String {
        std::fs::read_to_string(self.dir.join("compute_mode"))
            .expect("mode")
            .trim()
            .to_owned()
    }

    /// Every nvidia-smi call so far.
    pub fn smi_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("smi.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// From now on nvidia-smi refuses to change the mode, as for a user who is not root.
    pub fn forbid_mode_changes(&self) {
        std::fs::write(self.dir.join("not-root"), "").expect("not-root");
    }

    /// The `engine.env` entries that put a stand-in vLLM on this GPU.
    pub fn engine_env(&self) -> String {
        format!(
            "FAKE_VLLM_AGENT_BIN: {}, FAKE_GPU_DIR: {}, FAKE_MPS_DEFAULT_PIPE: {}",
            binaries().0.display(),
            self.dir.display(),
            self.default_pipe.display()
        )
    }

    /// A one-node config of stand-in vLLM tenants on this GPU: `(name, memory keys)` each,
    /// e.g. `("a", "kv_cache_memory_bytes: 8589934592")`, under `node_keys` (e.g.
    /// `gpu_memory: 80G`).
    pub fn config(&self, tenants: &[(&str, &str)], trials: &str, node_keys: &str) -> String {
        let mut text = format!(
            "name: gpu\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 10}}, data: {{prompt_tokens: 8, output_tokens: 8}}, warmup: 0s, duration: 1s}}\nnodes:\n  - name: n\n    trials: {trials}\n    {node_keys}\n    tenants:\n"
        );
        for (name, memory) in tenants {
            text.push_str(&format!(
                "      - {{name: {name}, workload: w, engine: {{kind: vllm, model: ok, served_model_name: {name}, executable: {exe}, startup_timeout: 5s, {memory}, env: {{{env}}}}}}}\n",
                exe = fixture("fake-vllm.sh").display(),
                env = self.engine_env(),
            ));
        }
        text
    }
}

/// The compute-mode events of a trial's agent stream.
pub fn compute_mode_story(agent_stream: &Path) -> Vec<ComputeModeEvent> {
    read_stream(agent_stream)
        .expect("agent stream")
        .events
        .into_iter()
        .filter_map(|l| match l.event {
            Event::ComputeMode(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Gives `path` execute permission.
pub fn make_executable(path: &Path) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
}

/// Builds the stand-in NVML library into `dir` (as `libnvidia-ml.so.1`, the name nvml-wrapper
/// loads) with the system C compiler.
pub fn build_fake_nvml(dir: &Path) {
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libnvidia-ml.so.1"))
        .arg(fixture("fake-nvml.c"))
        .status()
        .expect("cc runs");
    assert!(status.success(), "building the stand-in NVML failed");
}

/// The stand-in PyTorch's folder, for PYTHONPATH.
pub fn fake_torch() -> PathBuf {
    fixture("fake-torch")
}
