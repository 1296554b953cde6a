//! The SkyPilot launcher: one cluster per node through the `sky` CLI (SkyPilot 0.14).
//!
//! For each node a task YAML is written into `<experiment>/skypilot/<node>.yaml`: the node's
//! accelerators and the launcher's infra, spot, disk and image; the agent's port under
//! `resources.ports`; autostop-and-down after the idle minutes as a safety net; what installs
//! the agent (its source, by default, see [`install`]) and the config's data files as file
//! mounts; `setup` installs the agent, then the engine; `run` starts `agent serve --tls` in the
//! foreground, so the job lives as long as the agent. The token and the TLS material are `secrets:` whose values travel in the environment
//! of the `sky launch` process (`--secret NAME`), never in `envs`, a file or a command line.
//!
//! Every cluster is written to `<experiment>/clusters.json` before its launch starts, and its
//! state after each step, so a teardown that this process could not finish can be finished
//! by `coordinator down <experiment>`.

pub mod install;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::console::say;
use anyhow::{bail, Context};
use multitenant::auth::TOKEN_ENV;
use multitenant::config::{Engine, Experiment, Node, Platform, SkyPilotSettings, NODE_VLLM_VENV};
use multitenant::tls::{CERT_ENV, CLIENT_CA_ENV, KEY_ENV};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

/// The agent the task's `setup` leaves on a node (the job runs from the home folder).
const REMOTE_AGENT: &str = ".multitenant/bin/agent";
/// Where data files go on a node.
const REMOTE_FILES: &str = ".multitenant/files";
/// The oldest SkyPilot the launcher works with (the version its task files are checked
/// against is 0.14.1).
const MIN_SKYPILOT: (u32, u32) = (0, 14);
/// Lines of a launch's output kept in memory to say why it failed (all go to its log).
const KEPT_LAUNCH_LINES: usize = 2000;
/// Tries of `sky down` per cluster before it is reported as still up.
const DOWN_ATTEMPTS: u32 = 3;

/// A task file written for one node.
#[derive(Debug, Clone)]
pub struct TaskFile {
    /// The node.
    pub node: String,
    /// Its cluster name.
    pub cluster: String,
    /// The YAML file.
    pub path: PathBuf,
    /// Secrets the launch passes (`--secret NAME`), values from the launch's environment.
    pub secrets: Vec<String>,
}

/// The cluster name of `node` in run `run_tag`: `<prefix>-<node>-<tag>`, lowercase, with
/// characters SkyPilot refuses turned into '-'.
pub fn cluster_name(settings: &SkyPilotSettings, node: &str, run_tag: &str) -> String {
    let node: String = node
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let node: String = node.chars().take(20).collect();
    format!(
        "{}-{}-{run_tag}",
        settings.cluster_prefix,
        node.trim_matches('-')
    )
}

/// The data files the config names (datasets, traces, tokenizers), each with its name on a
/// node.
pub fn data_files(experiment: &Experiment) -> Vec<(PathBuf, String)> {
    let mut files: Vec<PathBuf> = Vec::new();
    for w in experiment.workloads.values() {
        match &w.data {
            multitenant::config::DataSource::Dataset(d) => files.push(d.path.clone()),
            multitenant::config::DataSource::Trace(t) => files.push(t.path.clone()),
            multitenant::config::DataSource::Synthetic(_)
            | multitenant::config::DataSource::Conversation(_) => {}
        }
        files.extend(w.tokenizer.clone());
    }
    files.sort();
    files.dedup();
    files
        .into_iter()
        .enumerate()
        .map(|(i, local)| {
            let name = local
                .file_name()
                .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
            (local, format!("{REMOTE_FILES}/{i}-{name}"))
        })
        .collect()
}

/// The config text a SkyPilot node gets: its data file paths point at the copies mounted on
/// the node (relative to the home folder, where the agent runs).
pub fn node_config(sent_config: &str, files: &[(PathBuf, String)]) -> anyhow::Result<String> {
    Ok(Experiment::map_file_paths(sent_config, |path| {
        files
            .iter()
            .find(|(local, _)| local == Path::new(path))
            .map_or_else(|| path.to_owned(), |(_, remote)| remote.clone())
    })?)
}

