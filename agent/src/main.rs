//! `agent`: parse the command line, wire shutdown to SIGINT/SIGTERM, run, report.

use std::process::ExitCode;

use agent::cli::Cli;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let shutdown = CancellationToken::new();
    tokio::spawn(agent::stop_on_signal(shutdown.clone()));
    match agent::execute(cli.command, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
