//! `coordinator run`: one experiment from config to summary.
//!
//! Validate, make the experiment folder (config copy, plan), bring up one agent per node
//! through a [`Launcher`], start each node's run, copy every stream as it is written, take the
//! nodes down, then analyse the folder — the same function `coordinator analyze` calls, so
//! both print the same numbers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use futures_util::future::join_all;
use multitenant::analysis::{analyze, Analysis, Summary};
use multitenant::config::{configured_rate, Experiment, LauncherKind, Node, OnNodeFailure};
use multitenant::layout::{self, ExperimentDir, Plan, PlanNode, PlanTenant, PlanTrial};
use multitenant::proto::v1::{InfoRequest, RunStatus, StartRunRequest, StopRunRequest};
use tokio_util::sync::CancellationToken;

use crate::agent_client;
use crate::collect::{CollectReport, Collector};
use crate::console::say;
use crate::launch::{AgentEndpoint, Launcher, LocalLauncher, SkyPilotLauncher, StaticLauncher};
use crate::progress::{Progress, View};
use crate::report;

/// How each node's agent is reached.
pub enum Launch {
    /// As the config's `launcher:` says.
    FromConfig,
    /// Spawn `agent serve` on this machine for every node.
    Local,
    /// Agents that already run, one per node, in node order.
    Static(Vec<AgentEndpoint>),
}

/// A finished experiment.
pub struct Outcome {
    /// The experiment folder.
    pub dir: PathBuf,
    /// Its summary.
    pub summary: Summary,
    /// Per node, how collection went.
    pub nodes: Vec<(String, CollectReport)>,
}

/// An experiment that failed in a way a pipeline must tell apart from other failures.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// Clusters may still be running (and billing) after the experiment.
    #[error("{0}")]
    TeardownFailed(String),
}

/// What every node of one experiment shares.
pub struct ExperimentRun<'a> {
    /// The validated experiment.
    pub experiment: &'a Experiment,
    /// Its folder.
    pub dir: &'a Path,
    /// The run id every agent gets.
    pub run_id: &'a str,
    /// The config text agents get.
    pub config: &'a str,
}

/// Runs the experiment in `config_path`. `cancel` (Ctrl-C) asks every agent to stop its run;
/// what was recorded until then is still collected and summarised.
pub async fn run_experiment(
    config_path: &Path,
    output_dir: Option<&Path>,
    launch: Launch,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    let config_text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let experiment = Experiment::load(config_path)?;
    // Agents get the config with its file paths made absolute: they may run elsewhere.
    let config_dir = config_path.parent().unwrap_or(Path::new(""));
    let sent_config = Experiment::with_absolute_paths(&config_text, config_dir)?;
    let base = output_dir.map_or_else(|| experiment.output_dir.clone(), Path::to_path_buf);
    let run_id = format!(
        "{}-{}",
        experiment.name,
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    );
    let dir = base.join(&run_id);
    let folder = ExperimentDir::new(&dir);
    std::fs::create_dir_all(folder.nodes_dir())
        .with_context(|| format!("creating {}", dir.display()))?;
    // Held until the summary is written: an `attach` meanwhile is refused.
    let _lock = crate::folder_lock::FolderLock::take(&dir, "coordinator run")?;
    std::fs::write(folder.file(layout::CONFIG_FILE), &config_text)
        .context("copying the config into the experiment folder")?;
    let run = ExperimentRun {
        experiment: &experiment,
        dir: &dir,
        run_id: &run_id,
        config: &sent_config,
    };
    match (launch, &experiment.launcher.kind) {
        (Launch::Static(endpoints), _) => {
            run_with(run, StaticLauncher::given(endpoints), cancel).await
        }
        (Launch::Local, _) | (Launch::FromConfig, LauncherKind::Local) => {
            run_with(run, LocalLauncher::default(), cancel).await
        }
        (Launch::FromConfig, LauncherKind::Static(agents)) => {
            let launcher = StaticLauncher::from_config(&experiment, agents)?;
            run_with(run, launcher, cancel).await
        }
        (Launch::FromConfig, LauncherKind::SkyPilot(settings)) => {
            let launcher = SkyPilotLauncher::new(settings, experiment.launcher.keep);
            run_with(run, launcher, cancel).await
        }
    }
}

