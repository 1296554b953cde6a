//! `coordinator bench-analysis`: how fast, and in how much memory, analysis and export go over
//! an experiment of a given size.
//!
//! It writes a seeded synthetic experiment (one node, one trial, `tenants` tenant streams of
//! request events with `chunks` content chunks each, as the load generator writes them), then
//! runs each measured step in a fresh process of this binary, so that each step's peak RSS is
//! its own: the summary (`coordinator analyze`), the summary with the report and plots
//! (`analyze --write`) and the Parquet export. Figures are printed, never asserted.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use multitenant::config::{Api, SharingMode};
use multitenant::events::{
    Event, EventWriter, Header, Phase, PhaseEvent, RequestEvent, StreamKind, TenantHeader,
    TokenSource, TrialEvent, TrialState, SCHEMA_VERSION,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What a benchmark writes and measures.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Request events in all.
    pub requests: u64,
    /// Tenant streams they are split over.
    pub tenants: u32,
    /// Content chunks per request (its chunk gaps are one fewer).
    pub chunks: u32,
    /// Where to write the experiment; a temporary folder, removed after, when `None`.
    pub dir: Option<PathBuf>,
}

/// One step a child process measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The summary alone, as `coordinator analyze`.
    Summary,
    /// The summary, `summary.json`, the CSV, the report and its plots, as `analyze --write`.
    Write,
    /// `coordinator export --format parquet`.
    Export,
}

impl Step {
    /// Its name on the command line (`--measure`).
    fn flag(self) -> &'static str {
        match self {
            Step::Summary => "summary",
            Step::Write => "write",
            Step::Export => "export",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Step::Summary => "summary (analyze)",
            Step::Write => "summary, report, plots (analyze --write)",
            Step::Export => "Parquet export (export)",
        }
    }
}

/// What a child process measured of one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    /// The step.
    pub step: Step,
    /// Its wall time, seconds.
    pub wall_s: f64,
    /// The process's peak resident memory, bytes.
    pub peak_rss_bytes: u64,
    /// Request events the step saw (measured ones in the summary, rows in the export).
    pub requests: u64,
}

/// Seed of the synthetic streams: the same figures every run.
const SEED: u64 = 20_261_204;
/// Requests per second per tenant in the synthetic schedule.
const RATE_PER_TENANT: u64 = 500;

