//! The SkyPilot launcher: one cluster per node through the `sky` CLI (SkyPilot 0.14).
//!
//! For each node a task YAML is written into `<experiment>/skypilot/<node>.yaml`: the node's
//! accelerators and the launcher's infra, spot, disk and image; the agent's port under
//! `resources.ports`; autostop-and-down after the idle minutes as a safety net; the agent
//! binary of this machine and the config's data files as file mounts; `setup` installs the
//! engine; `run` starts `agent serve --tls` in the foreground, so the job lives as long as the
//! agent. The token and the TLS material are `secrets:` whose values travel in the environment
//! of the `sky launch` process (`--secret NAME`), never in `envs`, a file or a command line.
//!
//! Every cluster is written to `<experiment>/clusters.json` before its launch starts, and its
//! state after each step, so a teardown that this process could not finish can be finished
//! by `coordinator down <experiment>`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use multitenant::auth::TOKEN_ENV;
use multitenant::config::{Engine, Experiment, Node, SkyPilotSettings};
use multitenant::tls::{CERT_ENV, CLIENT_CA_ENV, KEY_ENV};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

/// Where the agent binary goes on a node (the job runs from the home folder).
const REMOTE_AGENT: &str = ".multitenant/bin/agent";
/// Where data files go on a node.
const REMOTE_FILES: &str = ".multitenant/files";
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

/// The data files the config names (datasets, tokenizers), each with its name on a node.
pub fn data_files(experiment: &Experiment) -> Vec<(PathBuf, String)> {
    let mut files: Vec<PathBuf> = Vec::new();
    for w in experiment.workloads.values() {
        if let multitenant::config::DataSource::Dataset(d) = &w.data {
            files.push(d.path.clone());
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
    agent_binary: &'a Path,
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
        agent_binary,
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
    mounts.insert(
        format!("~/{REMOTE_AGENT}").into(),
        agent_binary.display().to_string().into(),
    );
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
    let mut setup = String::from("set -e\n");
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
    let run = format!(
        "set -e\ncd ~\nchmod +x {REMOTE_AGENT}\nexec ./{REMOTE_AGENT} serve --listen 0.0.0.0:{} --tls --data-dir .multitenant/data{idle_exit}\n",
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

/// Writes the task file of every node into `dir/skypilot/`.
pub fn write_task_files(
    dir: &Path,
    experiment: &Experiment,
    settings: &SkyPilotSettings,
    run_tag: &str,
    agent_binary: &Path,
) -> anyhow::Result<Vec<TaskFile>> {
    let task_dir = dir.join(multitenant::layout::SKYPILOT_DIR);
    std::fs::create_dir_all(&task_dir)
        .with_context(|| format!("creating {}", task_dir.display()))?;
    let files = data_files(experiment);
    let common = TaskCommon {
        settings,
        agent_binary,
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

    async fn output(&self, args: &[&str], env: &[(String, String)]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(&self.program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running sky {}", args.join(" ")))?;
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

    /// `sky check`: refuses when no cloud or Kubernetes is enabled.
    pub async fn check(&self) -> anyhow::Result<()> {
        let text = self.output(&["check"], &[]).await?;
        if text.contains("No infra to check/enabled") || text.contains("No cloud is enabled") {
            bail!("SkyPilot has no cloud or Kubernetes enabled (`sky check` says so); set up credentials for one, then run `sky check` again");
        }
        Ok(())
    }

    /// `sky launch -c <cluster> <task> -y -d --secret NAME…`, with the secrets' values in
    /// the launch's environment; the output goes to `log`.
    pub async fn launch(
        &self,
        task: &TaskFile,
        secret_values: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<()> {
        let path = task.path.display().to_string();
        let mut args = vec!["launch", "-c", &task.cluster, &path, "-y", "-d"];
        for name in &task.secrets {
            args.push("--secret");
            args.push(name);
        }
        let result = self.output(&args, secret_values).await;
        let text = match &result {
            Ok(t) => t.clone(),
            Err(e) => format!("{e:#}"),
        };
        let _ = std::fs::write(log, text);
        result.map(|_| ())
    }

    /// `sky status --endpoint <port> <cluster>`: the agent's `host:port`.
    pub async fn endpoint(&self, cluster: &str, port: u16) -> anyhow::Result<String> {
        let port = port.to_string();
        let text = self
            .output(&["status", "--endpoint", &port, cluster], &[])
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
        self.output(&["down", "-y", cluster], &[]).await.map(|_| ())
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
            eprintln!("cannot record cluster {cluster} as {state:?}: {e:#}");
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
                eprintln!(
                    "node {}: sky down -y {} (attempt {attempt})",
                    r.node, r.cluster
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