/// The experiment through `launcher`: plan, launch, run every node that came up, tear down
/// whatever happened, analyse.
async fn run_with(
    run: ExperimentRun<'_>,
    mut launcher: impl Launcher,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    write_plan(run.dir, run.experiment, launcher.name())?;
    say!("experiment folder: {}", run.dir.display());
    let launched = match launcher.launch(&run, &cancel).await {
        Ok(launched) => launched,
        Err(e) => {
            // A launch refused midway may have brought something up already.
            report_teardown(&launcher.tear_down().await);
            return Err(e);
        }
    };
    let launch_failures: Vec<String> = run
        .experiment
        .nodes
        .iter()
        .zip(&launched.nodes)
        .filter_map(|(node, a)| a.as_ref().err().map(|r| format!("node {}: {r}", node.name)))
        .collect();
    let stop_now = cancel.is_cancelled()
        || (!launch_failures.is_empty()
            && run.experiment.launcher.on_node_failure == OnNodeFailure::Stop);
    let ran = if stop_now {
        None
    } else {
        let node_run = ExperimentRun {
            config: &launched.config,
            ..run
        };
        Some(run_nodes(&node_run, launched.nodes, &cancel).await)
    };
    // Read before the teardown: a signal during it does not make a complete run interrupted.
    let interrupted = cancel.is_cancelled();
    if interrupted {
        // Recorded in the folder, so a later `analyze --write` keeps it.
        let marker = ExperimentDir::new(run.dir).file(layout::INTERRUPTED_FILE);
        std::fs::write(
            &marker,
            "stopped by Ctrl-C, SIGTERM or SIGHUP before its end\n",
        )
        .with_context(|| format!("writing {}", marker.display()))?;
    }
    let teardown = launcher.tear_down().await;
    report_teardown(&teardown);
    let (nodes, mut failures) = match ran {
        Some(ran) => ran,
        None => (Vec::new(), launch_failures),
    };
    let Analysis {
        mut summary,
        series,
    } = analyze(run.dir).context("analysing the collected streams")?;
    summary.warnings.extend(teardown.notes);
    if interrupted {
        // What an interruption cut (a launch abandoned, a node stopped midway) is its
        // consequence, not another failure: the summary names it, the exit code is 4.
        summary.warnings.append(&mut failures);
    }
    report::write_summary_files(run.dir, &summary, &series)?;
    if !teardown.failures.is_empty() {
        let mut all = failures;
        all.extend(teardown.failures);
        return Err(ExperimentError::TeardownFailed(format!(
            "{}\n(whatever was collected is in {})",
            all.join("\n"),
            run.dir.display()
        ))
        .into());
    }
    if !failures.is_empty() {
        bail!(
            "{}\n(whatever was collected is in {})",
            failures.join("\n"),
            run.dir.display()
        );
    }
    Ok(Outcome {
        dir: run.dir.to_owned(),
        summary,
        nodes,
    })
}

fn report_teardown(teardown: &crate::launch::Teardown) {
    for note in &teardown.notes {
        say!("{note}");
    }
}

/// Runs every node whose agent is reachable, at once; a node that fails is reported with its
/// reason and the others go on.
async fn run_nodes(
    run: &ExperimentRun<'_>,
    agents: Vec<Result<AgentEndpoint, String>>,
    cancel: &CancellationToken,
) -> (Vec<(String, CollectReport)>, Vec<String>) {
    let progress = Arc::new(Progress::new(run.experiment, View::for_stderr()));
    let stop_printing = CancellationToken::new();
    let printer = {
        let progress = progress.clone();
        let stop = stop_printing.clone();
        tokio::spawn(async move { progress.show_until(stop).await })
    };
    let node_runs = run
        .experiment
        .nodes
        .iter()
        .zip(agents)
        .map(|(node, agent)| {
            let progress = &progress;
            let cancel = cancel.clone();
            async move {
                match agent {
                    Ok(endpoint) => drive_node(run, node, &endpoint, progress, cancel).await,
                    Err(reason) => Err(anyhow::anyhow!("{reason}")),
                }
            }
        });
    let results = join_all(node_runs).await;
    stop_printing.cancel();
    let _ = printer.await;
    let mut nodes = Vec::new();
    let mut failures = Vec::new();
    for (node, result) in run.experiment.nodes.iter().zip(results) {
        match result {
            Ok(report) => nodes.push((node.name.clone(), report)),
            Err(e) => failures.push(format!("node {}: {e:#}", node.name)),
        }
    }
    (nodes, failures)
}

