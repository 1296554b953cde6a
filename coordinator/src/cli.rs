//! Command line of the `coordinator` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The multitenant coordinator: runs experiments of several models sharing GPUs, and analyses
/// their results.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Formats `coordinator export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Apache Parquet, one file per table.
    Parquet,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an experiment: start agents, drive load, collect every event, summarise.
    Run {
        /// The experiment config (YAML).
        config: PathBuf,
        /// Put the experiment folder here instead of the config's `output_dir`.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Exit with status 3 when a tenant of a finished trial misses its SLO.
        #[arg(long)]
        fail_on_slo: bool,
    },
    /// Check a config and list every problem in it, without running anything.
    Validate {
        /// The experiment config (YAML).
        config: PathBuf,
    },
    /// Print the resolved trials of every node and, for the skypilot launcher, write the
    /// SkyPilot task files, without launching anything.
    Plan {
        /// The experiment config (YAML).
        config: PathBuf,
        /// Where to write the task files.
        #[arg(long, default_value = "plan")]
        output_dir: PathBuf,
    },
    /// Tear down every SkyPilot cluster of an experiment that is not down yet (what a killed
    /// coordinator could not finish), and record it in the folder's clusters.json.
    Down {
        /// The experiment folder.
        dir: PathBuf,
    },
    /// Two or more experiment folders side by side: each figure of each tenant, and how the
    /// later ones changed against the first (better or worse).
    Compare {
        /// Experiment folders; the first is the baseline.
        #[arg(required = true, num_args = 2..)]
        dirs: Vec<PathBuf>,
        /// Also write the comparison as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write the comparison as a self-contained HTML page (sortable, coloured by
        /// better and worse) to this file.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Finish an experiment whose coordinator ended before it did: resume collection from
    /// static agents, or adopt a local agent's own verified copy, then write the summary.
    Attach {
        /// The experiment folder (`runs/<name>-<utc>`).
        dir: PathBuf,
        /// Exit with status 3 when a tenant of a finished trial misses its SLO.
        #[arg(long)]
        fail_on_slo: bool,
    },
    /// Pair with a daemon agent (`agent init` on the node printed the string): enrol this
    /// coordinator's client certificate, check the agent answers, and store it as NODE, which
    /// a `static` launcher entry can then name alone (`agents: [{node: NODE}]`).
    Pair {
        /// The pairing string, or `-` to read it from standard input (it holds the token:
        /// on a shared machine, `-` keeps it out of `ps`).
        pairing: String,
        /// The node name to store it as.
        #[arg(long)]
        node: String,
        /// Replace the agent already paired as NODE.
        #[arg(long)]
        replace: bool,
    },
    /// List the paired agents, and whether each answers (version, GPUs, MPS readiness).
    Agents,
    /// Write an experiment's events as Parquet tables (requests, GPU samples, engine
    /// metrics), for DuckDB, polars or Spark.
    Export {
        /// The experiment folder (`runs/<name>-<utc>`).
        dir: PathBuf,
        /// The format: parquet.
        #[arg(long, value_enum, default_value_t = ExportFormat::Parquet)]
        format: ExportFormat,
        /// Where to write the files (default: `export/` in the experiment folder).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Measure what capacity searches cost to reach their verdict: probes and probe-seconds
    /// per search, with the interval and decision each reached (by default on a cliff-shaped
    /// and a gradual simulated engine, alone and under MPS).
    BenchCapacity {
        /// Search this config's capacity instead of the built-in shapes.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Keep the experiment folder here (default: a temporary folder, removed after).
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Measure analysis on a seeded synthetic experiment: requests/s and peak memory of the
    /// summary, of the summary with its report, and of the Parquet export.
    BenchAnalysis {
        /// Request events in all.
        #[arg(long, default_value_t = 1_000_000)]
        requests: u64,
        /// Tenant streams they are split over.
        #[arg(long, default_value_t = 2)]
        tenants: u32,
        /// Content chunks per request.
        #[arg(long, default_value_t = 64)]
        chunks: u32,
        /// Write the experiment here and keep it (default: a temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Run one step over the experiment in --dir and print its figures as JSON (what
        /// the benchmark's child processes do).
        #[arg(long, value_enum, hide = true, requires = "dir")]
        measure: Option<crate::bench::Step>,
    },
    /// Recompute the summary of an experiment folder from its JSONL streams alone.
    Analyze {
        /// The experiment folder (`runs/<name>-<utc>`).
        dir: PathBuf,
        /// Also write `summary.json` and `summary.csv` into the folder (they are overwritten).
        #[arg(long)]
        write: bool,
        /// Exit with status 3 when a tenant of a finished trial misses its SLO.
        #[arg(long)]
        fail_on_slo: bool,
        /// Also print every tenant's figures under a peer tool's definitions (vllm, guidellm
        /// or aiperf), recomputed from the same events; with --write, into
        /// `summary.<peer>.json` too.
        #[arg(long)]
        definitions: Option<String>,
    },
}