/// Runs the benchmark and prints its figures.
pub fn run(settings: &BenchSettings) -> anyhow::Result<()> {
    if settings.tenants == 0 || settings.requests < u64::from(settings.tenants) {
        bail!("--tenants must be at least 1 and at most --requests");
    }
    if settings.chunks < 2 {
        bail!("--chunks must be at least 2 (a TPOT needs two tokens)");
    }
    let scratch;
    let dir = match &settings.dir {
        Some(dir) => dir.clone(),
        None => {
            scratch = tempfile::tempdir().context("making a temporary folder")?;
            scratch.path().join("bench")
        }
    };
    let started = Instant::now();
    let bytes = write_experiment(&dir, settings)?;
    println!(
        "wrote {} request events ({} tenants, {} chunks each): {:.0} MB of JSONL in {:.1} s, in {}",
        settings.requests,
        settings.tenants,
        settings.chunks,
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{} build, {cores} cores; each step in a fresh process:",
        if cfg!(debug_assertions) {
            "debug (figures are slower than a release build's)"
        } else {
            "release"
        }
    );
    let exe = std::env::current_exe().context("finding this binary")?;
    for step in [Step::Summary, Step::Write, Step::Export] {
        let output = std::process::Command::new(&exe)
            .arg("bench-analysis")
            .arg("--measure")
            .arg(step.flag())
            .arg("--dir")
            .arg(&dir)
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !output.status.success() {
            bail!(
                "the {} step failed ({}): {}",
                step.describe(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let measured: Measured = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("reading what the {} step measured", step.describe()))?;
        println!(
            "  {:<42} {:>8.2} s  {:>10.0} requests/s  peak RSS {:>6.0} MB  ({} requests)",
            step.describe(),
            measured.wall_s,
            measured.requests as f64 / measured.wall_s,
            measured.peak_rss_bytes as f64 / 1e6,
            measured.requests
        );
    }
    Ok(())
}

/// Runs one step over the experiment in `dir` in this process and prints what it measured as
/// JSON: what [`run`]'s child processes do.
pub fn measure(step: Step, dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let requests = match step {
        Step::Summary | Step::Write => {
            let analysis = multitenant::analysis::analyze(dir)?;
            if step == Step::Write {
                crate::report::write_summary_files(dir, &analysis.summary, &analysis.series)?;
            }
            let table = crate::report::render_table(&analysis.summary);
            std::hint::black_box(table);
            analysis
                .summary
                .trials()
                .flat_map(|(_, t)| &t.tenants)
                .map(|t| t.metrics.sent)
                .sum()
        }
        Step::Export => {
            let out = tempfile::tempdir().context("making a temporary folder")?;
            let exported = crate::export::export_parquet(dir, out.path())?;
            exported.files.first().map_or(0, |f| f.1)
        }
    };
    let wall_s = started.elapsed().as_secs_f64();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .context("reading this process's peak memory")?;
    let measured = Measured {
        step,
        wall_s,
        // Linux gives kilobytes.
        peak_rss_bytes: u64::try_from(usage.max_rss()).unwrap_or(0) * 1024,
        requests,
    };
    println!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

/// Writes the synthetic experiment into `dir`; returns the bytes of its tenant streams.
fn write_experiment(dir: &Path, settings: &BenchSettings) -> anyhow::Result<u64> {
    let trial = dir.join("nodes/n/mps");
    std::fs::create_dir_all(&trial).with_context(|| format!("creating {}", trial.display()))?;
    let per_tenant = settings.requests / u64::from(settings.tenants);
    let extra = settings.requests % u64::from(settings.tenants);
    let measure_at = 1_000_000_000u64;
    let span_ns = (per_tenant + 1) * 1_000_000_000 / RATE_PER_TENANT;
    let end_ns = measure_at + span_ns + 2_000_000_000;
    let mut agent = stream(&trial.join("agent.jsonl"), header(StreamKind::Agent, None))?;
    agent.write(&Event::Trial(TrialEvent {
        at_ns: 0,
        state: TrialState::Started,
        reason: None,
    }))?;
    agent.write(&Event::Trial(TrialEvent {
        at_ns: end_ns,
        state: TrialState::Finished,
        reason: None,
    }))?;
    agent.finish()?;
    let mut bytes = 0;
    for t in 0..settings.tenants {
        let name = format!("t{t}");
        let count = per_tenant + u64::from(u64::from(t) < extra);
        let path = trial.join(format!("{name}.jsonl"));
        let tenant = TenantHeader {
            name: name.clone(),
            model: format!("model-{t}"),
            engine: "simulated".into(),
            served_by: None,
            workload: "bench".into(),
            api: Api::Chat,
            arrival: format!("constant {RATE_PER_TENANT}/s"),
            offered_rate: Some(RATE_PER_TENANT as f64),
            streaming: true,
            forced_length: true,
            slo: None,
            planned_ms: None,
            shared_prefixes: None,
        };
        let mut out = stream(&path, header(StreamKind::Tenant, Some(tenant)))?;
        let phase = |phase, at_ns, scheduled| {
            Event::Phase(PhaseEvent {
                phase,
                at_ns,
                scheduled,
                connections: None,
            })
        };
        out.write(&phase(Phase::Warmup, 0, None))?;
        out.write(&phase(Phase::Measure, measure_at, None))?;
        let mut rng = StdRng::seed_from_u64(SEED + u64::from(t));
        for k in 0..count {
            let r = synthetic_request(&mut rng, &name, k, measure_at, settings.chunks);
            out.write(&Event::Request(r))?;
        }
        out.write(&phase(Phase::Drain, measure_at + span_ns, Some(count)))?;
        out.write(&phase(Phase::Done, end_ns, None))?;
        out.finish()?;
        bytes += std::fs::metadata(&path)?.len();
    }
    Ok(bytes)
}

/// Request `k` of tenant `name`: sent on a constant schedule, a first token 20 to 80 ms later,
/// then `chunks - 1` gaps of 5 to 15 ms.
fn synthetic_request(
    rng: &mut StdRng,
    name: &str,
    k: u64,
    measure_at: u64,
    chunks: u32,
) -> RequestEvent {
    let scheduled_ns = measure_at + k * 1_000_000_000 / RATE_PER_TENANT;
    let sent_ns = scheduled_ns + rng.random_range(20_000..200_000);
    let first = sent_ns + rng.random_range(20_000_000..80_000_000);
    let gaps: Vec<u64> = (1..chunks)
        .map(|_| rng.random_range(5_000..15_000))
        .collect();
    let last = first + gaps.iter().sum::<u64>() * 1_000;
    RequestEvent {
        id: format!("{name}-{k}"),
        phase: Phase::Measure,
        scheduled_ns,
        sent_ns,
        connect_ns: None,
        first_token_ns: Some(first),
        last_token_ns: Some(last),
        done_ns: last + 50_000,
        chunk_gaps_us: gaps,
        max_tokens: chunks,
        prompt_tokens: Some(rng.random_range(100..1_000)),
        output_tokens: Some(chunks),
        token_source: Some(TokenSource::Usage),
        status: Some(200),
        error: None,
        conversation: None,
        turn: None,
    }
}

fn header(stream: StreamKind, tenant: Option<TenantHeader>) -> Header {
    Header {
        schema_version: SCHEMA_VERSION.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        experiment: "bench-analysis".into(),
        run_id: "bench".into(),
        node: "n".into(),
        trial: "mps".into(),
        mode: SharingMode::Mps,
        stream,
        zero_wall_ns: 0,
        simulated: true,
        stage: None,
        tenant: tenant.map(Box::new),
    }
}

fn stream(path: &Path, header: Header) -> anyhow::Result<EventWriter<BufWriter<std::fs::File>>> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    EventWriter::new(BufWriter::with_capacity(1 << 20, file), header)
        .with_context(|| format!("writing {}", path.display()))
}