/// Runs `node` of the experiment on the agent at `endpoint` and copies its streams into
/// `nodes/<node>/` until the run ends; Ctrl-C asks the agent to stop the run.
async fn drive_node(
    run: &ExperimentRun<'_>,
    node: &Node,
    endpoint: &AgentEndpoint,
    progress: &Progress,
    cancel: CancellationToken,
) -> anyhow::Result<CollectReport> {
    let node_dir = ExperimentDir::new(run.dir).node(&node.name).path;
    let mut client =
        agent_client::connect(&endpoint.url, endpoint.token.clone(), endpoint.tls.clone()).await?;
    let info = client
        .info(InfoRequest {})
        .await
        .map_err(|s| {
            let reason = agent_client::first_call_refused(&s, endpoint.tls.is_some());
            anyhow::anyhow!("the agent at {} refused Info: {reason}", endpoint.url)
        })?
        .into_inner();
    let gpus = if info.gpus.is_empty() {
        format!("GPU sampling is off: {}", info.gpu_unavailable_reason)
    } else {
        info.gpus
            .iter()
            .map(|g| format!("GPU {}: {}", g.index, g.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!(
        "node {}: agent {} on {}; {gpus}",
        node.name,
        info.agent_version,
        info.hostname
    );
    crate::preflight::run(&mut client, run.config, node, &node_dir).await?;
    let started = client
        .start_run(StartRunRequest {
            run_id: run.run_id.to_owned(),
            config_yaml: run.config.to_owned(),
            node: node.name.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the agent refused the run: {}", s.message()))?
        .into_inner();
    say!("node {}: trials {}", node.name, started.trials.join(", "));
    progress.set_trials(&node.name, &started.trials);
    let mut stopper = client.clone();
    let mut stop_on_failure = client.clone();
    let stop_id = run.run_id.to_owned();
    let watch_cancel = tokio::spawn(async move {
        cancel.cancelled().await;
        say!("stopping: asking the agent to stop; collecting what was recorded");
        if let Err(e) = stopper.stop_run(StopRunRequest { run_id: stop_id }).await {
            say!("the agent did not take the stop request: {}", e.message());
        }
    });
    let lease = run.experiment.launcher.lease;
    let mut collector = Collector::new(&node.name, &node_dir, progress, lease);
    let report = collector.collect(&mut client, run.run_id).await;
    watch_cancel.abort();
    if report.is_err() {
        // Nobody collects this node any more: its trials must not go on loading the machine
        // (or GPU) the other nodes measure on.
        let stop = StopRunRequest {
            run_id: run.run_id.to_owned(),
        };
        let _ = stop_on_failure.stop_run(stop).await;
    }
    let report = report?;
    if report.status == RunStatus::Failed {
        bail!("the run failed on the agent: {}", report.error);
    }
    Ok(report)
}

/// Writes `plan.json`: every node's trials with each tenant's arrival, as analysis reads it.
fn write_plan(dir: &Path, experiment: &Experiment, launcher: &str) -> anyhow::Result<()> {
    let nodes = experiment
        .nodes
        .iter()
        .map(|n| PlanNode {
            node: n.name.clone(),
            traffic: n
                .tenants
                .iter()
                .filter_map(|t| Some((t.name.clone(), configured_rate(experiment, t)?)))
                .collect(),
            trials: n
                .trials(&experiment.workloads)
                .iter()
                .map(|t| PlanTrial {
                    trial: t.name.clone(),
                    mode: t.mode,
                    tenants: t
                        .tenants
                        .iter()
                        .map(|&i| {
                            let tenant = &n.tenants[i];
                            let workload = &experiment.workloads[&tenant.workload];
                            PlanTenant {
                                tenant: tenant.name.clone(),
                                arrival: Some(workload.arrival.stage(t.stage).describe()),
                            }
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let plan = Plan {
        experiment: experiment.name.clone(),
        launcher: launcher.to_owned(),
        nodes,
        cost: experiment.cost.clone(),
    };
    let path = ExperimentDir::new(dir).file(layout::PLAN_FILE);
    std::fs::write(path, plan.to_json()).context("writing plan.json")
}
