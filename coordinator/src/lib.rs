//! The multitenant coordinator.
//!
//! - [`mod@run`]: `coordinator run`, from config to summary, through any launcher.
//! - [`launch`]: the [`launch::Launcher`] trait and its local, static and SkyPilot launchers.
//! - [`skypilot`]: the `sky` CLI, the task files and the cluster ledger behind `coordinator down`.
//! - [`agent_client`]: authenticated gRPC client.
//! - [`attach`]: `coordinator attach`, finishing an experiment whose coordinator ended early.
//! - [`folder_lock`]: one coordinator at a time in an experiment folder.
//! - [`collect`]: byte-identical, resumable copies of the agents' streams.
//! - [`progress`]: live per-tenant lines.
//! - [`report`]: what people read: the terminal table, `summary.json`, `summary.csv`,
//!   `report.html` with its plots, and comparisons; one module per format.
//! - [`paired`]: daemon agents paired with `coordinator pair`, and `coordinator agents`.
//! - [`tls`]: the experiment CA and the certificates of coordinator and agents.
//! - [`mod@bench`] and [`bench_capacity`]: what analysis and the capacity searches cost, printed.

pub mod agent_client;
pub mod attach;
pub mod bench;
pub mod bench_capacity;
pub mod cli;
pub mod collect;
pub mod console;
pub mod export;
pub mod folder_lock;
pub mod launch;
pub mod paired;
pub mod preflight;
pub mod progress;
pub mod report;
pub mod run;
pub mod skypilot;
pub mod tls;

use std::path::Path;

use anyhow::Context;
use multitenant::analysis::analyze_dir;
use multitenant::config::{Experiment, LauncherKind};
use tokio_util::sync::CancellationToken;

/// `coordinator validate`: prints what the config will run, or every problem in it.
pub fn validate(config: &Path) -> anyhow::Result<()> {
    let experiment = Experiment::load(config)?;
    println!("{}: valid", config.display());
    for line in trace_lines(&experiment) {
        println!("  {line}");
    }
    for node in &experiment.nodes {
        let trials: Vec<String> = node
            .trials(&experiment.workloads)
            .into_iter()
            .map(|t| t.name)
            .collect();
        let tenants: Vec<String> = node
            .tenants
            .iter()
            .map(|t| match t.engine.base() {
                Some(base) => format!("{} (a LoRA adapter in {base}'s engine)", t.name),
                None => t.name.clone(),
            })
            .collect();
        println!(
            "  node {}: tenants {}; trials {}",
            node.name,
            tenants.join(", "),
            trials.join(", ")
        );
    }
    Ok(())
}

/// What each trace replay of `experiment` sends: its records, span and replay time, each
/// tenant's share, and what was left out of the file (skipped rows, zero outputs, a file out
/// of time order).
fn trace_lines(experiment: &Experiment) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, workload) in &experiment.workloads {
        let (
            multitenant::config::DataSource::Trace(data),
            multitenant::config::ArrivalPlan::Single(multitenant::config::Arrival::Trace {
                time_scale,
            }),
        ) = (&workload.data, &workload.arrival)
        else {
            continue;
        };
        let trace = match multitenant::trace::Trace::load(&data.path, data.format, &data.window) {
            Ok(t) => t,
            Err(e) => {
                lines.push(format!("workload {name}: {e}"));
                continue;
            }
        };
        // A tenant name on several nodes replays the same records: listed once.
        let tenants: std::collections::BTreeSet<&str> = experiment
            .nodes
            .iter()
            .flat_map(|n| &n.tenants)
            .filter(|t| &t.workload == name)
            .map(|t| t.name.as_str())
            .collect();
        let shares: Vec<String> = tenants
            .into_iter()
            .map(|t| {
                let n = trace.records_of(t, data.tenant_map.as_ref()).len();
                format!("{t} {n}")
            })
            .collect();
        lines.push(format!(
            "workload {name}: trace {} ({}): {} records over {:.1} s, replayed ×{time_scale} in {:.1} s; records per tenant: {}",
            data.path.display(),
            data.format.name(),
            trace.records.len(),
            trace.span().as_secs_f64(),
            trace.span().as_secs_f64() / time_scale,
            shares.join(", ")
        ));
        lines.extend(trace.notes(&data.path));
    }
    lines
}

