//! What a first shared trial on a real GPU meets, held by stand-ins that behave as the real
//! things do (tests/support/fake_gpu.rs): vLLM's start-up memory check, CUDA's compute modes,
//! an MPS daemon already on the node, and a driver older than the engine's CUDA build.

use std::path::Path;
use std::time::Duration;

use multitenant::events::{ComputeModeState, GpuComputeMode, TrialState};

use crate::support::engines::{engine_story, run_to_end};
use crate::support::fake_gpu::{
    build_fake_nvml, compute_mode_story, fake_torch, make_executable, FakeGpu,
};
use crate::support::{binaries, InProcessAgent};
use multitenant::proto::v1::RunStatus;

const KV_8G: &str = "kv_cache_memory_bytes: 8589934592";

fn fake_mps_control() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-mps-control.sh")
}

async fn agent_on(tmp: &Path, gpu: &FakeGpu) -> InProcessAgent {
    InProcessAgent::start_with_tools(
        tmp,
        &fake_mps_control().display().to_string(),
        &gpu.nvidia_smi,
    )
    .await
}

fn trial_end(tmp: &Path, run: &str, trial: &str) -> (TrialState, Option<String>) {
    let (_, end) = engine_story(&tmp.join(run).join(trial).join("agent.jsonl"));
    end.expect("the trial ended")
}

/// Runs two stand-in vLLM tenants of 8 GiB KV caches through `trials` as run `run`, on a new
/// stand-in GPU of 80 GiB in compute mode `mode` that `prepare` may change first; returns the
/// folder and the GPU once the run ended.
async fn run_pair(
    mode: &str,
    trials: &str,
    run: &str,
    prepare: impl FnOnce(&FakeGpu),
) -> (tempfile::TempDir, FakeGpu) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gpu = FakeGpu::new(tmp.path(), 80, mode);
    prepare(&gpu);
    let agent = agent_on(tmp.path(), &gpu).await;
    let text = gpu.config(&[("a", KV_8G), ("b", KV_8G)], trials, "gpu_memory: 80G");
    assert_eq!(run_to_end(&agent, run, &text).await, RunStatus::Finished);
    agent.stop().await;
    (tmp, gpu)
}

/// Asserts that each of `trials` of run `run` finished.
fn assert_finished(tmp: &Path, run: &str, trials: &[&str]) {
    for trial in trials {
        let (state, reason) = trial_end(tmp, run, trial);
        assert_eq!(state, TrialState::Finished, "{trial}: {reason:?}");
    }
}

