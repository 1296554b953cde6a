//! The multitenant coordinator.
//!
//! - [`mod@run`]: `coordinator run`, from config to summary.
//! - [`launch`]: bringing agents up (local spawn, or static endpoints).
//! - [`agent_client`]: authenticated gRPC client.
//! - [`collect`]: byte-identical, resumable copies of the agents' streams.
//! - [`progress`]: live per-tenant lines.
//! - [`report`]: terminal table and `summary.json`.

pub mod agent_client;
pub mod cli;
pub mod collect;
pub mod launch;
pub mod progress;
pub mod report;
pub mod run;
pub mod skypilot;
pub mod tls;

use std::path::Path;

use anyhow::Context;
use multitenant::analysis::analyze_dir;
use multitenant::config::{Experiment, LauncherKind};
use tokio_util::sync::CancellationToken;

/// `coordinator validate`: prints what the config will run, or every problem in it.
pub fn validate(config: &Path) -> anyhow::Result<()> {
    let experiment = Experiment::load(config)?;
    println!("{}: valid", config.display());
    for node in &experiment.nodes {
        let trials: Vec<String> = node
            .trials(&experiment.workloads)
            .into_iter()
            .map(|t| t.name)
            .collect();
        let tenants: Vec<&str> = node.tenants.iter().map(|t| t.name.as_str()).collect();
        println!(
            "  node {}: tenants {}; trials {}",
            node.name,
            tenants.join(", "),
            trials.join(", ")
        );
    }
    Ok(())
}

/// `coordinator plan`: prints the trials of every node and writes the SkyPilot task files.
pub fn plan(config: &Path, output_dir: &Path) -> anyhow::Result<()> {
    let experiment = Experiment::load(config)?;
    println!("launcher: {}", experiment.launcher.kind.name());
    for node in &experiment.nodes {
        println!("node {}:", node.name);
        for trial in node.trials(&experiment.workloads) {
            let tenants: Vec<String> = trial
                .tenants
                .iter()
                .map(|&i| {
                    let t = &node.tenants[i];
                    let arrival = experiment.workloads[&t.workload].arrival.stage(trial.stage);
                    format!("{} ({})", t.name, arrival.describe())
                })
                .collect();
            println!("  {}: {}", trial.name, tenants.join(", "));
        }
    }
    if let LauncherKind::SkyPilot(settings) = &experiment.launcher.kind {
        let agent_bin = launch::find_agent_binary()?;
        std::fs::create_dir_all(output_dir)
            .with_context(|| format!("creating {}", output_dir.display()))?;
        let tasks =
            skypilot::write_task_files(output_dir, &experiment, settings, "plan", &agent_bin)?;
        for task in tasks {
            println!(
                "node {}: cluster {} from {} (secrets passed at launch: {})",
                task.node,
                task.cluster,
                task.path.display(),
                task.secrets.join(", ")
            );
        }
    }
    Ok(())
}

/// `coordinator down`: tears down what an experiment left up.
pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let ledger = skypilot::Ledger::open(dir)?;
    let sky = skypilot::Sky::find()?;
    let still_up = ledger
        .tear_down(&sky, std::time::Duration::from_secs(2), true)
        .await;
    for r in ledger.records() {
        println!("{}: {:?} ({})", r.cluster, r.state, r.detail);
    }
    if !still_up.is_empty() {
        anyhow::bail!(
            "{} cluster(s) may still be running: check `sky status` and your cloud console",
            still_up.len()
        );
    }
    Ok(())
}

/// `coordinator analyze`: prints the summary of an experiment folder.
pub fn analyze(dir: &Path, write: bool) -> anyhow::Result<()> {
    let summary = analyze_dir(dir).with_context(|| format!("analysing {}", dir.display()))?;
    if write {
        report::write_summary_files(dir, &summary)?;
    }
    print!("{}", report::render_table(&summary));
    Ok(())
}

/// `coordinator run`: runs the experiment with locally spawned agents and prints the summary.
pub async fn run(
    config: &Path,
    output_dir: Option<&Path>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let outcome = run::run_experiment(config, output_dir, run::Launch::FromConfig, cancel).await?;
    print!("{}", report::render_table(&outcome.summary));
    println!("results: {}", outcome.dir.display());
    Ok(())
}
