//! The experiment folder: every path and file name in it, owned here and nowhere else.
//!
//! ```text
//! <experiment>/
//!   config.yaml            the config as given
//!   plan.json              what the coordinator planned ([`Plan`])
//!   summary.json, summary.csv, capacity.csv, summary.<peer>.json, report.html, plots/*.svg
//!   interrupted            present when the run was stopped before its end
//!   ca.pem                 the experiment's CA (TLS launches)
//!   clusters.json          SkyPilot clusters and their states; skypilot/ their task files
//!   .agent/<node>/         a local agent's own data folder; .agent/<node>.log its log
//!   nodes/<node>/<trial>/  one trial's streams, named by [`StreamName`]
//!                          (logs/ and mps/ beside them hold engine and MPS logs)
//! ```
//!
//! Agents write a trial's streams under `<run>/<trial>/` with the same names
//! ([`StreamName::path_in_run`]); the coordinator copies them to `nodes/<node>/` byte for byte.
//! [`TrialDir::streams`] is the one walker every reader of a trial folder uses.

mod plan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use plan::{Plan, PlanNode, PlanTenant, PlanTrial};

use crate::events::{read_stream, Event};

/// The copy of the config.
pub const CONFIG_FILE: &str = "config.yaml";
/// The coordinator's plan.
pub const PLAN_FILE: &str = "plan.json";
/// Locked by the coordinator (`run` or `attach`) that writes into the folder, and naming it.
pub const COORDINATOR_LOCK_FILE: &str = ".coordinator.lock";
/// The summary.
pub const SUMMARY_JSON: &str = "summary.json";
/// One CSV row per tenant and trial.
pub const SUMMARY_CSV: &str = "summary.csv";
/// Present when the experiment was stopped before its end (Ctrl-C, SIGTERM, SIGHUP).
pub const INTERRUPTED_FILE: &str = "interrupted";
/// One CSV row per capacity search and tenant.
pub const CAPACITY_CSV: &str = "capacity.csv";
/// The self-contained report page.
pub const REPORT_HTML: &str = "report.html";
/// Folder of the report's SVG plots.
pub const PLOTS_DIR: &str = "plots";
/// The experiment CA's certificate.
pub const CA_PEM: &str = "ca.pem";
/// SkyPilot's cluster ledger.
pub const CLUSTERS_FILE: &str = "clusters.json";
/// `coordinator export`'s tables, by default.
pub const EXPORT_DIR: &str = "export";
/// SkyPilot's task files and launch logs.
pub const SKYPILOT_DIR: &str = "skypilot";
/// `SHA256SUMS` in an agent's run folder: `<sha256>  <path>` for each stream it closed.
pub const SUMS_FILE: &str = "SHA256SUMS";
/// `.run.json` in an agent's run folder: the run's record (config hash, trials, end state),
/// written at its start and completed at its end, so that a restarted agent serves it again.
pub const RUN_RECORD_FILE: &str = ".run.json";
/// In an agent's run folder while the run lasts: space held back so that a trial's end can be
/// written on a disk its streams filled.
pub const RESERVE_FILE: &str = ".disk-reserve";
/// A node's preflight: `agent doctor`'s checks and the trials its agent would refuse.
pub const DOCTOR_FILE: &str = "doctor.json";
/// A trial's engine logs.
pub const ENGINE_LOGS_DIR: &str = "logs";
/// A trial's MPS daemon logs.
pub const MPS_LOGS_DIR: &str = "mps";

/// One stream of a trial, by what it holds; its file name follows from it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamName {
    /// `agent.jsonl`: the trial's lifecycle, engines, MPS and warnings.
    Agent,
    /// `host.jsonl`: host samples.
    Host,
    /// `gpu.jsonl`: NVML samples (only where NVML works).
    Gpu,
    /// `<tenant>.jsonl`: one tenant's request events.
    Tenant(String),
    /// `<tenant>.engine.jsonl`: scrapes of the tenant's engine's `/metrics`.
    EngineMetrics(String),
    /// `<tenant>.prompts.jsonl`: every prompt the tenant sent, with kept answers.
    Prompts(String),
}

const ENGINE_SUFFIX: &str = ".engine.jsonl";
const PROMPTS_SUFFIX: &str = ".prompts.jsonl";
const JSONL: &str = ".jsonl";

