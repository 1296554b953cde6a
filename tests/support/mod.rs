//! Helpers that read as specs: a simulated engine at port 0, an agent in this process, the
//! built binaries, a TCP proxy whose connections a test can cut, and a tenant load to drive.

pub mod engines;
pub mod fake_gpu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agent::clock::RunClock;
use agent::engine::sim_gpu::SimGpu;
use agent::engine::simulated::{SimEngine, SimEngineConfig};
use agent::gpu::NodeGpus;
use agent::loadgen::{self, LoadReport};
use agent::run::RunManager;
use multitenant::auth::BearerToken;
use multitenant::config::{
    Api, Arrival, ArrivalPlan, DataSource, LengthDist, SharingMode, SimFaults, SimTiming,
    SyntheticData, Workload,
};
use multitenant::events::{read_stream, Event, Phase, RequestEvent};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The token the in-process agents of these tests accept.
pub fn test_token() -> BearerToken {
    BearerToken::new("integration-test-token-0123456789").expect("valid token")
}

/// A simulated engine on a free loopback port that records the true emission time of tokens.
pub async fn sim_engine(timing: SimTiming, faults: SimFaults) -> SimEngine {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = SimEngineConfig {
        model: "sim".into(),
        adapters: Vec::new(),
        timing,
        faults,
        seed: 11,
        record_truth: true,
    };
    SimEngine::start(
        listener,
        config,
        Arc::new(SimGpu::new(SharingMode::Solo, 0.0)),
    )
    .expect("start sim engine")
}

/// A four-word prompt asking for four tokens, for requests sent one by one.
pub fn four_word_prompt() -> agent::loadgen::prompts::Prompt {
    agent::loadgen::prompts::Prompt {
        text: "one two three four".into(),
        words: 4,
        tokens: None,
        max_tokens: 4,
        origin: "synthetic".into(),
        expected: None,
    }
}

/// A streaming chat workload at a constant rate.
pub fn constant_workload(rate: f64, duration: Duration, prompt: u32, output: u32) -> Workload {
    Workload {
        api: Api::Chat,
        stream: true,
        arrival: ArrivalPlan::Single(Arrival::Constant { rate }),
        data: DataSource::Synthetic(SyntheticData {
            prompt_tokens: LengthDist::Fixed(prompt),
            output_tokens: LengthDist::Fixed(output),
        }),
        warmup: Duration::ZERO,
        duration,
        max_requests: None,
        drain_timeout: Duration::from_secs(10),
        ignore_eos: true,
        tokenizer: None,
        request_fields: serde_json::Map::new(),
        keep_responses: 0,
        slo: multitenant::slo::Slo::default(),
    }
}

/// Drives `workload` at `base_url` and returns the report, the clock and the request events.
pub async fn record_load(
    base_url: &str,
    workload: Workload,
    dir: &Path,
) -> (LoadReport, RunClock, Vec<RequestEvent>) {
    let recorded = loadgen::standalone::record_workload(base_url, "sim", workload, dir, "solo", 5)
        .await
        .expect("drive");
    assert!(recorded.warnings.is_empty(), "{:?}", recorded.warnings);
    (recorded.report, recorded.clock, recorded.requests)
}

/// The request events of the stream at `path`, and the reader's warnings.
pub fn request_events(path: &Path) -> (Vec<RequestEvent>, Vec<String>) {
    let contents = read_stream(path).expect("a readable stream");
    (contents.requests().cloned().collect(), contents.warnings)
}

/// An agent serving in this process on a free loopback port.
pub struct InProcessAgent {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its port.
    pub port: u16,
    /// Where its runs are written.
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl InProcessAgent {
    /// Starts one writing into `data_dir`, with the stand-in MPS control of
    /// tests/fixtures/fake-mps-control.sh.
    pub async fn start(data_dir: &Path) -> Self {
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-mps-control.sh");
        Self::start_with_mps_control(data_dir, &fake.display().to_string()).await
    }

    /// Starts one writing into `data_dir` whose `mps` trials use `mps_control`.
    pub async fn start_with_mps_control(data_dir: &Path, mps_control: &str) -> Self {
        Self::start_with_tools(data_dir, mps_control, Path::new("no-nvidia-smi-in-tests")).await
    }

    /// Starts one writing into `data_dir` whose `mps` trials use `mps_control` and whose
    /// trials set the GPU's compute mode through `nvidia_smi`.
    pub async fn start_with_tools(data_dir: &Path, mps_control: &str, nvidia_smi: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let gpu = NodeGpus::unavailable("tests run without a GPU");
        let runs = Arc::new(
            RunManager::new(data_dir.to_owned(), gpu, mps_control.into())
                .with_nvidia_smi(nvidia_smi.to_owned()),
        );
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            agent::server::serve(listener, runs.clone(), test_token(), None, stop)
                .await
                .expect("serve");
            runs.shutdown().await;
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            data_dir: data_dir.to_owned(),
            shutdown,
            task,
        }
    }

