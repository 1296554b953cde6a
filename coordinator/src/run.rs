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
use multitenant::auth::{BearerToken, TOKEN_ENV};
use multitenant::config::{Experiment, LauncherKind, Node, OnNodeFailure, SkyPilotSettings};
use multitenant::proto::v1::{InfoRequest, StartRunRequest, StopRunRequest};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent_client;
use crate::collect::{CollectReport, Collector};
use crate::launch::{find_agent_binary, AgentEndpoint, LocalAgent};
use crate::progress::Progress;
use crate::report;
use crate::skypilot::{self, ClusterState, Ledger, Sky};
use crate::tls::ExperimentTls;

/// How each node's agent is reached.
pub enum Launch {
    /// As the config's `launcher:` says.
    FromConfig,
    /// Spawn `agent serve` on this machine for every node.
    Local,
    /// Agents that already run, one per node, in node order.
    Static(Vec<AgentEndpoint>),
}

/// How one node's agent is reached, once the launcher has done its part.
enum NodeAccess {
    /// Spawn a local agent for it.
    Spawn,
    /// An agent that runs.
    Endpoint(AgentEndpoint),
    /// The node could not be brought up.
    Failed(String),
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
    let launch = match launch {
        Launch::FromConfig => match &experiment.launcher.kind {
            LauncherKind::Local => Launch::Local,
            LauncherKind::Static(agents) => Launch::Static(static_endpoints(&experiment, agents)?),
            LauncherKind::SkyPilot(settings) => {
                write_plan(&dir, &experiment, "skypilot")?;
                eprintln!("experiment folder: {}", dir.display());
                let run = ExperimentRun {
                    experiment: &experiment,
                    dir: &dir,
                    run_id: &run_id,
                    config: &sent_config,
                };
                return skypilot_run(run, settings, cancel).await;
            }
        },
        other => other,
    };
    let launcher = match launch {
        Launch::Static(_) => "static",
        _ => "local",
    };
    write_plan(&dir, &experiment, launcher)?;
    eprintln!("experiment folder: {}", dir.display());
    let access: Vec<NodeAccess> = match launch {
        Launch::Static(list) => {
            if list.len() != experiment.nodes.len() {
                bail!(
                    "{} agent endpoints given for {} nodes",
                    list.len(),
                    experiment.nodes.len()
                );
            }
            list.into_iter().map(NodeAccess::Endpoint).collect()
        }
        _ => experiment.nodes.iter().map(|_| NodeAccess::Spawn).collect(),
    };
    let run = ExperimentRun {
        experiment: &experiment,
        dir: &dir,
        run_id: &run_id,
        config: &sent_config,
    };
    let (nodes, failures) = run_nodes(&run, access, &cancel).await?;
    let summary = analyze_dir(&dir).context("analysing the collected streams")?;
    report::write_summary_files(&dir, &summary)?;
    finish(dir, summary, nodes, failures)
}

/// What every node of one experiment shares.
struct ExperimentRun<'a> {
    experiment: &'a Experiment,
    dir: &'a Path,
    run_id: &'a str,
    /// The config text agents get.
    config: &'a str,
}

