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

use std::path::Path;

use anyhow::Context;
use multitenant::analysis::analyze_dir;
use multitenant::config::Experiment;
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
    let outcome = run::run_experiment(config, output_dir, run::Launch::Local, cancel).await?;
    print!("{}", report::render_table(&outcome.summary));
    println!("results: {}", outcome.dir.display());
    Ok(())
}
