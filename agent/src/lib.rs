//! The multitenant agent: one per GPU node.
//!
//! - [`server`]: the authenticated gRPC API.
//! - [`run`]: runs and trials: engines up, load on, streams recorded, engines down; one
//!   `TenantSlot` per tenant, failures typed as [`run::TrialFailure`].
//! - [`engine`]: the simulated engine (a real OpenAI-compatible server) and external engines.
//! - [`loadgen`]: arrivals, synthetic prompts, the streaming client and its SSE parser.
//! - [`recorder`]: the JSONL files on disk and the resumable reading behind `StreamEvents`.
//! - [`identity`]: a daemon agent's state folder: token, CA, certificates, enrolment.
//! - [`service_unit`]: the systemd unit that keeps a daemon agent up.
//! - [`host`], [`gpu`]: node sampling and GPU discovery; [`mps`]: the MPS daemon of a trial.
//! - [`mod@doctor`]: what a node has and which sharing modes it can run.
//! - [`clock`]: the run's monotonic clock; [`lease`]: runs and agents end when the
//!   coordinator is gone.
//! - [`mod@bench`]: the load generator measured against the simulated engine.

pub mod bench;
pub mod cli;
pub mod clock;
pub mod compute_mode;
pub mod cuda_probe;
pub mod doctor;
pub mod engine;
pub mod engine_metrics;
pub mod gpu;
pub mod host;
pub mod identity;
pub mod lease;
pub mod loadgen;
pub mod mps;
pub mod preflight;
pub mod recorder;
pub mod retention;
pub mod run;
pub mod server;
pub mod service_unit;
pub mod soak;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use multitenant::auth::{BearerToken, TOKEN_ENV};
use tokio_util::sync::CancellationToken;

use engine::sim_gpu::SimGpu;
use engine::simulated::{SimEngine, SimEngineConfig};

/// Reads the token from `token_file`, or else from the environment.
pub fn load_token(token_file: Option<&Path>) -> anyhow::Result<BearerToken> {
    let secret = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => std::env::var(TOKEN_ENV)
            .with_context(|| format!("no token: set {TOKEN_ENV} or pass --token-file; the agent never serves without one"))?,
    };
    BearerToken::new(&secret).context("the agent token is not acceptable")
}

fn require_loopback(addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("refusing to listen on {addr} in plain text: only loopback (e.g. 127.0.0.1:7777) goes without --tls");
    }
    Ok(())
}

/// Where and how `agent serve` serves.
pub struct ServeSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder of the runs.
    pub data_dir: PathBuf,
    /// The `nvidia-cuda-mps-control` that `mps` trials use.
    pub mps_control: PathBuf,
    /// The `nvidia-smi` that sets each trial's compute mode.
    pub nvidia_smi: PathBuf,
    /// Exit once no run runs and no call came for a while.
    pub exit_when_idle: Option<IdleExit>,
    /// Which confirmed runs are deleted, and when.
    pub retention: retention::Retention,
}

/// When an idle agent exits.
#[derive(Debug, Clone, Copy)]
pub struct IdleExit {
    /// Silence after which an agent that has had a run, and runs none now, exits.
    pub after_runs: std::time::Duration,
    /// Silence after which an agent that never had a run exits.
    pub before_first_run: std::time::Duration,
}

