//! Helpers for tests that run engine processes through an in-process agent, with the stand-in
//! `vllm` of tests/fixtures/fake-vllm.sh.

use std::path::{Path, PathBuf};
use std::time::Duration;

use multitenant::events::{read_stream, EngineState, Event, TrialState};
use multitenant::proto::v1::agent_client::AgentClient;
use multitenant::proto::v1::{GetRunRequest, RunStatus, StartRunRequest};
use std::process::Stdio;

use multitenant::auth::TOKEN_ENV;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::{binaries, test_token, InProcessAgent};

/// One fake-vllm tenant of [`config`].
pub struct FakeTenant<'a> {
    /// Tenant name (also its served model name).
    pub name: &'a str,
    /// Model, which picks the stand-in's behaviour (`ok`, `never-healthy`, `crash-after-N`,
    /// `no-mps-client`).
    pub model: &'a str,
    /// Extra YAML keys of the tenant, e.g. `mps_thread_percentage: 60, ` (with a trailing
    /// comma and space), or "".
    pub tenant_keys: &'a str,
    /// Items of `engine.args`, e.g. `"--bogus"`, or "".
    pub args: &'a str,
}

impl<'a> FakeTenant<'a> {
    /// A tenant with no extra keys or args.
    pub fn new(name: &'a str, model: &'a str) -> Self {
        Self {
            name,
            model,
            tenant_keys: "",
            args: "",
        }
    }

    /// The same tenant with extra tenant keys.
    pub fn keys(self, tenant_keys: &'a str) -> Self {
        Self {
            tenant_keys,
            ..self
        }
    }

    /// The same tenant with `engine.args` items.
    pub fn args(self, args: &'a str) -> Self {
        Self { args, ..self }
    }
}

fn fake_vllm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-vllm.sh")
}

