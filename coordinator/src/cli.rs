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