/// What every node's task of one experiment shares.
struct TaskCommon<'a> {
    settings: &'a SkyPilotSettings,
    upload: &'a install::AgentUpload,
    files: &'a [(PathBuf, String)],
    /// The experiment's `launcher.lease`: the agent exits once idle for as long.
    lease: Duration,
    /// `launcher.keep`: the agent stays up for the next experiment.
    keep: bool,
}

/// The task YAML of one node, and the secrets its launch must pass.
fn task(node: &Node, cluster: &str, common: &TaskCommon<'_>) -> (Value, Vec<String>) {
    let TaskCommon {
        settings,
        upload,
        files,
        lease,
        keep,
    } = common;
    let mut resources = Mapping::new();
    if let Some(acc) = &node.accelerators {
        resources.insert("accelerators".into(), acc.clone().into());
    }
    if let Some(infra) = &settings.infra {
        resources.insert("infra".into(), infra.clone().into());
    }
    resources.insert("use_spot".into(), settings.use_spot.into());
    if let Some(disk) = settings.disk_size {
        resources.insert("disk_size".into(), disk.into());
    }
    if let Some(image) = &settings.image_id {
        resources.insert("image_id".into(), image.clone().into());
    }
    resources.insert("ports".into(), u64::from(settings.agent_port).into());
    let mut autostop = Mapping::new();
    autostop.insert(
        "idle_minutes".into(),
        u64::from(settings.idle_minutes_to_autostop).into(),
    );
    autostop.insert("down".into(), true.into());
    resources.insert("autostop".into(), autostop.into());

    let mut mounts = Mapping::new();
    for (remote, local) in &upload.mounts {
        mounts.insert(
            format!("~/{remote}").into(),
            local.display().to_string().into(),
        );
    }
    for (local, remote) in files.iter() {
        mounts.insert(
            format!("~/{remote}").into(),
            local.display().to_string().into(),
        );
    }

    let mut secrets: Vec<String> = vec![
        TOKEN_ENV.into(),
        CERT_ENV.into(),
        KEY_ENV.into(),
        CLIENT_CA_ENV.into(),
    ];
    for tenant in &node.tenants {
        if let Engine::Vllm(v) = &tenant.engine {
            secrets.extend(v.env_from.iter().cloned());
        }
    }
    secrets.sort();
    secrets.dedup();
    let mut secret_map = Mapping::new();
    for name in &secrets {
        secret_map.insert(name.clone().into(), Value::Null);
    }

    let has_vllm = node
        .tenants
        .iter()
        .any(|t| matches!(t.engine, Engine::Vllm(_)));
    // The setup needs none of the agent's secrets (SkyPilot gives them to setup too): the
    // toolchain, the crates' build scripts and pip never see them.
    let mut setup = format!("set -e\nunset {TOKEN_ENV} {CERT_ENV} {KEY_ENV} {CLIENT_CA_ENV}\n");
    setup.push_str(&upload.setup);
    if has_vllm {
        setup.push_str(&settings.engine_setup);
        setup.push('\n');
    }
    // The agent exits once idle for a lease after its runs (or for the autostop minutes
    // before its first, while slower nodes come up), ending the job: the cluster then goes
    // idle and autostop takes it down even when no coordinator is left to do it. A kept
    // cluster keeps its agent.
    let idle_exit = if *keep {
        String::new()
    } else {
        format!(
            " --exit-when-idle {}s --first-run-within {}m",
            lease.as_secs(),
            settings.idle_minutes_to_autostop
        )
    };
    // The default engine set-up's vLLM comes first on the agent's PATH (a missing folder
    // changes nothing).
    let run = format!(
        "set -e\ncd ~\nexport PATH=\"$HOME/{NODE_VLLM_VENV}/bin:$PATH\"\nexec ./{REMOTE_AGENT} serve --listen 0.0.0.0:{} --tls --data-dir .multitenant/data{idle_exit}\n",
        settings.agent_port,
    );

    let mut doc = Mapping::new();
    doc.insert("name".into(), cluster.into());
    doc.insert("resources".into(), resources.into());
    doc.insert("file_mounts".into(), mounts.into());
    doc.insert("secrets".into(), secret_map.into());
    doc.insert("setup".into(), setup.into());
    doc.insert("run".into(), run.into());
    (Value::Mapping(doc), secrets)
}