/// A one-node config (node `n`) of fake-vllm tenants at 20 requests/s; `node_keys` are extra
/// YAML keys of the node, like `mps: {default_active_thread_percentage: 50}`, or "".
pub fn config(tenants: &[FakeTenant<'_>], trials: &str, duration: &str, node_keys: &str) -> String {
    let agent_bin = binaries().0.display().to_string();
    let mut text = format!(
        "name: sup\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 20}}, data: {{prompt_tokens: 8, output_tokens: 8}}, warmup: 0s, duration: {duration}}}\nnodes:\n  - name: n\n    trials: {trials}\n    {node_keys}\n    tenants:\n"
    );
    for t in tenants {
        text.push_str(&format!(
            "      - {{name: {name}, workload: w, {keys}engine: {{kind: vllm, model: {model}, served_model_name: {name}, executable: {exe}, startup_timeout: 3s, kv_cache_memory_bytes: 134217728, args: [{args}], env: {{FAKE_VLLM_AGENT_BIN: {agent_bin}}}}}}}\n",
            name = t.name,
            keys = t.tenant_keys,
            model = t.model,
            args = t.args,
            exe = fake_vllm().display(),
        ));
    }
    text
}

/// Starts run `run_id` of node `n` and waits (at most 90 s) until it is no longer running;
/// returns its final state.
pub async fn run_to_end(agent: &InProcessAgent, run_id: &str, config: &str) -> RunStatus {
    run_to_end_at(&agent.url, run_id, config).await
}

/// Starts run `run_id` of node `n` on the agent at `url`, without waiting for it.
pub async fn start_run_at(url: &str, run_id: &str, config: &str) {
    let mut client = AgentClient::connect(url.to_owned()).await.expect("connect");
    let start = StartRunRequest {
        run_id: run_id.into(),
        config_yaml: config.into(),
        node: "n".into(),
    };
    client
        .start_run(
            test_token()
                .attach(tonic::Request::new(start))
                .expect("attach"),
        )
        .await
        .expect("start");
}

/// [`run_to_end`] on the agent at `url`.
pub async fn run_to_end_at(url: &str, run_id: &str, config: &str) -> RunStatus {
    start_run_at(url, run_id, config).await;
    let mut client = AgentClient::connect(url.to_owned()).await.expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let get = GetRunRequest {
            run_id: run_id.into(),
        };
        let run = client
            .get_run(
                test_token()
                    .attach(tonic::Request::new(get))
                    .expect("attach"),
            )
            .await
            .expect("get")
            .into_inner();
        if run.status() != RunStatus::Running {
            return run.status();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run_id} did not end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The real `agent serve` binary, on a free loopback port, in a process of its own.
pub struct AgentProcess {
    /// The process (killed when dropped).
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl AgentProcess {
    /// Starts one writing into `data_dir`, with `path_first` put in front of its PATH.
    pub async fn spawn(data_dir: &Path, path_first: Option<&Path>) -> Self {
        Self::spawn_with(data_dir, path_first, &[]).await
    }

    /// [`AgentProcess::spawn`] with `extra` arguments of `agent serve`.
    pub async fn spawn_with(data_dir: &Path, path_first: Option<&Path>, extra: &[&str]) -> Self {
        Self::spawn_limited(data_dir, path_first, extra, None).await
    }

    /// [`AgentProcess::spawn_with`], its open-file limit (soft and hard) set to `fd_limit`.
    pub async fn spawn_limited(
        data_dir: &Path,
        path_first: Option<&Path>,
        extra: &[&str],
        fd_limit: Option<u64>,
    ) -> Self {
        // The limit is set by the shell the agent is exec'd from (soft and hard, as `ulimit -n`
        // sets both), so the agent cannot raise it.
        let command = match fd_limit {
            Some(limit) => {
                let mut sh = tokio::process::Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(&binaries().0);
                sh
            }
            None => tokio::process::Command::new(&binaries().0),
        };
        Self::launch(command, data_dir, path_first, extra).await
    }

    /// Starts one inside the network namespace `netns`, on that namespace's loopback (its url
    /// is reachable only from inside).
    pub async fn spawn_in_netns(data_dir: &Path, netns: &str) -> Self {
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", netns]).arg(&binaries().0);
        Self::launch(command, data_dir, None, &[]).await
    }

    /// `command` (the agent binary, or what execs it) with `serve` and its arguments, until it
    /// says where it listens.
    async fn launch(
        mut command: tokio::process::Command,
        data_dir: &Path,
        path_first: Option<&Path>,
        extra: &[&str],
    ) -> Self {
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            // Never the host's own nvidia-smi: a test must not change a real GPU's mode.
            .args(["--nvidia-smi", "no-nvidia-smi-in-tests"])
            .args(extra)
            .env(TOKEN_ENV, test_token().expose())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = path_first {
            command.env(
                "PATH",
                format!(
                    "{}:{}",
                    dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        }
        let mut child = command.spawn().expect("spawn agent");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let first = lines.next_line().await.expect("read").expect("a line");
        let addr = first.strip_prefix("listening on ").expect("address line");
        Self {
            url: format!("http://{addr}"),
            child,
        }
    }

    /// Sends `signal` to the agent and reaps it.
    pub async fn signal_and_reap(mut self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id().expect("pid")).expect("pid"));
        kill(pid, signal).expect("signal the agent");
        self.child.wait().await.expect("reap the agent");
    }
}

/// `(tenant, state, detail)` of each engine event of a trial.
pub type EngineEvents = Vec<(String, EngineState, String)>;

/// The engine events of a trial's agent stream, and the trial's final state and reason.
pub fn engine_story(path: &Path) -> (EngineEvents, Option<(TrialState, Option<String>)>) {
    let stream = read_stream(path).expect("agent stream");
    let mut engines = Vec::new();
    let mut end = None;
    for line in stream.events {
        match line.event {
            Event::Engine(e) => engines.push((e.tenant, e.state, e.detail)),
            Event::Trial(t) if t.state != TrialState::Started => end = Some((t.state, t.reason)),
            _ => {}
        }
    }
    (engines, end)
}

/// The process groups named in `Ready` engine events.
pub fn process_groups(story: &[(String, EngineState, String)]) -> Vec<i32> {
    story
        .iter()
        .filter_map(|(_, _, detail)| {
            detail
                .split("(process group ")
                .nth(1)?
                .trim_end_matches(')')
                .parse()
                .ok()
        })
        .collect()
}

/// How many live processes run exactly `argv`.
pub fn processes_running(argv: &[&str]) -> usize {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted))
        .count()
}

/// Whether no process of group `pgid` is left.
pub fn group_gone(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_err()
}