/// The log of `tenant`'s engine in `trial` of run `run`.
fn engine_log(tmp: &Path, run: &str, trial: &str, tenant: &str) -> String {
    std::fs::read_to_string(tmp.join(format!("{run}/{trial}/logs/{tenant}.log")))
        .expect("engine log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_sized_by_kv_bytes_both_start_on_one_gpu() {
    let (tmp, _gpu) = run_pair("Default", "[timeslice]", "kv", |_| {}).await;
    assert_finished(tmp.path(), "kv", &["timeslice"]);
    // Each was given the KV cache's own share for vLLM's start-up check (8 GiB of 80: 0.1).
    for tenant in ["a", "b"] {
        let log = engine_log(tmp.path(), "kv", "timeslice", tenant);
        assert!(
            log.contains("holds 9.5 GiB of the GPU (plain context"),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_trial_runs_in_the_compute_mode_it_needs_and_the_gpu_is_restored() {
    // As the doctor used to advise: EXCLUSIVE_PROCESS, which a timeslice trial cannot run in.
    let (tmp, gpu) = run_pair("Exclusive_Process", "[timeslice, mps]", "modes", |_| {}).await;
    assert_finished(tmp.path(), "modes", &["timeslice", "mps"]);
    let timeslice = compute_mode_story(&tmp.path().join("modes/timeslice/agent.jsonl"));
    let states: Vec<(ComputeModeState, GpuComputeMode)> =
        timeslice.iter().map(|e| (e.state, e.mode)).collect();
    assert_eq!(
        states,
        [
            (ComputeModeState::Set, GpuComputeMode::Default),
            (ComputeModeState::Restored, GpuComputeMode::ExclusiveProcess)
        ],
        "{timeslice:?}"
    );
    assert!(timeslice[0]
        .detail
        .contains("Set compute mode to DEFAULT for GPU"));
    let mps = compute_mode_story(&tmp.path().join("modes/mps/agent.jsonl"));
    assert_eq!(mps.len(), 1, "{mps:?}");
    assert_eq!(
        (mps[0].state, mps[0].mode),
        (ComputeModeState::Kept, GpuComputeMode::ExclusiveProcess)
    );
    assert_eq!(gpu.mode(), "Exclusive_Process");

    // From DEFAULT: the mps trial sets EXCLUSIVE_PROCESS and puts DEFAULT back.
    let (tmp, gpu) = run_pair("Default", "[timeslice, mps]", "modes", |_| {}).await;
    assert_finished(tmp.path(), "modes", &["timeslice", "mps"]);
    let mps = compute_mode_story(&tmp.path().join("modes/mps/agent.jsonl"));
    let states: Vec<(ComputeModeState, GpuComputeMode)> =
        mps.iter().map(|e| (e.state, e.mode)).collect();
    assert_eq!(
        states,
        [
            (ComputeModeState::Set, GpuComputeMode::ExclusiveProcess),
            (ComputeModeState::Restored, GpuComputeMode::Default)
        ]
    );
    let calls = gpu.smi_calls();
    assert!(
        calls.contains(&"-i 0 -c EXCLUSIVE_PROCESS".to_owned()),
        "{calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.ends_with("-c DEFAULT")).count(),
        1,
        "{calls:?}"
    );
    assert_eq!(gpu.mode(), "Default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mode_the_agent_may_not_change_refuses_only_the_trials_it_breaks() {
    let (tmp, gpu) = run_pair(
        "Exclusive_Process",
        "[solo, timeslice, mps]",
        "locked",
        FakeGpu::forbid_mode_changes,
    )
    .await;
    assert_finished(tmp.path(), "locked", &["solo-a", "solo-b", "mps"]);
    let (state, reason) = trial_end(tmp.path(), "locked", "timeslice");
    assert_eq!(state, TrialState::Invalid);
    let reason = reason.expect("reason");
    assert!(
        reason.starts_with("refused before any engine started: GPU 0 is in EXCLUSIVE_PROCESS and the agent could not set DEFAULT for this timeslice trial")
            && reason.contains("Insufficient Permissions")
            && reason.contains("for the engines of a, b")
            && reason.contains("`sudo nvidia-smi -i 0 -c DEFAULT`"),
        "{reason}"
    );
    let (engines, _) = engine_story(&tmp.path().join("locked/timeslice/agent.jsonl"));
    assert!(engines.is_empty(), "no engine may start: {engines:?}");
    assert_eq!(gpu.mode(), "Exclusive_Process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeslice_trial_is_kept_off_an_mps_daemon_on_the_default_pipe() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gpu = FakeGpu::new(tmp.path(), 80, "Default");
    // Someone else's daemon, answering where CUDA looks when CUDA_MPS_PIPE_DIRECTORY is unset.
    let mut daemon = tokio::process::Command::new(fake_mps_control())
        .arg("-f")
        .env("CUDA_MPS_PIPE_DIRECTORY", &gpu.default_pipe)
        .env("CUDA_MPS_LOG_DIRECTORY", &gpu.default_pipe)
        .kill_on_drop(true)
        .spawn()
        .expect("daemon");
    let pidfile = gpu.default_pipe.join("nvidia-cuda-mps-control.pid");
    for _ in 0..50 {
        if pidfile.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pidfile.exists(), "the stand-in daemon is up");
    let agent = agent_on(tmp.path(), &gpu).await;
    let text = gpu.config(
        &[("a", KV_8G), ("b", KV_8G)],
        "[timeslice]",
        "gpu_memory: 80G",
    );
    assert_eq!(
        run_to_end(&agent, "stray", &text).await,
        RunStatus::Finished
    );
    let (state, reason) = trial_end(tmp.path(), "stray", "timeslice");
    assert_eq!(state, TrialState::Finished, "{reason:?}");
    let clients = std::fs::read_to_string(gpu.default_pipe.join("clients")).unwrap_or_default();
    assert!(
        clients.trim().is_empty(),
        "engines joined the stray daemon: {clients}"
    );
    for tenant in ["a", "b"] {
        let log = engine_log(tmp.path(), "stray", "timeslice", tenant);
        assert!(log.contains("(plain context"), "{log}");
    }
    agent.stop().await;
    std::fs::write(gpu.default_pipe.join("quit"), "").expect("quit");
    let _ = tokio::time::timeout(Duration::from_secs(5), daemon.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_restores_the_mode_when_the_agent_is_gone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gpu = FakeGpu::new(tmp.path(), 80, "Default");
    let smi = agent::compute_mode::NvidiaSmi::find(&gpu.nvidia_smi).expect("stand-in nvidia-smi");
    let keeper = smi
        .keeper(0, GpuComputeMode::Default, &tmp.path().join("keeper.log"))
        .await
        .expect("keeper");
    smi.set(0, GpuComputeMode::ExclusiveProcess)
        .await
        .expect("set");
    assert_eq!(gpu.mode(), "Exclusive_Process");
    // The agent's end, as a SIGKILL leaves it: its end of the keeper's lifeline closes and the
    // process handle is gone, without any stop.
    drop(keeper);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gpu.mode() != "Default" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gpu.mode(), "Default", "{:?}", gpu.smi_calls());
}

/// `agent doctor` on a node whose driver is the stand-in NVML library, with a vLLM whose
/// environment has the stand-in PyTorch built for CUDA `build`.
fn doctor_with(tmp: &Path, driver_cuda: &str, build: &str) -> std::process::Output {
    let venv = tmp.join("venv/bin");
    std::fs::create_dir_all(&venv).expect("venv");
    let python = venv.join("python3");
    if !python.exists() {
        std::os::unix::fs::symlink(which_python(), &python).expect("python");
    }
    let vllm = venv.join("vllm");
    std::fs::write(&vllm, format!("#!{}\nprint('0.34.0')\n", python.display())).expect("vllm");
    make_executable(&vllm);
    build_fake_nvml(tmp);
    std::process::Command::new(&binaries().0)
        .arg("doctor")
        .arg("--vllm")
        .arg(&vllm)
        .arg("--mps-control")
        .arg(fake_mps_control())
        .arg("--data-dir")
        .arg(tmp)
        .env("LD_LIBRARY_PATH", tmp)
        .env("PYTHONPATH", fake_torch())
        .env("FAKE_NVML_CUDA_VERSION", driver_cuda)
        .env("FAKE_TORCH_CUDA", build)
        .output()
        .expect("agent doctor")
}

fn which_python() -> std::path::PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .expect("a python3")
}

#[test]
fn doctor_fails_a_vllm_built_for_a_newer_cuda_than_the_driver() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = doctor_with(tmp.path(), "12040", "13.0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("CUDA 12.4"),
        "the driver's version, read through NVML: {stdout}"
    );
    let cuda = stdout
        .lines()
        .find(|l| l.contains(" cuda "))
        .expect("a cuda line");
    assert!(
        cuda.starts_with("FAIL")
            && cuda.contains("built for CUDA 13.0 and the driver supports CUDA 12.4")
            && cuda.contains("The NVIDIA driver on your system is too old (found version 12040)")
            && cuda.contains("install a vLLM wheel built for CUDA 12"),
        "{cuda}"
    );
    assert!(stderr.contains("agent doctor: cuda failed"), "{stderr}");

    let out = doctor_with(tmp.path(), "12040", "12.9");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let cuda = stdout
        .lines()
        .find(|l| l.contains(" cuda "))
        .expect("a cuda line");
    assert!(
        cuda.starts_with("ok")
            && cuda.contains(
                "built for CUDA 12.9, initialised CUDA on NVIDIA H100 80GB HBM3 (stand-in)"
            ),
        "{cuda}"
    );
    assert!(stdout.contains("vllm: mps"), "{stdout}");
}

#[test]
fn validate_refuses_a_shared_trial_whose_engines_cannot_all_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gpu = FakeGpu::new(tmp.path(), 80, "Default");
    let refused = gpu.config(
        &[
            ("a", "gpu_memory_fraction: 0.5"),
            ("b", "gpu_memory_fraction: 0.5"),
        ],
        "[solo, mps]",
        "accelerators: H100:1",
    );
    let path = tmp.path().join("split.yaml");
    std::fs::write(&path, refused).expect("config");
    let out = std::process::Command::new(&binaries().1)
        .arg("validate")
        .arg(&path)
        .output()
        .expect("coordinator validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("nodes[0].tenants")
            && stderr.contains("b would not start in this node's shared trials")
            && stderr.contains("gpu_memory_fraction 0.50 of one H100:1")
            && stderr.contains("only 0.48, 38.5 GiB is"),
        "{stderr}"
    );
    let fits = gpu.config(
        &[("a", KV_8G), ("b", KV_8G)],
        "[solo, mps]",
        "accelerators: H100:1",
    );
    std::fs::write(&path, fits).expect("config");
    let out = std::process::Command::new(&binaries().1)
        .arg("validate")
        .arg(&path)
        .output()
        .expect("coordinator validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
