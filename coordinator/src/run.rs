//! `coordinator run`: one experiment from config to summary.
//!
//! Validate, make the experiment folder (config copy, plan), bring up one agent per node,
//! start each node's run, copy every stream as it is written, then analyse the folder — the
//! same function `coordinator analyze` calls, so both print the same numbers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::future::join_all;
use multitenant::analysis::{analyze_dir, Summary};
use multitenant::config::{Experiment, Node};
use multitenant::proto::v1::{InfoRequest, StartRunRequest, StopRunRequest};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent_client;
use crate::collect::{CollectReport, Collector};
use crate::launch::{find_agent_binary, AgentEndpoint, LocalAgent};
use crate::progress::Progress;
use crate::report;

/// How each node's agent is reached.
pub enum Launch {
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
    std::fs::create_dir_all(dir.join("nodes"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("config.yaml"), &config_text)
        .context("copying the config into the experiment folder")?;
    let launcher = match launch {
        Launch::Local => "local",
        Launch::Static(_) => "static",
    };
    write_plan(&dir, &experiment, launcher)?;
    eprintln!("experiment folder: {}", dir.display());

    let endpoints: Vec<Option<AgentEndpoint>> = match launch {
        Launch::Static(list) => {
            if list.len() != experiment.nodes.len() {
                bail!(
                    "{} agent endpoints given for {} nodes",
                    list.len(),
                    experiment.nodes.len()
                );
            }
            list.into_iter().map(Some).collect()
        }
        Launch::Local => vec![None; experiment.nodes.len()],
    };
    let agent_bin = if endpoints.iter().any(Option::is_none) {
        Some(find_agent_binary()?)
    } else {
        None
    };
    let progress = Arc::new(Progress::default());
    let stop_printing = CancellationToken::new();
    let printer = {
        let progress = progress.clone();
        let stop = stop_printing.clone();
        tokio::spawn(async move { progress.print_every(Duration::from_secs(2), stop).await })
    };
    let node_runs = experiment
        .nodes
        .iter()
        .zip(endpoints)
        .map(|(node, endpoint)| {
            run_node(
                node,
                endpoint,
                agent_bin.as_deref(),
                &dir,
                &run_id,
                &sent_config,
                &progress,
                cancel.clone(),
            )
        });
    let results = join_all(node_runs).await;
    stop_printing.cancel();
    let _ = printer.await;
    let mut nodes = Vec::new();
    let mut failures = Vec::new();
    for (node, result) in experiment.nodes.iter().zip(results) {
        match result {
            Ok(report) => nodes.push((node.name.clone(), report)),
            Err(e) => failures.push(format!("node {}: {e:#}", node.name)),
        }
    }
    let summary = analyze_dir(&dir).context("analysing the collected streams")?;
    report::write_summary_files(&dir, &summary)?;
    if !failures.is_empty() {
        bail!(
            "{}\n(whatever was collected is in {})",
            failures.join("\n"),
            dir.display()
        );
    }
    Ok(Outcome {
        dir,
        summary,
        nodes,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_node(
    node: &Node,
    endpoint: Option<AgentEndpoint>,
    agent_bin: Option<&Path>,
    dir: &Path,
    run_id: &str,
    config_text: &str,
    progress: &Progress,
    cancel: CancellationToken,
) -> anyhow::Result<CollectReport> {
    let node_dir = dir.join("nodes").join(&node.name);
    let (local, endpoint) = match (endpoint, agent_bin) {
        (Some(e), _) => (None, e),
        (None, Some(bin)) => {
            let data_dir = dir.join(".agent").join(&node.name);
            std::fs::create_dir_all(&data_dir)?;
            let agent = LocalAgent::spawn(
                bin,
                &data_dir,
                &dir.join(format!(".agent/{}.log", node.name)),
            )
            .await?;
            let endpoint = agent.endpoint.clone();
            (Some(agent), endpoint)
        }
        (None, None) => bail!("no way to reach an agent for node {}", node.name),
    };
    let collected = drive(
        node,
        &endpoint,
        &node_dir,
        run_id,
        config_text,
        progress,
        cancel,
    )
    .await;
    if let Some(agent) = local {
        if let Err(e) = agent.stop().await {
            eprintln!("node {}: {e:#}", node.name);
        }
    }
    collected
}

async fn drive(
    node: &Node,
    endpoint: &AgentEndpoint,
    node_dir: &Path,
    run_id: &str,
    config_text: &str,
    progress: &Progress,
    cancel: CancellationToken,
) -> anyhow::Result<CollectReport> {
    let mut client = agent_client::connect(&endpoint.url, endpoint.token.clone()).await?;
    let info = client
        .info(InfoRequest {})
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "the agent at {} refused Info: {}",
                endpoint.url,
                s.message()
            )
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
    eprintln!(
        "node {}: agent {} on {}; {gpus}",
        node.name, info.agent_version, info.hostname
    );
    let started = client
        .start_run(StartRunRequest {
            run_id: run_id.to_owned(),
            config_yaml: config_text.to_owned(),
            node: node.name.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the agent refused the run: {}", s.message()))?
        .into_inner();
    eprintln!("node {}: trials {}", node.name, started.trials.join(", "));
    let mut stopper = client.clone();
    let stop_id = run_id.to_owned();
    let watch_cancel = tokio::spawn(async move {
        cancel.cancelled().await;
        eprintln!("stopping: asking the agent to stop; collecting what was recorded");
        if let Err(e) = stopper.stop_run(StopRunRequest { run_id: stop_id }).await {
            eprintln!("the agent did not take the stop request: {}", e.message());
        }
    });
    let mut collector = Collector::new(&node.name, node_dir, progress);
    let report = collector.collect(&mut client, run_id).await;
    watch_cancel.abort();
    let report = report?;
    if report.state == "failed" {
        bail!("the run failed on the agent: {}", report.error);
    }
    Ok(report)
}

fn write_plan(dir: &Path, experiment: &Experiment, launcher: &str) -> anyhow::Result<()> {
    let nodes: Vec<_> = experiment
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.name,
                "trials": n.trials(&experiment.workloads).iter().map(|t| json!({
                    "trial": t.name,
                    "mode": t.mode,
                    "tenants": t.tenants.iter().map(|&i| {
                        let tenant = &n.tenants[i];
                        let arrival = experiment.workloads[&tenant.workload].arrival.stage(t.stage);
                        json!({"tenant": tenant.name, "arrival": arrival.describe()})
                    }).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let plan = json!({"experiment": experiment.name, "launcher": launcher, "nodes": nodes});
    std::fs::write(
        dir.join("plan.json"),
        serde_json::to_string_pretty(&plan)? + "\n",
    )
    .context("writing plan.json")
}
