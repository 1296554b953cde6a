//! `agent`: parse the command line, wire shutdown to SIGINT/SIGTERM, run, report.

use std::process::ExitCode;

use agent::cli::{Cli, Command};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let result = match cli.command {
        Command::Serve {
            listen,
            tls,
            data_dir,
            token_file,
            mps_control,
        } => {
            let tls = if tls {
                agent::server::ServerTls::from_env().map(Some)
            } else {
                Ok(None)
            };
            match (agent::load_token(token_file.as_deref()), tls) {
                (Ok(token), Ok(tls)) => {
                    agent::serve(listen, data_dir, mps_control, token, tls, shutdown).await
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Command::Doctor {
            vllm,
            mps_control,
            data_dir,
        } => {
            agent::doctor(&vllm, &mps_control, &data_dir).await;
            Ok(())
        }
        Command::SimEngine {
            listen,
            model,
            seed,
            max_batch,
            decode_step_us,
            decode_step_us_per_seq,
            prefill_us_per_token,
        } => {
            let timing = multitenant::config::SimTiming {
                max_batch,
                prefill_us_per_token,
                decode_step_us,
                decode_step_us_per_seq,
            };
            agent::sim_engine(listen, model, seed, timing, shutdown).await
        }
        Command::Bench { quick, json } => agent::bench::run(quick, json.as_deref(), shutdown).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}
