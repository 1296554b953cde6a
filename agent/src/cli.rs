//! Command line of the `agent` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use multitenant::config::SimTiming;

/// The multitenant agent: runs engines and load on a GPU node and records what happens.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API to a coordinator. The token comes from MULTITENANT_AGENT_TOKEN or
    /// --token-file, never from a flag (flags show in `ps`).
    Serve {
        /// Address to listen on. Without --tls, loopback only.
        #[arg(long, default_value = "127.0.0.1:7777")]
        listen: SocketAddr,
        /// Serve TLS, requiring a client certificate: the agent's certificate, key and the
        /// client CA come as PEM text in MULTITENANT_TLS_CERT, MULTITENANT_TLS_KEY and
        /// MULTITENANT_TLS_CLIENT_CA. Needed to listen on anything but loopback.
        #[arg(long)]
        tls: bool,
        /// Folder that receives one subfolder per run (default: `agent-data`, or `runs` in
        /// the --state-dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// File holding the bearer token (first line).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Serve as the daemon `agent init` made in this folder: TLS with its certificate,
        /// its token, and enrolment of coordinators that pair (`coordinator pair`).
        #[arg(long, conflicts_with_all = ["tls", "token_file"])]
        state_dir: Option<PathBuf>,
        /// The MPS control program `mps` trials use (a name on PATH or a path).
        #[arg(long, default_value = "nvidia-cuda-mps-control")]
        mps_control: PathBuf,
        /// The nvidia-smi that sets the GPU's compute mode for each trial of real engines
        /// (a name on PATH or a path).
        #[arg(long, default_value = "nvidia-smi")]
        nvidia_smi: PathBuf,
        /// Live only as long as standard input stays open: when it closes (the process that
        /// started the agent and holds the pipe's other end died, even by SIGKILL), stop
        /// every run, end its engines, keep its files, and exit.
        #[arg(long)]
        exit_with_stdin: bool,
        /// Exit once no run is running and no authenticated call came for this long (e.g.
        /// 3m): launchers start agents this way, so a node whose coordinator is gone ends its
        /// runs (by their lease), then exits, and the node can go idle.
        #[arg(long, value_parser = humantime::parse_duration)]
        exit_when_idle: Option<std::time::Duration>,
        /// With --exit-when-idle: how long to wait for the first run instead (a launcher that
        /// brings up several nodes calls each only once the slowest is up).
        #[arg(long, value_parser = humantime::parse_duration, requires = "exit_when_idle")]
        first_run_within: Option<std::time::Duration>,
        /// How long finished runs are kept.
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Make this node's agent identity (idempotent): a private state folder with a token, a CA
    /// and a server certificate; prints the pairing string for `coordinator pair`.
    Init {
        /// The state folder.
        #[arg(long, default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
        /// Where coordinators will reach this agent, `https://HOST:PORT` (default: the one
        /// stored, else `https://<host name>:7777`).
        #[arg(long)]
        url: Option<String>,
        /// Replace the token and the CA: every earlier pairing stops working.
        #[arg(long)]
        rotate: bool,
        /// Sign the server and coordinator certificates with this CA certificate (PEM)
        /// instead of a CA the agent makes; needs --ca-key.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The key of --ca-cert (PEM), kept in the state folder (0600).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
    },
    /// Print the pairing string of this node's agent again.
    Pairing {
        /// The state folder.
        #[arg(long, default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
    },
    /// Install and start a systemd unit that serves this node's agent across logouts, crashes
    /// and reboots (needs root); without systemd, print the foreground command instead.
    InstallService {
        /// The state folder (`agent init`).
        #[arg(long, default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7777")]
        listen: SocketAddr,
        /// The MPS control program `mps` trials use.
        #[arg(long, default_value = "/usr/bin/nvidia-cuda-mps-control")]
        mps_control: PathBuf,
        /// Only print the unit.
        #[arg(long)]
        print: bool,
        /// How long finished runs are kept.
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Check what this node has (GPUs, driver, compute mode, MPS, vLLM, disk, memory) and which
    /// sharing modes it can run; one line per check.
    Doctor {
        /// The vLLM executable to check (a name on PATH or a path).
        #[arg(long, default_value = "vllm")]
        vllm: String,
        /// The MPS control program to check.
        #[arg(long, default_value = "nvidia-cuda-mps-control")]
        mps_control: String,
        /// Where runs would be written (for the free-space check).
        #[arg(long, default_value = "agent-data")]
        data_dir: PathBuf,
    },
    /// Run the built-in simulated engine alone, e.g. to point an `external` tenant at it.
    SimEngine {
        /// Address to listen on (loopback only).
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Model name to serve.
        #[arg(long, default_value = "sim-model")]
        model: String,
        /// Seed of its draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Timing model: most sequences decoded at once.
        #[arg(long, default_value_t = SimTiming::default().max_batch)]
        max_batch: u32,
        /// Timing model: fixed cost of one decode step, µs.
        #[arg(long, default_value_t = SimTiming::default().decode_step_us)]
        decode_step_us: f64,
        /// Timing model: added cost per running sequence, µs.
        #[arg(long, default_value_t = SimTiming::default().decode_step_us_per_seq)]
        decode_step_us_per_seq: f64,
        /// Timing model: prefill cost per prompt token, µs.
        #[arg(long, default_value_t = SimTiming::default().prefill_us_per_token)]
        prefill_us_per_token: f64,
        /// Timing model: tokens its prefix cache holds (0: no cache).
        #[arg(long, default_value_t = SimTiming::default().prefix_cache_tokens,
              value_parser = clap::value_parser!(u64).range(..=multitenant::config::MAX_PREFIX_CACHE_TOKENS))]
        prefix_cache_tokens: u64,
        /// A LoRA adapter it serves beside the model, by the name requests carry (repeat for
        /// more), as vLLM started with `--enable-lora --lora-modules` does.
        #[arg(long = "adapter", value_name = "NAME")]
        adapters: Vec<String>,
        /// Timing model: added cost of a step for each distinct adapter in its batch, µs.
        #[arg(long, default_value_t = SimTiming::default().lora_step_us_per_adapter)]
        lora_step_us_per_adapter: f64,
        /// Timing model: most adapters in one batch (default: every adapter it serves).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_loras: Option<u32>,
    },
    /// Measure the load generator itself against the simulated engine on this machine: the
    /// highest rate held with schedule lag p99 under 1 ms, CPU time per 1,000 streamed tokens,
    /// memory at 10,000 concurrent streams, measured-minus-true TTFT and ITL, and the schedule
    /// lag of a 2-minute trace replayed ten times faster. Prints a table; takes about a minute
    /// and a half (`--quick`: about 35 s, smaller figures).
    Bench {
        /// Shorter stages and 2,000 instead of 10,000 streams for the memory stage.
        #[arg(long)]
        quick: bool,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Instead of the five stages, hold `--soak-streams` streams open for this long
        /// (10m when given without a value), printing resident memory and schedule lag per
        /// window of the run.
        #[arg(long, value_parser = humantime::parse_duration, num_args = 0..=1, default_missing_value = "10m", conflicts_with = "quick")]
        soak: Option<std::time::Duration>,
        /// Streams held open by `--soak`.
        #[arg(long, default_value_t = 10_000, requires = "soak", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        soak_streams: u32,
    },
}

/// The state folder of a daemon agent: `/var/lib/multitenant-agent` for root, else
/// `$XDG_STATE_HOME/multitenant-agent` (`~/.local/state/multitenant-agent`).
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/multitenant-agent");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("multitenant-agent")
}

/// How long the agent keeps the runs it recorded. A run is deleted only after a coordinator
/// confirmed that its copy of every stream matches the agent's SHA-256.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RetentionArgs {
    /// Delete confirmed runs this long after they ended (e.g. 30d, or forever). Default: 30d
    /// with --state-dir (a daemon), forever otherwise.
    #[arg(long, value_parser = crate::retention::parse_keep_for)]
    pub keep_runs_for: Option<crate::retention::Limit<std::time::Duration>>,
    /// Delete confirmed runs, oldest first, while all runs take more than this (e.g. 100GiB,
    /// or unlimited). Default: 100GiB with --state-dir, unlimited otherwise.
    #[arg(long, value_parser = crate::retention::parse_keep_size)]
    pub keep_runs_size: Option<crate::retention::Limit<u64>>,
}