/// `coordinator plan`: prints the trials of every node and writes the SkyPilot task files.
pub fn plan(config: &Path, output_dir: &Path) -> anyhow::Result<()> {
    let experiment = Experiment::load(config)?;
    println!("launcher: {}", experiment.launcher.kind.name());
    for node in &experiment.nodes {
        println!("node {}:", node.name);
        for trial in node.trials(&experiment.workloads) {
            let tenants: Vec<String> = trial
                .tenants
                .iter()
                .map(|&i| {
                    let t = &node.tenants[i];
                    let arrival = experiment.workloads[&t.workload].arrival.stage(trial.stage);
                    format!("{} ({})", t.name, arrival.describe())
                })
                .collect();
            println!("  {}: {}", trial.name, tenants.join(", "));
        }
        if let Some(cap) = &experiment.capacity {
            let searches: Vec<String> = cap.searches(node).into_iter().map(|s| s.name).collect();
            println!(
                "  capacity searches (probes of {:?} + {:?}, lengthened to hold enough requests for the SLO's percentile): {}",
                cap.probe_warmup,
                cap.probe_duration,
                searches.join(", ")
            );
        }
    }
    if let LauncherKind::SkyPilot(settings) = &experiment.launcher.kind {
        std::fs::create_dir_all(output_dir)
            .with_context(|| format!("creating {}", output_dir.display()))?;
        let tasks = skypilot::write_task_files(
            output_dir,
            &experiment,
            settings,
            "plan",
            launch::find_agent_binary,
        )?;
        for task in tasks {
            println!(
                "node {}: cluster {} from {} (secrets passed at launch: {})",
                task.node,
                task.cluster,
                task.path.display(),
                task.secrets.join(", ")
            );
        }
    }
    Ok(())
}

/// `coordinator down`: tears down what an experiment left up.
pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let ledger = skypilot::Ledger::open(dir)?;
    let sky = skypilot::Sky::find()?;
    let still_up = ledger
        .tear_down(&sky, std::time::Duration::from_secs(2), true)
        .await;
    for r in ledger.records() {
        println!("{}: {:?} ({})", r.cluster, r.state, r.detail);
    }
    if !still_up.is_empty() {
        anyhow::bail!(
            "{} cluster(s) may still be running: check `sky status` and your cloud console",
            still_up.len()
        );
    }
    Ok(())
}

/// How a command that judges SLOs ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done, and no SLO failure was asked to fail the command.
    Done,
    /// `--fail-on-slo` was given and a tenant missed its SLO.
    SloMissed,
    /// Stopped by Ctrl-C, SIGTERM or SIGHUP before the end; what was recorded is summarised.
    Interrupted,
    /// Not one trial finished: nothing in the summary is a valid figure.
    NoTrialFinished,
}

impl Verdict {
    /// The exit status a pipeline reads: 0 done, 3 an SLO missed (with `--fail-on-slo`),
    /// 4 interrupted, 5 no trial finished; 1 is any other failure and 6 a teardown that may
    /// have left clusters running ([`TEARDOWN_FAILED_EXIT`]).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Done => 0,
            Verdict::SloMissed => SLO_MISSED_EXIT,
            Verdict::Interrupted => 4,
            Verdict::NoTrialFinished => 5,
        }
    }
}

/// Exit status of `run` and `analyze` with `--fail-on-slo` when an SLO was missed (1 is any
/// other failure), so a CI pipeline can tell the two apart.
pub const SLO_MISSED_EXIT: u8 = 3;

/// Exit status of `run` when a teardown failed: clusters may still be running and billing.
pub const TEARDOWN_FAILED_EXIT: u8 = 6;

/// The exit status of a command that failed with `error`.
pub fn failure_exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<run::ExperimentError>() {
        Some(run::ExperimentError::TeardownFailed(_)) => TEARDOWN_FAILED_EXIT,
        None => 1,
    }
}

fn verdict(summary: &multitenant::analysis::Summary, fail_on_slo: bool) -> Verdict {
    if fail_on_slo && !summary.slo_misses().is_empty() {
        Verdict::SloMissed
    } else {
        Verdict::Done
    }
}

/// How a run ended: interrupted first, then no trial finished, then the SLOs.
pub(crate) fn run_verdict(summary: &multitenant::analysis::Summary, fail_on_slo: bool) -> Verdict {
    let mut trials = summary.trials().chain(summary.probes());
    if summary.interrupted {
        Verdict::Interrupted
    } else if trials.all(|(_, t)| !t.state.is_finished()) {
        Verdict::NoTrialFinished
    } else {
        verdict(summary, fail_on_slo)
    }
}