    /// Runs the experiment in `config` on this agent, as a static one, with the experiment
    /// folder under `output_dir`; panics when it fails.
    pub async fn run_experiment(
        &self,
        config: &Path,
        output_dir: &Path,
    ) -> coordinator::run::Outcome {
        let endpoint = coordinator::launch::AgentEndpoint {
            url: self.url.clone(),
            token: test_token(),
            tls: None,
        };
        coordinator::run::run_experiment(
            config,
            Some(output_dir),
            coordinator::run::Launch::Static(vec![endpoint]),
            CancellationToken::new(),
        )
        .await
        .expect("experiment")
    }

    /// Stops it and waits until its runs have closed their records.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("agent task");
    }
}

/// A loopback TCP proxy; [`CuttableProxy::cut`] drops every open connection, as a network
/// failure would, while new connections keep working.
pub struct CuttableProxy {
    /// `127.0.0.1:<port>` of the proxy.
    pub port: u16,
    cut: Arc<Mutex<CancellationToken>>,
    task: JoinHandle<()>,
}

impl CuttableProxy {
    /// Forwards a free loopback port to `127.0.0.1:<to_port>`.
    pub async fn start(to_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let current = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let token = current.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to_port)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self { port, cut, task }
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        let mut token = self.cut.lock().expect("lock");
        token.cancel();
        *token = CancellationToken::new();
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// `coordinator run <cfg> --output-dir <runs>` to its end, off the runtime's threads, with
/// the test token in each of `token_envs` (the static launcher's `token_env`s).
pub async fn run_coordinator(cfg: &Path, runs: &Path, token_envs: &[&str]) -> std::process::Output {
    let (_, coordinator) = binaries();
    let mut command = Command::new(coordinator);
    command.arg("run").arg(cfg).arg("--output-dir").arg(runs);
    for env in token_envs {
        command.env(env, test_token().expose());
    }
    tokio::task::spawn_blocking(move || command.output().expect("coordinator runs"))
        .await
        .expect("join")
}

/// Paths of the `agent` and `coordinator` binaries, built once per test run.
pub fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "agent", "-p", "coordinator"]);
        // What cargo sets for this test process is not the environment of a build from the
        // shell: a build script that watches one of them (ring's watches CARGO_MANIFEST_DIR)
        // would rebuild half the tree here, and again at the next build from the shell.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_for_tests = key.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&key.as_ref());
            if set_for_tests {
                build.env_remove(key.as_ref());
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(
            status.success(),
            "building the agent and coordinator binaries failed"
        );
        (profile_dir.join("agent"), profile_dir.join("coordinator"))
    })
}

/// The experiment folder that `coordinator run` names on its `results:` line.
pub fn results_dir(stdout: &str) -> PathBuf {
    PathBuf::from(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("results: "))
            .unwrap_or_else(|| panic!("no results line in\n{stdout}"))
            .trim(),
    )
}

/// The `summary.json` of an experiment folder.
pub fn read_summary(dir: &Path) -> multitenant::analysis::Summary {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).expect("summary.json"))
        .expect("summary.json parses")
}

/// Every regular file under `dir`, as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("prefix").to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The value at quantile `q` of `values` (sorted in place), nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Writes `yaml` to `<tmp>/<name>.yaml`, runs `coordinator run` on it with `<tmp>/runs` as the
/// output folder, asserts it succeeded, and returns the experiment folder.
pub fn run_experiment(tmp: &Path, name: &str, yaml: &str) -> PathBuf {
    run_experiment_printing(tmp, name, yaml).0
}

/// [`run_experiment`], returning what it printed too.
pub fn run_experiment_printing(tmp: &Path, name: &str, yaml: &str) -> (PathBuf, String) {
    let (_, coordinator) = binaries();
    let cfg = tmp.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).expect("config");
    let out = std::process::Command::new(coordinator)
        .arg("run")
        .arg(&cfg)
        .arg("--output-dir")
        .arg(tmp.join("runs"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (results_dir(&stdout), stdout.into_owned())
}

/// The instant a stream's load entered `phase`.
pub fn phase_at(contents: &multitenant::events::StreamContents, phase: Phase) -> u64 {
    contents
        .events
        .iter()
        .find_map(|line| match &line.event {
            Event::Phase(p) if p.phase == phase => Some(p.at_ns),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {phase:?} phase in the stream"))
}

/// Tenant `name` of trial `trial` in `summary`.
pub fn tenant_in(
    summary: &multitenant::analysis::Summary,
    trial: &str,
    name: &str,
) -> multitenant::analysis::TenantSummary {
    summary
        .trials()
        .find(|(_, t)| t.trial == trial)
        .and_then(|(_, t)| t.tenants.iter().find(|x| x.tenant == name))
        .cloned()
        .unwrap_or_else(|| panic!("{trial}/{name} in the summary"))
}

/// The share of a tenant's prompt tokens its engine served from its prefix cache.
pub fn prefix_hit_rate(t: &multitenant::analysis::TenantSummary) -> f64 {
    t.server
        .as_ref()
        .and_then(|s| s.prefix_cache_hit_rate)
        .unwrap_or_else(|| panic!("{}: no prefix cache hit rate: {:?}", t.tenant, t.server))
}

/// Copies every file under `from` to the same place under `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    for file in files_under(from) {
        let target = to.join(&file);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from.join(&file), target).expect("copy");
    }
}

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