/// Writes the task file of every node into `dir/skypilot/`, with what installs the agent
/// (`agent_binary` finds this machine's agent, for `agent_install: binary`).
pub fn write_task_files(
    dir: &Path,
    experiment: &Experiment,
    settings: &SkyPilotSettings,
    run_tag: &str,
    agent_binary: impl FnOnce() -> anyhow::Result<PathBuf>,
) -> anyhow::Result<Vec<TaskFile>> {
    let task_dir = dir.join(multitenant::layout::SKYPILOT_DIR);
    std::fs::create_dir_all(&task_dir)
        .with_context(|| format!("creating {}", task_dir.display()))?;
    let upload = install::prepare(
        &settings.agent_install,
        &Platform::this_machine(),
        &settings.node_platform,
        &task_dir,
        agent_binary,
    )?;
    let files = data_files(experiment);
    let common = TaskCommon {
        settings,
        upload: &upload,
        files: &files,
        lease: experiment.launcher.lease,
        keep: experiment.launcher.keep,
    };
    let mut out = Vec::new();
    for node in &experiment.nodes {
        let cluster = cluster_name(settings, &node.name, run_tag);
        let (doc, secrets) = task(node, &cluster, &common);
        let path = task_dir.join(format!("{}.yaml", node.name));
        let text = format!(
            "# SkyPilot task for node {} of experiment {} (written by the multitenant coordinator)\n{}",
            node.name,
            experiment.name,
            serde_yaml::to_string(&doc)?
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        out.push(TaskFile {
            node: node.name.clone(),
            cluster,
            path,
            secrets,
        });
    }
    Ok(out)
}

/// The `sky` command line.
#[derive(Debug, Clone)]
pub struct Sky {
    program: PathBuf,
}

impl Sky {
    /// `sky` from PATH, or a clear error.
    pub fn find() -> anyhow::Result<Self> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("sky"))
            .find(|p| p.is_file())
            .map(|program| Self { program })
            .context("the skypilot launcher needs the `sky` command on PATH: pip install \"skypilot[<your cloud>]\" (SkyPilot 0.14), then `sky check`")
    }

    /// Runs `sky <args>` to its end (killed if the caller gives up on it).
    async fn run(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        tokio::process::Command::new(&self.program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running sky {}", args.join(" ")))
    }

    async fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args).await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "`sky {}` failed ({}): {}",
                args.join(" "),
                out.status,
                tail.join(" | ")
            );
        }
        Ok(text)
    }

    /// `sky --version` and `sky status --help`: refuses a SkyPilot older than
    /// 0.14 (task `secrets:`, `--secret`, `resources.infra`) or one whose
    /// `sky status` cannot print an endpoint (how the agent is found).
    pub async fn check_version(&self) -> anyhow::Result<()> {
        let text = self.output(&["--version"]).await?;
        let version = text
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)
            .with_context(|| format!("`sky --version` printed {:?}, not a version", text.trim()))?;
        let mut numbers = version
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .split(|c: char| !c.is_ascii_digit())
            .map(str::parse::<u32>);
        let (Some(Ok(major)), Some(Ok(minor))) = (numbers.next(), numbers.next()) else {
            say!("warning: cannot read a version in `sky --version` ({}); going on as if it were {}.{} or newer", text.trim(), MIN_SKYPILOT.0, MIN_SKYPILOT.1);
            return Ok(());
        };
        if (major, minor) < MIN_SKYPILOT {
            bail!(
                "SkyPilot {version} is too old: the skypilot launcher needs {}.{} or newer (task secrets, `sky launch --secret`, `sky status --endpoint`); pip install -U \"skypilot[<your cloud>]>={}.{}\"",
                MIN_SKYPILOT.0, MIN_SKYPILOT.1, MIN_SKYPILOT.0, MIN_SKYPILOT.1
            );
        }
        let help = self.output(&["status", "--help"]).await?;
        if !help.contains("--endpoint") {
            bail!("this `sky` ({version}) has no `sky status --endpoint`, which finds each node's agent: install SkyPilot {}.{} or newer", MIN_SKYPILOT.0, MIN_SKYPILOT.1);
        }
        Ok(())
    }

    /// `sky check`: refuses when no cloud or Kubernetes is enabled.
    pub async fn check(&self) -> anyhow::Result<()> {
        let text = self.output(&["check"]).await?;
        if text.contains("No infra to check/enabled") || text.contains("No cloud is enabled") {
            bail!("SkyPilot has no cloud or Kubernetes enabled (`sky check` says so); set up credentials for one, then run `sky check` again");
        }
        Ok(())
    }

    /// `sky launch -c <cluster> <task> -y -d --secret NAME…`, with the secrets' values in
    /// the launch's environment: provisions the cluster, copies the file mounts and submits the
    /// job, whose setup (the agent's install, the engine's) and run (the agent) go on after
    /// it returns (SkyPilot 0.14 runs a cluster's setup inside its job). Its output goes to
    /// `log` as it comes, and each line to `on_line`. Returns the job's id.
    pub async fn launch(
        &self,
        task: &TaskFile,
        secret_values: &[(String, String)],
        log: &Path,
        mut on_line: impl FnMut(&str),
    ) -> anyhow::Result<u32> {
        use tokio::io::{AsyncWriteExt, BufReader};

        let path = task.path.display().to_string();
        let mut args = vec!["launch", "-c", &task.cluster, &path, "-y", "-d"];
        for name in &task.secrets {
            args.push("--secret");
            args.push(name);
        }
        let mut child = tokio::process::Command::new(&self.program)
            .args(&args)
            .envs(secret_values.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running sky {}", args.join(" ")))?;
        let mut log_file = tokio::fs::File::create(log)
            .await
            .with_context(|| format!("creating {}", log.display()))?;
        // Both pipes, line by line, in the order they come.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let stdout = child.stdout.take().context("sky's stdout")?;
        let stderr = child.stderr.take().context("sky's stderr")?;
        tokio::spawn(forward_lines(BufReader::new(stdout), tx.clone()));
        tokio::spawn(forward_lines(BufReader::new(stderr), tx));
        let mut lines: Vec<String> = Vec::new();
        while let Some(line) = rx.recv().await {
            on_line(&line);
            // The log is a record, not the launch: a full disk must not stop it.
            let _ = log_file.write_all(format!("{line}\n").as_bytes()).await;
            if lines.len() == KEPT_LAUNCH_LINES {
                lines.drain(..KEPT_LAUNCH_LINES / 2);
            }
            lines.push(line);
        }
        let _ = log_file.flush().await;
        let status = child.wait().await.context("waiting for sky launch")?;
        if status.success() {
            let job = lines
                .iter()
                .rev()
                .find_map(|l| {
                    let (_, id) = l.split_once("Job submitted, ID: ")?;
                    id.trim().parse().ok()
                })
                .unwrap_or(1);
            return Ok(job);
        }
        bail!(
            "`sky launch -c {}` failed ({status}): {}",
            task.cluster,
            launch_failure(&lines)
        )
    }

    /// `sky logs <cluster> <job> --no-follow`: the job's output so far (its setup's lines
    /// marked `(setup pid=…)`), without SkyPilot's own lines about the tailing. `sky logs`
    /// exits with the job's end as its code (100 failed, 101 not finished, 103 cancelled):
    /// those still carry the log.
    pub async fn job_log(&self, cluster: &str, job: u32) -> anyhow::Result<String> {
        let job = job.to_string();
        let args = ["logs", cluster, job.as_str(), "--no-follow"];
        let out = self.run(&args).await?;
        if !matches!(out.status.code(), Some(0 | 100 | 101 | 103)) {
            bail!(
                "`sky {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !is_tailing_chatter(l))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// `sky queue <cluster>`: the state of job `job`, when the queue lists it.
    pub async fn job_state(&self, cluster: &str, job: u32) -> anyhow::Result<Option<JobState>> {
        let text = self.output(&["queue", cluster]).await?;
        let id = job.to_string();
        Ok(text
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(id.as_str()))
            .find_map(|l| l.split_whitespace().find_map(JobState::parse)))
    }

    /// `sky status --endpoint <port> <cluster>`: the agent's `host:port`.
    pub async fn endpoint(&self, cluster: &str, port: u16) -> anyhow::Result<String> {
        let port = port.to_string();
        let text = self
            .output(&["status", "--endpoint", &port, cluster])
            .await?;
        let line = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .context("`sky status --endpoint` printed nothing")?;
        let address = line
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        if !address.contains(':') || address.contains(' ') {
            bail!("`sky status --endpoint {port} {cluster}` printed {line:?}, not host:port");
        }
        Ok(address.to_owned())
    }

    /// `sky down -y <cluster>`.
    pub async fn down(&self, cluster: &str) -> anyhow::Result<()> {
        self.output(&["down", "-y", cluster]).await.map(|_| ())
    }
}

/// Sends every line of `reader` (lossy UTF-8) until its end.
async fn forward_lines(
    reader: impl tokio::io::AsyncBufRead + Unpin,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = reader;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                if tx
                    .send(line.trim_end_matches(['\n', '\r']).to_owned())
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Where a SkyPilot job is, as `sky queue` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for the cluster's resources, or being set up.
    Starting,
    /// Its run (the agent) runs.
    Running,
    /// It ended: its setup failed, its run failed or exited, or it was cancelled.
    Ended(&'static str),
}

impl JobState {
    /// The state a `sky queue` word names.
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "INIT" | "PENDING" | "SETTING_UP" => Self::Starting,
            "RUNNING" => Self::Running,
            "FAILED_SETUP" => Self::Ended("its setup failed"),
            "FAILED" | "FAILED_DRIVER" => Self::Ended("its run failed"),
            "SUCCEEDED" => Self::Ended("its run (the agent) exited"),
            "CANCELLED" => Self::Ended("it was cancelled"),
            _ => return None,
        })
    }
}