impl StreamName {
    /// The file name in the trial folder.
    pub fn file_name(&self) -> String {
        match self {
            StreamName::Agent => "agent.jsonl".into(),
            StreamName::Host => "host.jsonl".into(),
            StreamName::Gpu => "gpu.jsonl".into(),
            StreamName::Tenant(t) => format!("{t}{JSONL}"),
            StreamName::EngineMetrics(t) => format!("{t}{ENGINE_SUFFIX}"),
            StreamName::Prompts(t) => format!("{t}{PROMPTS_SUFFIX}"),
        }
    }

    /// What a file name in a trial folder holds; `None` for anything that is not a stream.
    /// The suffixes `.engine.jsonl` and `.prompts.jsonl` are tried before a tenant stream.
    pub fn parse(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(JSONL)?;
        Some(match stem {
            "agent" => StreamName::Agent,
            "host" => StreamName::Host,
            "gpu" => StreamName::Gpu,
            _ => {
                if let Some(t) = file_name.strip_suffix(ENGINE_SUFFIX) {
                    StreamName::EngineMetrics(t.to_owned())
                } else if let Some(t) = file_name.strip_suffix(PROMPTS_SUFFIX) {
                    StreamName::Prompts(t.to_owned())
                } else if stem.is_empty() {
                    return None;
                } else {
                    StreamName::Tenant(stem.to_owned())
                }
            }
        })
    }

    /// Its path inside an agent's run folder (and inside `nodes/<node>/`): `<trial>/<file>`.
    pub fn path_in_run(&self, trial: &str) -> String {
        format!("{trial}/{}", self.file_name())
    }

    /// The tenant the stream belongs to, for the per-tenant kinds.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            StreamName::Tenant(t) | StreamName::EngineMetrics(t) | StreamName::Prompts(t) => {
                Some(t)
            }
            StreamName::Agent | StreamName::Host | StreamName::Gpu => None,
        }
    }
}

/// A stream file found in a trial folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialStream {
    /// What it holds.
    pub name: StreamName,
    /// Where it is.
    pub path: PathBuf,
}

/// A folder that could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot list {}: {source}", path.display())]
pub struct ListError {
    /// The folder.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// An experiment folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentDir {
    root: PathBuf,
}

impl ExperimentDir {
    /// The experiment folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file or folder at its top level, by one of this module's names.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `summary.<peer>.json`: the summary under a peer's definitions.
    pub fn peer_summary(&self, peer: &str) -> PathBuf {
        self.root.join(format!("summary.{peer}.json"))
    }

    /// `nodes/`.
    pub fn nodes_dir(&self) -> PathBuf {
        self.root.join("nodes")
    }

    /// Whether it looks like an experiment folder (it has `nodes/`).
    pub fn is_experiment(&self) -> bool {
        self.nodes_dir().is_dir()
    }

    /// The folder of node `name`.
    pub fn node(&self, name: &str) -> NodeDir {
        NodeDir {
            name: name.to_owned(),
            path: self.nodes_dir().join(name),
        }
    }

    /// `.agent/<node>/`: a local agent's data folder.
    pub fn local_agent_data(&self, node: &str) -> PathBuf {
        self.root.join(".agent").join(node)
    }

    /// `.agent/<node>.log`: a local agent's log.
    pub fn local_agent_log(&self, node: &str) -> PathBuf {
        self.root.join(".agent").join(format!("{node}.log"))
    }

    /// Every node folder, in name order.
    pub fn nodes(&self) -> Result<Vec<NodeDir>, ListError> {
        Ok(sorted_dirs(&self.nodes_dir())?
            .into_iter()
            .map(|path| NodeDir {
                name: file_name(&path),
                path,
            })
            .collect())
    }
}

/// One node's folder, `nodes/<node>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDir {
    /// The node.
    pub name: String,
    /// Its folder.
    pub path: PathBuf,
}

impl NodeDir {
    /// The folder of trial `name`.
    pub fn trial(&self, name: &str) -> TrialDir {
        TrialDir {
            name: name.to_owned(),
            path: self.path.join(name),
        }
    }