fn finish(
    dir: PathBuf,
    summary: Summary,
    nodes: Vec<(String, CollectReport)>,
    failures: Vec<String>,
) -> anyhow::Result<Outcome> {
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

/// The endpoints of a config's static agents, in node order; tokens from the environment.
fn static_endpoints(
    experiment: &Experiment,
    agents: &[multitenant::config::StaticAgent],
) -> anyhow::Result<Vec<AgentEndpoint>> {
    let tls = match &experiment.launcher.tls {
        Some(ca) => Some(ExperimentTls::from_user_ca(ca)?),
        None => None,
    };
    experiment
        .nodes
        .iter()
        .map(|node| {
            let agent = agents
                .iter()
                .find(|a| a.node == node.name)
                .with_context(|| format!("node {} has no agent", node.name))?;
            let secret = std::env::var(&agent.token_env).with_context(|| {
                format!(
                    "node {}: the agent token is read from {}, which is not set",
                    node.name, agent.token_env
                )
            })?;
            let token = BearerToken::new(&secret)
                .with_context(|| format!("node {}: the token in {}", node.name, agent.token_env))?;
            let tls = match (&tls, agent.url.starts_with("https://")) {
                (Some(t), true) => Some(t.client_config()),
                _ => None,
            };
            Ok(AgentEndpoint {
                url: agent.url.clone(),
                token,
                tls,
            })
        })
        .collect()
}

/// Runs every node whose agent is reachable, at once; a node that fails is reported with its
/// reason and the others go on.
async fn run_nodes(
    run: &ExperimentRun<'_>,
    access: Vec<NodeAccess>,
    cancel: &CancellationToken,
) -> anyhow::Result<(Vec<(String, CollectReport)>, Vec<String>)> {
    let needs_binary = access.iter().any(|a| matches!(a, NodeAccess::Spawn));
    let agent_bin = if needs_binary {
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
    let node_runs = run
        .experiment
        .nodes
        .iter()
        .zip(access)
        .map(|(node, access)| {
            let agent_bin = agent_bin.as_deref();
            let progress = &progress;
            let cancel = cancel.clone();
            async move {
                let endpoint = match access {
                    NodeAccess::Failed(reason) => bail!("{reason}"),
                    NodeAccess::Endpoint(e) => Some(e),
                    NodeAccess::Spawn => None,
                };
                run_node(
                    node, endpoint, agent_bin, run.dir, run.run_id, run.config, progress, cancel,
                )
                .await
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
    Ok((nodes, failures))
}

/// The SkyPilot path: preflight, launch every node at once, run, and tear everything down
/// whatever happened (unless the config keeps the nodes).
async fn skypilot_run(
    run: ExperimentRun<'_>,
    settings: &SkyPilotSettings,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    let experiment = run.experiment;
    // Everything that can be known wrong is refused before anything is launched.
    let sky = Sky::find()?;
    sky.check().await?;
    let agent_bin = find_agent_binary()?;
    let tls = match &experiment.launcher.tls {
        Some(ca) => ExperimentTls::from_user_ca(ca)?,
        None => ExperimentTls::generate(&experiment.name)?,
    };
    tls.write_ca(run.dir)?;
    let run_tag = hex::encode(rand::random::<[u8; 3]>());
    let tasks = skypilot::write_task_files(run.dir, experiment, settings, &run_tag, &agent_bin)?;
    let node_config = skypilot::node_config(run.config, &skypilot::data_files(experiment))?;
    let ledger = Ledger::create(run.dir)?;
    let log_dir = run.dir.join("skypilot");

    let launches = tasks.iter().map(|task| {
        let (sky, ledger, tls, cancel) = (&sky, &ledger, &tls, cancel.clone());
        let log = log_dir.join(format!("{}.launch.log", task.node));
        async move {
            ledger.set(
                &task.node,
                &task.cluster,
                ClusterState::Launching,
                "sky launch started",
            );
            eprintln!(
                "node {}: launching cluster {} (output in {})",
                task.node,
                task.cluster,
                log.display()
            );
            let brought_up = async {
                let token = BearerToken::from_random_bytes(rand::random());
                let mut env: Vec<(String, String)> =
                    vec![(TOKEN_ENV.to_owned(), token.expose().to_owned())];
                env.extend(
                    tls.agent_secrets()?
                        .env
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v)),
                );
                sky.launch(task, &env, &log).await?;
                let address = sky.endpoint(&task.cluster, settings.agent_port).await?;
                anyhow::Ok(AgentEndpoint {
                    url: format!("https://{address}"),
                    token,
                    tls: Some(tls.client_config()),
                })
            };
            let started = std::time::Instant::now();
            let still_launching = async {
                let mut every = tokio::time::interval(Duration::from_secs(15));
                every.tick().await;
                loop {
                    every.tick().await;
                    eprintln!(
                        "node {}: still launching cluster {} ({} s)",
                        task.node,
                        task.cluster,
                        started.elapsed().as_secs()
                    );
                }
            };
            let result = tokio::select! {
                r = brought_up => r,
                () = cancel.cancelled() => Err(anyhow::anyhow!("interrupted while launching")),
                () = still_launching => unreachable!("the progress ticker never ends"),
            };
            match result {
                Ok(endpoint) => {
                    ledger.set(
                        &task.node,
                        &task.cluster,
                        ClusterState::Up,
                        endpoint.url.clone(),
                    );
                    eprintln!("node {}: up at {}", task.node, endpoint.url);
                    NodeAccess::Endpoint(endpoint)
                }
                Err(e) => {
                    let reason = format!("launching cluster {}: {e:#}", task.cluster);
                    ledger.set(
                        &task.node,
                        &task.cluster,
                        ClusterState::LaunchFailed,
                        reason.clone(),
                    );
                    eprintln!("node {}: {reason}", task.node);
                    NodeAccess::Failed(reason)
                }
            }
        }
    });
    let access: Vec<NodeAccess> = join_all(launches).await;
    let launch_failures: Vec<String> = experiment
        .nodes
        .iter()
        .zip(&access)
        .filter_map(|(node, a)| match a {
            NodeAccess::Failed(reason) => Some(format!("node {}: {reason}", node.name)),
            _ => None,
        })
        .collect();
    let stop_now = cancel.is_cancelled()
        || (!launch_failures.is_empty()
            && experiment.launcher.on_node_failure == OnNodeFailure::Stop);
    let ran = if stop_now {
        None
    } else {
        let node_run = ExperimentRun {
            config: &node_config,
            ..run
        };
        Some(run_nodes(&node_run, access, &cancel).await)
    };

    let still_up = if experiment.launcher.keep {
        ledger.keep_all();
        Vec::new()
    } else {
        ledger.tear_down(&sky, Duration::from_secs(2), false).await
    };
    let mut teardown_note = Vec::new();
    if experiment.launcher.keep {
        let kept: Vec<String> = ledger
            .records()
            .into_iter()
            .filter(|r| r.state == ClusterState::Kept)
            .map(|r| r.cluster)
            .collect();
        teardown_note.push(format!("clusters kept up on purpose (launcher.keep): {}; they cost money until `coordinator down {}`", kept.join(", "), run.dir.display()));
    }
    if !still_up.is_empty() {
        let names: Vec<String> = still_up
            .iter()
            .map(|r| format!("{} ({})", r.cluster, r.detail))
            .collect();
        teardown_note.push(format!("TEARDOWN FAILED, these clusters may still be running and billing: {}; run `coordinator down {}` or `sky down -y <cluster>`", names.join("; "), run.dir.display()));
    }
    for note in &teardown_note {
        eprintln!("{note}");
    }
    let (nodes, mut failures) = match ran {
        Some(result) => result?,
        None if launch_failures.is_empty() => {
            (Vec::new(), vec!["interrupted before the nodes ran".into()])
        }
        None => (Vec::new(), launch_failures),
    };
    if !still_up.is_empty() {
        failures.extend(
            teardown_note
                .iter()
                .filter(|n| n.starts_with("TEARDOWN"))
                .cloned(),
        );
    }
    let mut summary = analyze_dir(run.dir).context("analysing the collected streams")?;
    summary.warnings.extend(teardown_note);
    report::write_summary_files(run.dir, &summary)?;
    finish(run.dir.to_owned(), summary, nodes, failures)
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
    let mut client =
        agent_client::connect(&endpoint.url, endpoint.token.clone(), endpoint.tls.clone()).await?;
    let info = client
        .info(InfoRequest {})
        .await
        .map_err(|s| {
            let mut reason = agent_client::with_sources(&s);
            if endpoint.tls.is_some() && !reason.contains("certificate") {
                reason.push_str(" (over TLS, a closed connection on the first call is how an agent refuses a client certificate it does not accept: check that it runs with this experiment's CA)");
            }
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