/// A line of a job's log as its task printed it: SkyPilot's `(setup pid=…) ` or
/// `(task, pid=…) ` mark and terminal colour codes taken off.
pub fn job_line(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    let trimmed = plain.trim_start();
    if trimmed.starts_with('(') && trimmed.contains("pid=") {
        if let Some((_, rest)) = trimmed.split_once(") ") {
            return rest.to_owned();
        }
    }
    plain
}

/// Whether a line of `sky logs` is SkyPilot's about the tailing itself, not the job's.
fn is_tailing_chatter(line: &str) -> bool {
    let line = job_line(line);
    let line = line.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    [
        "INFO: Waiting",
        "ERROR: Logs for",
        "Tailing logs",
        "Job finished (status",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

/// The marker `install-agent.sh` prints before the tail of a failed agent build.
const BUILD_FAILED: &str = "multitenant: setup: the agent build failed";

/// Why a launch or a job failed, from its output (job lines as [`job_line`] gives them): from
/// the setup's word that the agent build failed to the end of what it printed (the build log's
/// last 40 lines), or else the output's last five lines.
pub fn launch_failure(lines: &[String]) -> String {
    if let Some(at) = lines.iter().rposition(|l| l.contains(BUILD_FAILED)) {
        let tail: Vec<&str> = lines[at..]
            .iter()
            .map(String::as_str)
            .filter(|l| !l.starts_with("sky.exceptions."))
            .collect();
        return format!(
            "the agent build failed on the node:\n    {}",
            tail.join("\n    ")
        );
    }
    let tail: Vec<&str> = lines.iter().rev().take(5).map(String::as_str).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    tail.join(" | ")
}

/// Where a node's launch is, as `sky launch`'s output tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchStep {
    /// Finding and starting a machine.
    Provisioning,
    /// The setup is building the agent from source.
    BuildingAgent,
    /// The setup is downloading or copying the agent binary.
    InstallingAgent,
    /// The setup is installing vLLM.
    InstallingVllm,
    /// The agent is installed; the engine's setup (if any), then the agent, come next.
    AgentInstalled,
}

impl LaunchStep {
    /// The step a line of `sky launch` output starts, if it starts one.
    pub fn from_line(line: &str) -> Option<Self> {
        let setup = line
            .find("multitenant: setup: ")
            .map(|at| &line[at + "multitenant: setup: ".len()..]);
        match setup {
            Some(s) if s.starts_with("building the agent") => Some(Self::BuildingAgent),
            Some(s)
                if s.starts_with("downloading the agent")
                    || s.starts_with("installing the agent") =>
            {
                Some(Self::InstallingAgent)
            }
            Some(s) if s.starts_with("installing vLLM") => Some(Self::InstallingVllm),
            Some(s) if s.starts_with("agent ready") => Some(Self::AgentInstalled),
            _ => None,
        }
    }

    /// The step in words, for the progress lines.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::BuildingAgent => "setup: building the agent",
            Self::InstallingAgent => "setup: installing the agent",
            Self::InstallingVllm => "setup: installing vLLM",
            Self::AgentInstalled => "setup: agent installed",
        }
    }
}

