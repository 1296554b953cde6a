//! `coordinator`: parse the command line, run the command, map its verdict to an exit code.

use std::process::ExitCode;

use clap::Parser;
use coordinator::cli::Cli;
use coordinator::Verdict;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match coordinator::execute(cli.command).await {
        Ok(Verdict::Done) => ExitCode::SUCCESS,
        Ok(Verdict::SloMissed) => ExitCode::from(coordinator::SLO_MISSED_EXIT),
        Err(e) => {
            eprintln!("coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
