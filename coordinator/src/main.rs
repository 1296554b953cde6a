//! `coordinator`: parse the command line, wire Ctrl-C, run, report.

use std::process::ExitCode;

use clap::Parser;
use coordinator::cli::{Cli, Command};
use coordinator::Verdict;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Validate { config } => coordinator::validate(&config).map(|()| Verdict::Done),
        Command::Analyze {
            dir,
            write,
            fail_on_slo,
            definitions,
        } => coordinator::analyze(&dir, write, fail_on_slo, definitions.as_deref()),
        Command::Plan { config, output_dir } => {
            coordinator::plan(&config, &output_dir).map(|()| Verdict::Done)
        }
        Command::Down { dir } => coordinator::down(&dir).await.map(|()| Verdict::Done),
        Command::Compare { dirs, json, html } => {
            coordinator::compare(&dirs, json.as_deref(), html.as_deref()).map(|()| Verdict::Done)
        }
        Command::Run {
            config,
            output_dir,
            fail_on_slo,
        } => {
            let cancel = CancellationToken::new();
            tokio::spawn(cancel_on_ctrl_c(cancel.clone()));
            coordinator::run(&config, output_dir.as_deref(), fail_on_slo, cancel).await
        }
    };
    match result {
        Ok(Verdict::Done) => ExitCode::SUCCESS,
        Ok(Verdict::SloMissed) => ExitCode::from(coordinator::SLO_MISSED_EXIT),
        Err(e) => {
            eprintln!("coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// First Ctrl-C: stop the runs, collect what was recorded, tear down what was launched.
/// Later ones say what is still being waited for, and which clusters are still up; leaving
/// early would orphan the agents and clusters this process started.
async fn cancel_on_ctrl_c(cancel: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        cancel.cancel();
    }
    while tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("still stopping: agents are closing their records and will be killed after 20 s at most");
        if let Some(clusters) = coordinator::skypilot::still_up() {
            eprintln!("{clusters}");
        }
    }
}