/// `agent serve`: serves until `shutdown` (or, with `exit_when_idle`, until it is idle that
/// long), then stops every run and waits for their records.
/// With `tls`, it may listen on any address; without, only on loopback.
/// Prints `listening on <addr>` on stdout once bound, for whoever started it.
pub async fn serve(
    settings: ServeSettings,
    token: BearerToken,
    tls: Option<server::ServerTls>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ServeSettings {
        listen,
        data_dir,
        mps_control,
        nvidia_smi,
        exit_when_idle,
        retention,
    } = settings;
    if tls.is_none() {
        require_loopback(listen)?;
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    // Absolute, so that the MPS daemon's and engines' folders under it stay right whatever
    // folder a process started from them runs in (SkyPilot starts agents with a relative one).
    let data_dir = std::path::absolute(&data_dir)
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let gpu = gpu::NodeGpus::probe();
    eprintln!("{}", gpu.status.describe());
    if let Some(note) = gpu::visible_devices_note(std::env::var("CUDA_VISIBLE_DEVICES").ok()) {
        eprintln!("{note}");
    }
    eprintln!("{}", raise_fd_limit());
    eprintln!("{}", retention.describe());
    let runs = Arc::new(
        run::RunManager::new(data_dir, gpu, mps_control)
            .with_nvidia_smi(nvidia_smi)
            .with_retention(retention),
    );
    for line in runs.recover() {
        eprintln!("{line}");
    }
    if retention != retention::Retention::default() {
        tokio::spawn(sweep_hourly(runs.clone(), shutdown.clone()));
    }
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    if let Some(idle) = exit_when_idle {
        tokio::spawn(exit_when_idle_for(runs.clone(), idle, shutdown.clone()));
    }
    let served = server::serve(listener, runs.clone(), token, tls, shutdown.clone()).await;
    runs.shutdown().await;
    served.context("the gRPC server failed")
}

/// Deletes the runs retention lets go now and then every hour, until `shutdown`.
async fn sweep_hourly(runs: Arc<run::RunManager>, shutdown: CancellationToken) {
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = hourly.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let swept = tokio::task::spawn_blocking({
            let runs = runs.clone();
            move || runs.sweep()
        });
        for line in swept.await.unwrap_or_default() {
            eprintln!("{line}");
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit: every in-flight request
/// holds a socket. Returns what it got, in words.
pub fn raise_fd_limit() -> String {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return "file descriptors: the limit could not be read".into();
    };
    if soft >= hard {
        return format!("file descriptors: limit {soft} (the hard limit); a load that needs more sockets records `client` errors");
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => format!("file descriptors: limit raised from {soft} to {hard}"),
        Err(e) => format!("file descriptors: limit {soft}; raising it to {hard} failed: {e}"),
    }
}

/// Cancels `shutdown` once no run is running and no authenticated call came for as long as
/// `idle` says.
async fn exit_when_idle_for(
    runs: Arc<run::RunManager>,
    idle: IdleExit,
    shutdown: CancellationToken,
) {
    loop {
        let wait = if runs.has_had_runs() {
            idle.after_runs
        } else {
            idle.before_first_run
        };
        let Some(silent) = lease::lapse(runs.contact(), wait, &shutdown).await else {
            return;
        };
        // Looked at again after the check of the runs: a StartRun may have just come in.
        if !runs.any_running() && runs.contact().silent_for() >= wait {
            eprintln!(
                "no run and no call for {}: exiting (--exit-when-idle)",
                humantime::format_duration(std::time::Duration::from_secs(silent.as_secs())),
            );
            shutdown.cancel();
            return;
        }
        // A run still runs (its own lease ends it) or a call just came: look again soon.
        tokio::time::sleep(lease::CHECK_EVERY).await;
    }
}

/// `agent doctor`: prints one line per check of what this node has; fails when a check says
/// FAIL (something that would break the first engine).
pub async fn doctor(vllm: &str, mps_control: &str, data_dir: &Path) -> anyhow::Result<()> {
    let gpus = gpu::NodeGpus::probe();
    let checks = doctor::run(&gpus, Some(vllm), mps_control, data_dir).await;
    for check in &checks {
        println!("{check}");
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == doctor::Status::Fail)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "agent doctor: {} failed (see the FAIL lines above for the fix)",
        failed.join(", ")
    )
}

/// What `agent sim-engine` serves: a model and the LoRA adapters beside it.
pub struct ServedModels {
    /// The base model's name.
    pub model: String,
    /// The adapters' names, as requests carry them.
    pub adapters: Vec<String>,
}

impl ServedModels {
    /// Refuses an empty name or a name served twice, naming it.
    fn check(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::HashSet::new();
        for name in std::iter::once(&self.model).chain(&self.adapters) {
            if name.trim().is_empty() {
                bail!("the simulated engine's --model and each --adapter need a name");
            }
            if !seen.insert(name) {
                bail!("the simulated engine would serve {name:?} twice: each of --model and --adapter needs a name of its own");
            }
        }
        Ok(())
    }
}

/// `agent sim-engine`: serves the simulated engine until `shutdown`.
pub async fn sim_engine(
    listen: SocketAddr,
    served: ServedModels,
    seed: u64,
    timing: multitenant::config::SimTiming,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    require_loopback(listen)?;
    served.check()?;
    let usable = timing.max_batch >= 1
        && timing.decode_step_us > 0.0
        && timing.decode_step_us_per_seq >= 0.0
        && timing.prefill_us_per_token >= 0.0
        && timing.lora_step_us_per_adapter >= 0.0;
    if !usable {
        bail!("the simulated engine needs --max-batch ≥ 1, --decode-step-us > 0 and the other costs ≥ 0");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let adapters = served.adapters.len();
    let config = SimEngineConfig {
        model: served.model,
        adapters: served.adapters,
        timing,
        faults: multitenant::config::SimFaults::default(),
        seed,
        record_truth: false,
    };
    let gpu = Arc::new(SimGpu::new(multitenant::config::SharingMode::Solo, 0.0));
    let engine = SimEngine::start(listener, config, gpu)?;
    let with = match adapters {
        0 => String::new(),
        1 => " with 1 LoRA adapter".to_owned(),
        n => format!(" with {n} LoRA adapters"),
    };
    println!(
        "simulated engine (SIMULATED timings){with} on {}",
        engine.base_url()
    );
    shutdown.cancelled().await;
    engine.stop().await;
    Ok(())
}

/// Cancels `shutdown` once standard input reaches its end: the parent that holds the pipe is
/// gone, so nobody will collect what the agent records. The read blocks, so it runs on a
/// thread of its own that never holds the process back from exiting.
fn stop_when_stdin_closes(shutdown: CancellationToken) {
    let watcher = std::thread::Builder::new()
        .name("stdin-lifeline".into())
        .spawn(move || {
            use std::io::Read;
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            eprintln!("standard input closed: the coordinator that started this agent is gone; stopping every run and exiting");
            shutdown.cancel();
        });
    if let Err(e) = watcher {
        eprintln!("cannot watch standard input ({e}); the agent will not notice its parent's end");
    }
}

/// Runs one command of the command line until it ends or `shutdown`.
pub async fn execute(command: cli::Command, shutdown: CancellationToken) -> anyhow::Result<()> {
    use cli::Command;
    match command {
        Command::Serve {
            listen,
            tls,
            data_dir,
            token_file,
            state_dir,
            mps_control,
            nvidia_smi,
            exit_with_stdin,
            exit_when_idle,
            first_run_within,
            retention,
        } => {
            if exit_with_stdin {
                stop_when_stdin_closes(shutdown.clone());
            }
            let serving = if state_dir.is_some() {
                retention::Serving::Daemon
            } else {
                retention::Serving::ForALauncher
            };
            let (token, tls, runs_dir) = match state_dir {
                Some(dir) => {
                    let identity = identity::load(&dir)?;
                    let tls = identity.server_tls()?;
                    eprintln!(
                        "serving the agent of {} at {}: TLS with client certificates of its own CA; coordinators pair with `coordinator pair` (`agent pairing` prints the string)",
                        dir.display(),
                        identity.url()
                    );
                    (identity.token().clone(), Some(tls), identity.runs_dir())
                }
                None => {
                    let tls = if tls {
                        Some(server::ServerTls::from_env()?)
                    } else {
                        None
                    };
                    (load_token(token_file.as_deref())?, tls, "agent-data".into())
                }
            };
            let settings = ServeSettings {
                listen,
                data_dir: data_dir.unwrap_or(runs_dir),
                mps_control,
                nvidia_smi,
                exit_when_idle: exit_when_idle.map(|after_runs| IdleExit {
                    after_runs,
                    before_first_run: first_run_within.unwrap_or(after_runs),
                }),
                retention: retention::Retention::of_serve(
                    retention.keep_runs_for,
                    retention.keep_runs_size,
                    serving,
                ),
            };
            serve(settings, token, tls, shutdown).await
        }
        Command::Init {
            state_dir,
            url,
            rotate,
            ca_cert,
            ca_key,
        } => {
            let user_ca = match (ca_cert, ca_key) {
                (Some(cert), Some(key)) => Some(identity::UserCa::read(&cert, &key)?),
                _ => None,
            };
            let (identity, outcome) =
                identity::init(&state_dir, url.as_deref(), rotate, user_ca.as_ref())?;
            let what = match outcome {
                identity::InitOutcome::Created => "made a new agent identity in",
                identity::InitOutcome::Kept => "kept the agent identity already in (pass --rotate to replace it)",
                identity::InitOutcome::Rotated => "rotated the token and CA of (every earlier pairing fails once the agent restarts; pair again with the string below)",
            };
            eprintln!("{what} {}", state_dir.display());
            if outcome == identity::InitOutcome::Rotated {
                eprintln!("a running agent keeps the identity it started with: restart it (`systemctl restart {}`)", service_unit::UNIT_NAME);
            }
            eprintln!("agent URL: {}", identity.url());
            eprintln!("pairing string (a secret: it holds the token), for `coordinator pair <string> --node <name>`:");
            println!("{}", identity.pairing());
            Ok(())
        }
        Command::Pairing { state_dir } => {
            println!("{}", identity::load(&state_dir)?.pairing());
            Ok(())
        }
        Command::InstallService {
            state_dir,
            listen,
            mps_control,
            print,
            retention,
        } => {
            identity::load(&state_dir)?;
            let settings = service_unit::ServiceSettings {
                binary: std::env::current_exe().context("finding this agent binary")?,
                state_dir: std::path::absolute(&state_dir)
                    .with_context(|| format!("resolving {}", state_dir.display()))?,
                listen,
                mps_control,
                retention,
            };
            if print {
                print!("{}", settings.unit());
                return Ok(());
            }
            let path = service_unit::install(&settings)?;
            println!(
                "installed {} and started it; logs: journalctl -u {}",
                path.display(),
                service_unit::UNIT_NAME
            );
            Ok(())
        }
        Command::Doctor {
            vllm,
            mps_control,
            data_dir,
        } => doctor(&vllm, &mps_control, &data_dir).await,
        Command::SimEngine {
            listen,
            model,
            seed,
            max_batch,
            decode_step_us,
            decode_step_us_per_seq,
            prefill_us_per_token,
            prefix_cache_tokens,
            adapters,
            lora_step_us_per_adapter,
            max_loras,
        } => {
            let timing = multitenant::config::SimTiming {
                max_batch,
                prefill_us_per_token,
                decode_step_us,
                decode_step_us_per_seq,
                prefix_cache_tokens,
                lora_step_us_per_adapter,
                max_loras,
            };
            let served = ServedModels { model, adapters };
            sim_engine(listen, served, seed, timing, shutdown).await
        }
        // clap refuses --quick beside --soak.
        Command::Bench {
            json,
            soak: Some(duration),
            soak_streams,
            ..
        } => {
            let settings = soak::SoakSettings {
                streams: soak_streams,
                duration,
            };
            soak::run(settings, json.as_deref(), shutdown).await
        }
        Command::Bench {
            quick,
            json,
            soak: None,
            ..
        } => bench::run(quick, json.as_deref(), shutdown).await,
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
pub async fn stop_on_signal(shutdown: CancellationToken) {
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
