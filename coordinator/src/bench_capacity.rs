//! `coordinator bench-capacity`: what the capacity searches cost to reach their verdict.
//!
//! It runs a capacity search as `coordinator run` does (by default [`shapes_config`]: a cliff-shaped
//! and a gradual simulated engine, each alone and both under MPS along their mix) and prints,
//! per search, its probes, the probe-seconds it held the engines (each probe from its wait for
//! empty queues to its drain), the interval it found and, for a shared search, the decision
//! its GPU-equivalents range makes. Figures are printed, never asserted: the tests hold the
//! answers to account (tests/capacity.rs), this holds the cost.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use multitenant::capacity::NodeCapacity;
use tokio_util::sync::CancellationToken;

use crate::run::{self, Launch};

/// A cliff: configs/local.yaml's chat-small. Its output saturates, and past that its queue,
/// and TTFT with it, grows without bound.
pub const CLIFF: &str = "{kind: simulated, timing: {max_batch: 32, prefill_us_per_token: 15, decode_step_us: 9000, decode_step_us_per_seq: 120}}";

/// A gradual engine: every prefill (26 ms for 256 tokens) stalls the batch's decode, so TPOT
/// rises smoothly with the rate, and TTFT later.
pub const GRADUAL: &str = "{kind: simulated, timing: {max_batch: 32, prefill_us_per_token: 100, decode_step_us: 4000, decode_step_us_per_seq: 50}}";

/// The searches the benchmark runs by default: [`CLIFF`] and [`GRADUAL`] alone, then together
/// under MPS along their configured 1:1 mix, with the grid tests' probes (0.5 s + 2 s,
/// precision 8%, two repeats).
pub fn shapes_config() -> String {
    format!(
        "name: bench-capacity\n\
         slo: {{ttft_ms: {{p90: 150}}, tpot_ms: {{p90: 25}}}}\n\
         capacity: {{probe: {{warmup: 500ms, duration: 2s}}, precision: 0.08, repeats: 2, max_rate: 400, max_probes: 24}}\n\
         workloads:\n  \
           w: {{arrival: {{kind: poisson, rate: 10}}, data: {{prompt_tokens: 256, output_tokens: 32}}, warmup: 500ms, duration: 1s}}\n\
         nodes:\n  \
           - name: n\n    \
             trials: [mps]\n    \
             sim_gpu: {{mps_interference: 0.35}}\n    \
             tenants:\n      \
               - {{name: cliff, engine: {CLIFF}, workload: w}}\n      \
               - {{name: gradual, engine: {GRADUAL}, workload: w}}\n"
    )
}

/// Runs the searches of `config` (the built-in shapes when `None`) into `output_dir` (a
/// temporary folder, removed after, when `None`) and prints what each cost.
pub async fn run(
    config: Option<&Path>,
    output_dir: Option<&Path>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("creating a temporary folder")?;
    let config_path: PathBuf = match config {
        Some(path) => path.to_owned(),
        None => {
            let path = scratch.path().join("bench-capacity.yaml");
            std::fs::write(&path, shapes_config()).context("writing the shapes config")?;
            path
        }
    };
    let output = output_dir.map_or_else(|| scratch.path().join("runs"), Path::to_path_buf);
    let started = Instant::now();
    let outcome =
        run::run_experiment(&config_path, Some(&output), Launch::FromConfig, cancel).await?;
    let wall = started.elapsed();
    let capacity = outcome.summary.capacity.as_ref().with_context(|| {
        format!(
            "{} searched no capacity: give a config with a capacity: block",
            config_path.display()
        )
    })?;
    for node in &capacity.nodes {
        print!("{}", describe(node));
    }
    println!(
        "wall time {:.0} s (engine start-ups and the runs' own trials included){}",
        wall.as_secs_f64(),
        if outcome.summary.simulated {
            "; SIMULATED engines"
        } else {
            ""
        }
    );
    if output_dir.is_some() {
        println!("results: {}", outcome.dir.display());
    }
    Ok(())
}

/// One node's searches: probes, probe-seconds, interval and decision, then the node's total.
fn describe(node: &NodeCapacity) -> String {
    let mut out = format!("node {}: {}\n", node.node, node.verdict);
    for s in &node.solo {
        out.push_str(&format!(
            "  {:<24} {:>3} probes {:>8.1} probe-s  {}\n",
            s.search,
            s.interval.probes,
            s.engine_seconds,
            s.interval.describe()
        ));
    }
    for s in &node.shared {
        let decided = match (s.decision, s.gpu_equivalents_range) {
            (Some(decision), Some(range)) => {
                format!(
                    "; {} GPU-equivalents: {}",
                    range.describe(),
                    decision.words()
                )
            }
            _ => format!("; {}", s.no_verdict.as_deref().unwrap_or("no verdict")),
        };
        out.push_str(&format!(
            "  {:<24} {:>3} probes {:>8.1} probe-s  {}{decided}\n",
            s.search,
            s.interval.probes,
            s.engine_seconds,
            s.interval.describe()
        ));
    }
    let probes: u32 = node.solo.iter().map(|s| s.interval.probes).sum::<u32>()
        + node.shared.iter().map(|s| s.interval.probes).sum::<u32>();
    out.push_str(&format!(
        "  {:<24} {probes:>3} probes {:>8.1} probe-s\n",
        "all searches", node.engine_seconds
    ));
    out
}