/// Where a cluster is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// `sky launch` started.
    Launching,
    /// Launched and its agent's address known.
    Up,
    /// The launch failed; the cluster may exist in part.
    LaunchFailed,
    /// `sky down` succeeded.
    Down,
    /// `sky down` failed every time: the cluster may still be running.
    DownFailed,
    /// Left up on purpose (`launcher.keep`).
    Kept,
}

/// One cluster of the experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Node it serves.
    pub node: String,
    /// Cluster name.
    pub cluster: String,
    /// State.
    pub state: ClusterState,
    /// What happened last, in words.
    #[serde(default)]
    pub detail: String,
}

/// `clusters.json`: every cluster this experiment launched, rewritten at each change.
pub struct Ledger {
    path: PathBuf,
    records: Mutex<Vec<ClusterRecord>>,
}

/// The ledger of the experiment running in this process, for a second Ctrl-C to report.
static CURRENT: OnceLock<PathBuf> = OnceLock::new();

impl Ledger {
    /// A new, empty ledger at `dir/clusters.json`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let ledger = Self {
            path: dir.join(multitenant::layout::CLUSTERS_FILE),
            records: Mutex::new(Vec::new()),
        };
        ledger.save()?;
        let _ = CURRENT.set(ledger.path.clone());
        Ok(ledger)
    }

    /// The ledger of an earlier experiment.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(multitenant::layout::CLUSTERS_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} has no clusters.json: nothing was launched through SkyPilot there",
                dir.display()
            )
        })?;
        let records: Vec<ClusterRecord> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cluster record", path.display()))?;
        Ok(Self {
            path,
            records: Mutex::new(records),
        })
    }

    /// Records `state` of `cluster` (adding it if new) and writes the file.
    pub fn set(&self, node: &str, cluster: &str, state: ClusterState, detail: impl Into<String>) {
        {
            let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let detail = detail.into();
            match records.iter_mut().find(|r| r.cluster == cluster) {
                Some(r) => {
                    r.state = state;
                    r.detail = detail;
                }
                None => records.push(ClusterRecord {
                    node: node.to_owned(),
                    cluster: cluster.to_owned(),
                    state,
                    detail,
                }),
            }
        }
        if let Err(e) = self.save() {
            say!("cannot record cluster {cluster} as {state:?}: {e:#}");
        }
    }

    /// The records now.
    pub fn records(&self) -> Vec<ClusterRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn save(&self) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(&self.records())?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// Tears down every cluster not yet down (kept ones too with `include_kept`), retrying
    /// each a few times; returns the clusters that may still be running.
    pub async fn tear_down(
        &self,
        sky: &Sky,
        retry_pause: Duration,
        include_kept: bool,
    ) -> Vec<ClusterRecord> {
        let pending: Vec<ClusterRecord> = self
            .records()
            .into_iter()
            .filter(|r| match r.state {
                ClusterState::Down => false,
                ClusterState::Kept => include_kept,
                _ => true,
            })
            .collect();
        let downs = pending.iter().map(|r| async move {
            let mut last = String::new();
            for attempt in 1..=DOWN_ATTEMPTS {
                say!(
                    "node {}: sky down -y {} (attempt {attempt})",
                    r.node,
                    r.cluster
                );
                match sky.down(&r.cluster).await {
                    Ok(()) => {
                        let detail = if attempt == 1 {
                            "torn down".to_owned()
                        } else {
                            format!("torn down at attempt {attempt} (before: {last})")
                        };
                        self.set(&r.node, &r.cluster, ClusterState::Down, detail);
                        return;
                    }
                    Err(e) => {
                        last = format!("{e:#}");
                        tokio::time::sleep(retry_pause * attempt).await;
                    }
                }
            }
            self.set(
                &r.node,
                &r.cluster,
                ClusterState::DownFailed,
                format!("sky down failed {DOWN_ATTEMPTS} times: {last}"),
            );
        });
        futures_util::future::join_all(downs).await;
        self.records()
            .into_iter()
            .filter(|r| r.state == ClusterState::DownFailed)
            .collect()
    }

    /// Marks every launched cluster as kept on purpose.
    pub fn keep_all(&self) {
        for r in self.records() {
            if matches!(r.state, ClusterState::Up | ClusterState::Launching) {
                self.set(
                    &r.node,
                    &r.cluster,
                    ClusterState::Kept,
                    "kept up: launcher.keep is set",
                );
            }
        }
    }
}