    /// Its trial folders as they ran: by the first trial event of their agent stream, falling
    /// back to name order.
    pub fn trials_in_run_order(&self) -> Result<Vec<TrialDir>, ListError> {
        let mut keyed: BTreeMap<(u64, String), TrialDir> = BTreeMap::new();
        for path in sorted_dirs(&self.path)? {
            let trial = TrialDir {
                name: file_name(&path),
                path,
            };
            let started = read_stream(&trial.stream(&StreamName::Agent))
                .ok()
                .and_then(|s| {
                    s.events.iter().find_map(|l| match &l.event {
                        Event::Trial(t) => Some(t.at_ns),
                        _ => None,
                    })
                })
                .unwrap_or(u64::MAX);
            keyed.insert((started, trial.name.clone()), trial);
        }
        Ok(keyed.into_values().collect())
    }
}

/// One trial's folder, `nodes/<node>/<trial>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialDir {
    /// The trial.
    pub name: String,
    /// Its folder.
    pub path: PathBuf,
}

impl TrialDir {
    /// Where stream `name` is (whether or not it exists).
    pub fn stream(&self, name: &StreamName) -> PathBuf {
        self.path.join(name.file_name())
    }

    /// Every stream file in the folder, in file-name order; other files and folders are not
    /// streams and are left out.
    pub fn streams(&self) -> Result<Vec<TrialStream>, ListError> {
        Ok(list(&self.path)?
            .into_iter()
            .filter(|p| p.is_file())
            .filter_map(|path| {
                let name = StreamName::parse(&file_name(&path))?;
                Some(TrialStream { name, path })
            })
            .collect())
    }

    /// The tenant request streams only, in name order.
    pub fn tenant_streams(&self) -> Result<Vec<TrialStream>, ListError> {
        Ok(self
            .streams()?
            .into_iter()
            .filter(|s| matches!(s.name, StreamName::Tenant(_)))
            .collect())
    }
}

/// The last component of `path`, as text.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, ListError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ListError {
        path: dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>, ListError> {
    Ok(list(dir)?.into_iter().filter(|p| p.is_dir()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One example of every stream kind. The match has no wildcard arm, so a new kind does not
    /// compile until it is added here, and then the test below checks that the walker sees it.
    fn example_of_every_kind() -> Vec<StreamName> {
        let all = [
            StreamName::Agent,
            StreamName::Host,
            StreamName::Gpu,
            StreamName::Tenant("llama-8b".into()),
            StreamName::EngineMetrics("llama-8b".into()),
            StreamName::Prompts("llama-8b".into()),
        ];
        for name in &all {
            match name {
                StreamName::Agent
                | StreamName::Host
                | StreamName::Gpu
                | StreamName::Tenant(_)
                | StreamName::EngineMetrics(_)
                | StreamName::Prompts(_) => {}
            }
        }
        all.to_vec()
    }

    #[test]
    fn the_walker_sees_every_stream_kind_as_itself_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trial = ExperimentDir::new(dir.path()).node("n").trial("mps");
        std::fs::create_dir_all(trial.path.join(ENGINE_LOGS_DIR)).expect("mkdir");
        std::fs::create_dir_all(trial.path.join(MPS_LOGS_DIR)).expect("mkdir");
        let kinds = example_of_every_kind();
        for kind in &kinds {
            std::fs::write(trial.stream(kind), "").expect("write");
        }
        // Not streams: a log, a stray file, a folder named like a stream.
        std::fs::write(trial.path.join("notes.txt"), "").expect("write");
        std::fs::write(trial.path.join(".jsonl"), "").expect("write");
        std::fs::create_dir_all(trial.path.join("b.jsonl")).expect("mkdir");

        let found: Vec<StreamName> = trial
            .streams()
            .expect("walk")
            .into_iter()
            .map(|s| s.name)
            .collect();
        let mut expected = kinds.clone();
        expected.sort_by_key(StreamName::file_name);
        assert_eq!(found, expected);
        let tenants: Vec<StreamName> = trial
            .tenant_streams()
            .expect("walk")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(tenants, [StreamName::Tenant("llama-8b".into())]);
        for kind in &kinds {
            assert_eq!(StreamName::parse(&kind.file_name()).as_ref(), Some(kind));
        }
    }
}