/// `coordinator compare`: experiments side by side, the first as the baseline.
pub fn compare(
    dirs: &[std::path::PathBuf],
    json: Option<&Path>,
    html: Option<&Path>,
) -> anyhow::Result<()> {
    let summaries = dirs
        .iter()
        .map(|d| analyze_dir(d).with_context(|| format!("analysing {}", d.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let labels: Vec<String> = dirs
        .iter()
        .map(|d| {
            d.file_name().map_or_else(
                || d.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let figures = report::compare::compare(&summaries);
    let simulated = summaries.iter().any(|s| s.simulated);
    if simulated {
        println!("[SIMULATED engine in at least one experiment: its latencies come from the timing model]");
    }
    print!("{}", report::render_comparison_table(&labels, &figures));
    println!();
    let verdicts = report::compare::verdicts(&labels, &summaries);
    for v in &verdicts {
        println!("verdict {}: {}: {}", v.experiment, v.node, v.verdict);
    }
    if let Some(path) = json {
        let doc = serde_json::json!({
            "experiments": labels,
            "figures": figures,
            "verdicts": verdicts,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = html {
        let page = report::render_comparison_html(&labels, &figures, simulated);
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `coordinator analyze`: prints the summary of an experiment folder, and with `definitions`
/// the same events under a peer tool's definitions.
pub fn analyze(
    dir: &Path,
    write: bool,
    fail_on_slo: bool,
    definitions: Option<&str>,
) -> anyhow::Result<Verdict> {
    let peer = definitions
        .map(|name| {
            multitenant::metrics::variants::Peer::parse(name)
                .with_context(|| format!("--definitions {name:?}: use vllm, guidellm or aiperf"))
        })
        .transpose()?;
    let multitenant::analysis::Analysis { summary, series } =
        multitenant::analysis::analyze(dir)
            .with_context(|| format!("analysing {}", dir.display()))?;
    if write {
        report::write_summary_files(dir, &summary, &series)?;
    }
    print!("{}", report::render_table(&summary));
    if let Some(peer) = peer {
        let variants = multitenant::analysis::peer_variants(dir, peer)
            .with_context(|| format!("analysing {}", dir.display()))?;
        print!(
            "{}",
            report::render_variants(definitions.unwrap_or_default(), &variants)
        );
        if write {
            let path = multitenant::layout::ExperimentDir::new(dir)
                .peer_summary(definitions.unwrap_or_default());
            std::fs::write(&path, serde_json::to_vec_pretty(&variants)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(verdict(&summary, fail_on_slo))
}

/// `coordinator export --format parquet`: writes the tables and says what they hold.
pub fn export(dir: &Path, output: Option<&Path>) -> anyhow::Result<()> {
    let out = output.map_or_else(
        || multitenant::layout::ExperimentDir::new(dir).file(multitenant::layout::EXPORT_DIR),
        Path::to_path_buf,
    );
    let exported = export::export_parquet(dir, &out)
        .with_context(|| format!("exporting {}", dir.display()))?;
    for warning in &exported.warnings {
        eprintln!("warning: {warning}");
    }
    for (path, rows) in &exported.files {
        println!("{}: {rows} rows", path.display());
    }
    if let Some((requests, _)) = exported.files.first() {
        println!(
            "query it, e.g.: duckdb -c \"SELECT tenant, quantile_cont((first_token_ns - sent_ns) / 1e6, 0.99) AS ttft_p99_ms FROM '{}' WHERE phase = 'measure' AND error_kind IS NULL GROUP BY tenant\"",
            requests.display()
        );
    }
    Ok(())
}

/// `coordinator run`: runs the experiment with locally spawned agents and prints the summary.
pub async fn run(
    config: &Path,
    output_dir: Option<&Path>,
    fail_on_slo: bool,
    cancel: CancellationToken,
) -> anyhow::Result<Verdict> {
    let outcome = run::run_experiment(config, output_dir, run::Launch::FromConfig, cancel).await?;
    print!("{}", report::render_table(&outcome.summary));
    let report = multitenant::layout::ExperimentDir::new(&outcome.dir)
        .file(multitenant::layout::REPORT_HTML);
    println!("report: {}", report.display());
    println!("results: {}", outcome.dir.display());
    let verdict = run_verdict(&outcome.summary, fail_on_slo);
    match verdict {
        Verdict::Interrupted => eprintln!(
            "coordinator: interrupted; what was recorded until then is summarised in {}",
            outcome.dir.display()
        ),
        Verdict::NoTrialFinished => eprintln!(
            "coordinator: no trial finished, so no figure above is valid (each trial's reason is printed above)"
        ),
        _ => {}
    }
    Ok(verdict)
}

/// Runs one command of the command line; `run` stops its experiment on Ctrl-C.
pub async fn execute(command: cli::Command) -> anyhow::Result<Verdict> {
    use cli::Command;
    match command {
        Command::Validate { config } => validate(&config).map(|()| Verdict::Done),
        Command::Analyze {
            dir,
            write,
            fail_on_slo,
            definitions,
        } => analyze(&dir, write, fail_on_slo, definitions.as_deref()),
        Command::Attach { dir, fail_on_slo } => attach::attach(&dir, fail_on_slo).await,
        Command::Export {
            dir,
            format: cli::ExportFormat::Parquet,
            output,
        } => export(&dir, output.as_deref()).map(|()| Verdict::Done),
        Command::BenchAnalysis {
            requests,
            tenants,
            chunks,
            dir,
            measure,
        } => match (measure, dir) {
            (Some(step), Some(dir)) => bench::measure(step, &dir),
            (_, dir) => bench::run(&bench::BenchSettings {
                requests,
                tenants,
                chunks,
                dir,
            }),
        }
        .map(|()| Verdict::Done),
        Command::BenchCapacity { config, output_dir } => {
            let cancel = CancellationToken::new();
            tokio::spawn(cancel_on_ctrl_c(cancel.clone()));
            bench_capacity::run(config.as_deref(), output_dir.as_deref(), cancel)
                .await
                .map(|()| Verdict::Done)
        }
        Command::Plan { config, output_dir } => plan(&config, &output_dir).map(|()| Verdict::Done),
        Command::Down { dir } => down(&dir).await.map(|()| Verdict::Done),
        Command::Pair {
            pairing,
            node,
            replace,
        } => {
            let pairing = if pairing == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .context("reading the pairing string from standard input")?;
                text
            } else {
                pairing
            };
            let agent = paired::pair(&pairing, &node, replace).await?;
            println!(
                "paired node {} with the agent at {} (host {}): a static launcher entry `{{node: {}}}` now reaches it",
                agent.node, agent.url, agent.hostname, agent.node
            );
            Ok(Verdict::Done)
        }
        Command::Agents => paired::print_agents().await.map(|()| Verdict::Done),
        Command::Compare { dirs, json, html } => {
            compare(&dirs, json.as_deref(), html.as_deref()).map(|()| Verdict::Done)
        }
        Command::Run {
            config,
            output_dir,
            fail_on_slo,
        } => {
            let cancel = CancellationToken::new();
            tokio::spawn(cancel_on_ctrl_c(cancel.clone()));
            run(&config, output_dir.as_deref(), fail_on_slo, cancel).await
        }
    }
}

/// First Ctrl-C, SIGTERM (what `timeout` and most supervisors send) or SIGHUP (a closed
/// terminal): stop the runs, collect what was recorded, tear down what was launched. Later ones
/// say what is still being waited for, and which clusters are still up; leaving early would
/// orphan the agents and clusters this process started.
pub async fn cancel_on_ctrl_c(cancel: CancellationToken) {
    use std::io::Write;
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = writeln!(
            std::io::stderr(),
            "cannot watch SIGTERM; only Ctrl-C stops the experiment in order"
        );
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
        return;
    };
    // Under `nohup` SIGHUP is ignored, and a run meant to outlive its terminal must not stop
    // when it closes: watching the signal would undo that.
    let mut hup = if sighup_ignored() {
        None
    } else {
        signal(SignalKind::hangup()).ok()
    };
    let mut first = true;
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let name = tokio::select! {
            r = tokio::signal::ctrl_c() => match r { Ok(()) => "Ctrl-C", Err(_) => return },
            _ = term.recv() => "SIGTERM",
            _ = hangup => "SIGHUP",
        };
        // Stop first: after a hangup the terminal is gone and writing to it fails.
        cancel.cancel();
        // Through the console, above the live view while one is drawn.
        if first {
            console::print_line(format_args!(
                "{name}: stopping the experiment; collecting what was recorded, then tearing down"
            ));
            first = false;
            continue;
        }
        console::print_line("still stopping: agents are closing their records and will be killed after 20 s at most");
        if let Some(clusters) = skypilot::still_up() {
            console::print_line(clusters);
        }
    }
}

/// Whether this process ignores SIGHUP (it was started under `nohup`), read from the
/// kernel's view of it (`SigIgn` in /proc/self/status, bit 0 being SIGHUP).
fn sighup_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 == 1)
}