/// What a second Ctrl-C prints: the clusters of this process's experiment not yet down.
pub fn still_up() -> Option<String> {
    let path = CURRENT.get()?;
    let dir = path.parent()?;
    let ledger = Ledger::open(dir).ok()?;
    let up: Vec<String> = ledger
        .records()
        .into_iter()
        .filter(|r| r.state != ClusterState::Down)
        .map(|r| format!("{} ({:?})", r.cluster, r.state))
        .collect();
    Some(if up.is_empty() {
        "no cluster of this experiment is up".into()
    } else {
        format!(
            "still up: {}; teardown is running, or finish it with `coordinator down {}`",
            up.join(", "),
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_lines_lose_skypilots_marks_and_colours() {
        assert_eq!(
            job_line("(setup pid=4182) multitenant: setup: building the agent"),
            "multitenant: setup: building the agent"
        );
        assert_eq!(
            job_line("\u{1b}[36m(task, pid=77)\u{1b}[0m listening on 0.0.0.0:7777"),
            "listening on 0.0.0.0:7777"
        );
        assert_eq!(
            job_line("listening on 1.2.3.4:7777"),
            "listening on 1.2.3.4:7777"
        );
        assert_eq!(job_line("(not a mark) x"), "(not a mark) x");
        assert_eq!(
            LaunchStep::from_line(&job_line(
                "(setup pid=1) multitenant: setup: installing vLLM 0.32.0 into x"
            )),
            Some(LaunchStep::InstallingVllm)
        );
    }

    #[test]
    fn skypilots_own_lines_about_tailing_are_not_the_jobs() {
        for chatter in [
            "INFO: Waiting 1s for the logs to be written...",
            "ERROR: Logs for job 1 (status: INIT) does not exist.",
            "Tailing logs of job 1 on cluster 'mt-a-1'...",
            "\u{1b}[32m✓ Job finished (status: FAILED_SETUP).\u{1b}[0m",
        ] {
            assert!(is_tailing_chatter(chatter), "{chatter}");
        }
        assert!(!is_tailing_chatter(
            "(setup pid=9) multitenant: setup: building the agent"
        ));
    }

    #[test]
    fn queue_words_name_the_job_state() {
        assert_eq!(JobState::parse("SETTING_UP"), Some(JobState::Starting));
        assert_eq!(JobState::parse("RUNNING"), Some(JobState::Running));
        assert_eq!(
            JobState::parse("FAILED_SETUP"),
            Some(JobState::Ended("its setup failed"))
        );
        assert_eq!(JobState::parse("1x[L4:1]"), None);
    }

    #[test]
    fn a_failed_build_is_told_by_its_tail_and_anything_else_by_the_last_lines() {
        let lines: Vec<String> = [
            "multitenant: setup: using cargo 1.95.0",
            "multitenant: setup: the agent build failed; the last 40 lines of x.log on the node:",
            "error[E0463]: can't find crate for `core`",
            "sky.exceptions.CommandError: setup failed",
        ]
        .map(String::from)
        .to_vec();
        let said = launch_failure(&lines);
        assert!(said.starts_with("the agent build failed on the node:\n    multitenant: setup: the agent build failed"), "{said}");
        assert!(
            said.contains("can't find crate") && !said.contains("CommandError"),
            "{said}"
        );
        let other: Vec<String> = (1..=8).map(|i| format!("line {i}")).collect();
        assert_eq!(
            launch_failure(&other),
            "line 4 | line 5 | line 6 | line 7 | line 8"
        );
    }
}
