//! `coordinator`: parse the command line, run the command, map its verdict to an exit code.

use std::process::ExitCode;

use clap::Parser;
use coordinator::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(coordinator::console::EventWriter::default)
        .init();
    match coordinator::execute(cli.command).await {
        Ok(verdict) => ExitCode::from(verdict.exit_code()),
        Err(e) => {
            eprintln!("coordinator: {e:#}");
            ExitCode::from(coordinator::failure_exit_code(&e))
        }
    }
}
