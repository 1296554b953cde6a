//! `agent bench`: the load generator measured on the machine it runs on.
//!
//! Four stages, each against the simulated engine:
//! 1. Rising open-loop rates (engine in a child process): the highest rate held with schedule
//!    lag p99 under 1 ms, every request sent and none failed, and its streamed tokens/s.
//! 2. CPU time of this process (the load generator and its recording) per 1,000 streamed
//!    tokens, from `getrusage` over each rate stage.
//! 3. Peak resident memory with 10,000 streams open at once (engine in a child process).
//! 4. Measured-minus-true TTFT and ITL against the engine's own record of each token (engine in
//!    this process, since the record is kept in memory), at 64 and 1,000 concurrent streams
//!    after a 2 s warm-up, and at 256 streams started together with none (a cold start on the
//!    pool opened just before the load). The engine's true TTFT starts at the kernel's receive
//!    stamp of the request at its socket, so its own intake of a burst (read and parse, printed
//!    apart) is its latency, as at any server, and not the client's error.
//! 5. A trace replay (engine in a child process): the 2-minute BurstGPT sample of
//!    configs/traces, built into the binary, replayed ten times faster; schedule lag against
//!    each record's scaled time.
//!
//! Every figure goes through the same code as a real run: the same client, the same JSONL
//! recording (into a temporary folder removed at the end).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use multitenant::config::{
    Api, Arrival, ArrivalPlan, DataSource, LengthDist, SharingMode, SimFaults, SimTiming,
    SyntheticData, Workload,
};
use multitenant::events::{Phase, RequestEvent};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::engine::sim_gpu::SimGpu;
use crate::engine::simulated::{SimEngine, SimEngineConfig};
use crate::loadgen::{self, LoadReport};

/// Rates tried in stage 1, requests/s.
const RATES: [f64; 10] = [
    100.0, 200.0, 400.0, 600.0, 800.0, 1_000.0, 1_500.0, 2_000.0, 3_000.0, 4_000.0,
];
/// Schedule lag p99 a rate must stay under to count as held.
const LAG_BOUND: Duration = Duration::from_millis(1);
/// Output tokens per request in stage 1 and 2.
const RATE_STAGE_TOKENS: u32 = 64;

/// One rate of stage 1.
#[derive(Debug, Clone, Serialize)]
pub struct RateStage {
    /// Offered requests/s.
    pub offered: f64,
    /// Measured sends/s.
    pub achieved: f64,
    /// Schedule lag p50, µs.
    pub lag_p50_us: f64,
    /// Schedule lag p99, µs.
    pub lag_p99_us: f64,
    /// Content chunks received per second (one token each).
    pub streamed_tokens_per_s: f64,
    /// CPU time of this process (the load generator) per 1,000 streamed tokens, ms.
    pub cpu_ms_per_1k_tokens: f64,
    /// CPU time of the simulated engine's process per 1,000 streamed tokens, ms: what the
    /// engine took from the same cores.
    pub engine_cpu_ms_per_1k_tokens: f64,
    /// Failed requests.
    pub failed: usize,
    /// Whether the rate was held: lag p99 under the bound, ≥ 99% of the offered rate sent,
    /// nothing failed.
    pub held: bool,
}

/// Stage 3.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryStage {
    /// Streams open at once.
    pub streams: u32,
    /// Most streams seen open at one time (sent, not yet done).
    pub peak_open: usize,
    /// Resident memory before the stage, MiB.
    pub rss_before_mib: f64,
    /// Peak resident memory during it, MiB.
    pub rss_peak_mib: f64,
    /// (peak − before) / streams, KiB.
    pub kib_per_stream: f64,
}

/// One concurrency of stage 4, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct TruthStage {
    /// Concurrent streams.
    pub streams: u32,
    /// Warm-up before the measured requests, ms; at 0 every stream starts at once, cold.
    pub warmup_ms: u64,
    /// Requests compared (every phase).
    pub requests: usize,
    /// Of those, the requests that waited for a new connection (`connect_ns` recorded).
    pub connects: usize,
    /// Of those, the requests the kernel gave no receive stamp (their truth starts at the
    /// engine's handler, so their error holds the engine's intake).
    pub unstamped: usize,
    /// Measured − true TTFT, p50. The engine's true TTFT runs from the kernel's receive stamp
    /// of the request's first bytes at its socket to the first token handed to its response.
    pub ttft_err_p50_ms: f64,
    /// Measured − true TTFT, p99.
    pub ttft_err_p99_ms: f64,
    /// Of the TTFT error, the way in: sent to the request's first bytes at the engine's socket,
    /// p99 (the client's write and the loopback).
    pub request_path_p99_ms: f64,
    /// Inside the engine's truth: its socket to its handler holding the parsed request, p99
    /// (the engine's read and parse; the wait a burst of requests meets at any server).
    pub engine_intake_p99_ms: f64,
    /// The way out: the first token handed to the response body to the client reading it, p99.
    pub response_path_p99_ms: f64,
    /// Measured − true gap between consecutive tokens, p50.
    pub itl_err_p50_ms: f64,
    /// Measured − true gap, p99.
    pub itl_err_p99_ms: f64,
}

/// Stage 5.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayStage {
    /// Records replayed.
    pub records: usize,
    /// The replay's speed-up.
    pub time_scale: f64,
    /// Its length, s.
    pub seconds: f64,
    /// Records sent, of `records`.
    pub sent: usize,
    /// Schedule lag p50, µs.
    pub lag_p50_us: f64,
    /// Schedule lag p99, µs.
    pub lag_p99_us: f64,
    /// Largest schedule lag, µs.
    pub lag_max_us: f64,
}

/// Every figure of a bench run.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Stage 1 and 2, in the order run.
    pub rates: Vec<RateStage>,
    /// Stage 3.
    pub memory: MemoryStage,
    /// Stage 4.
    pub truth: Vec<TruthStage>,
    /// Stage 5.
    pub replay: ReplayStage,
}

/// The BurstGPT-format sample of configs/traces (2 minutes, 504 usable records).
const BURSTGPT_SAMPLE: &str = include_str!("../../configs/traces/burstgpt-sample.csv");
/// How much faster stage 5 replays it.
const REPLAY_SCALE: f64 = 10.0;

/// Runs the bench, prints the figures, and writes them to `json` if given.
pub async fn run(
    quick: bool,
    json: Option<&Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    eprintln!("{}", crate::raise_fd_limit());
    let scratch = std::env::temp_dir().join(format!("multitenant-bench-{}", std::process::id()));
    let result = stages(quick, &scratch, &shutdown).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let figures = result?;
    print(&figures);
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn stages(
    quick: bool,
    scratch: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<Figures> {
    let stage_len = if quick {
        Duration::from_millis(1_500)
    } else {
        Duration::from_secs(3)
    };
    eprintln!("bench: stage 1-2, rising rates (engine in a child process)");
    let engine = ChildEngine::start(&SimTiming {
        max_batch: 8_192,
        prefill_us_per_token: 0.0,
        decode_step_us: 10_000.0,
        decode_step_us_per_seq: 0.0,
        prefix_cache_tokens: 0,
        ..SimTiming::default()
    })
    .await?;
    let mut rates = Vec::new();
    for (i, &rate) in RATES.iter().enumerate() {
        if shutdown.is_cancelled() {
            bail!("stopped");
        }
        let workload = synthetic(Arrival::Constant { rate }, stage_len, 16, RATE_STAGE_TOKENS);
        let dir = scratch.join(format!("rate-{i}"));
        let (cpu_before, engine_before) = (cpu_seconds(), engine.cpu_seconds());
        let (_, requests) = load_and_read(&engine.url, workload, &dir).await?;
        let cpu = (
            cpu_seconds() - cpu_before,
            engine.cpu_seconds() - engine_before,
        );
        let stage = rate_stage(rate, stage_len, &requests, cpu);
        eprintln!(
            "  {:>6.0}/s: achieved {:>7.1}/s, lag p99 {:>7.1} µs, {:>8.0} tokens/s, CPU per 1k tokens {:.2} ms (engine {:.2} ms){}",
            stage.offered,
            stage.achieved,
            stage.lag_p99_us,
            stage.streamed_tokens_per_s,
            stage.cpu_ms_per_1k_tokens,
            stage.engine_cpu_ms_per_1k_tokens,
            if stage.held { "" } else { "  (not held)" }
        );
        rates.push(stage);
        // One stage can miss by a hiccup of the machine; two in a row is the ceiling.
        if rates.iter().rev().take(2).filter(|r| !r.held).count() == 2 {
            break;
        }
    }
    engine.stop().await;

    let streams: u32 = if quick { 2_000 } else { 10_000 };
    eprintln!("bench: stage 3, {streams} streams open at once (engine in a child process)");
    let engine = ChildEngine::start(&SimTiming {
        max_batch: streams,
        prefill_us_per_token: 0.0,
        decode_step_us: 1_000_000.0,
        decode_step_us_per_seq: 0.0,
        prefix_cache_tokens: 0,
        ..SimTiming::default()
    })
    .await?;
    let memory = memory_stage(&engine.url, streams, &scratch.join("memory")).await?;
    engine.stop().await;

    eprintln!("bench: stage 4, measured against the engine's record (engine in this process)");
    let mut truth = Vec::new();
    // 256 streams with no warm-up start together on a pool opened just before: the cold start
    // that lifted TTFT p99 by tens of ms when each first request paid its own TCP connect.
    let stages = [
        (64, WARM),
        (256, Duration::ZERO),
        (if quick { 500 } else { 1_000 }, WARM),
    ];
    for (streams, warmup) in stages {
        truth.push(
            truth_stage(
                streams,
                warmup,
                stage_len,
                &scratch.join(format!("truth-{streams}-{}", warmup.as_millis())),
            )
            .await?,
        );
    }
    eprintln!(
        "bench: stage 5, a 2-minute trace replayed ×{REPLAY_SCALE} (engine in a child process)"
    );
    let engine = ChildEngine::start(&SimTiming {
        max_batch: 1_024,
        prefill_us_per_token: 0.0,
        decode_step_us: 10_000.0,
        decode_step_us_per_seq: 0.0,
        prefix_cache_tokens: 0,
        ..SimTiming::default()
    })
    .await?;
    let replay = replay_stage(&engine.url, &scratch.join("replay")).await;
    engine.stop().await;
    Ok(Figures {
        rates,
        memory,
        truth,
        replay: replay?,
    })
}

/// Replays the built-in BurstGPT sample against the engine at `url`, recording into `dir`.
async fn replay_stage(url: &str, dir: &Path) -> anyhow::Result<ReplayStage> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("burstgpt-sample.csv");
    std::fs::write(&path, BURSTGPT_SAMPLE)
        .with_context(|| format!("writing {}", path.display()))?;
    let window = multitenant::trace::TraceWindow {
        start: Duration::ZERO,
        limit: None,
        column: None,
    };
    let format = multitenant::trace::TraceFormat::BurstGpt;
    let trace = multitenant::trace::Trace::load(&path, format, &window)?;
    let span = trace.span().div_f64(REPLAY_SCALE);
    let mut workload = synthetic(
        Arrival::Trace {
            time_scale: REPLAY_SCALE,
        },
        span + Duration::from_millis(1),
        1,
        1,
    );
    workload.warmup = Duration::ZERO;
    workload.data = DataSource::Trace(multitenant::config::TraceData {
        format,
        path,
        window,
        tenant_map: None,
    });
    let (_, requests) = load_and_read(url, workload, &dir.join("load")).await?;
    let mut lags: Vec<f64> = requests.iter().map(|r| lag_ns(r) as f64 / 1e3).collect();
    Ok(ReplayStage {
        records: trace.records.len(),
        time_scale: REPLAY_SCALE,
        seconds: span.as_secs_f64(),
        sent: requests.len(),
        lag_p50_us: quantile(&mut lags, 0.5),
        lag_p99_us: quantile(&mut lags, 0.99),
        lag_max_us: lags.iter().copied().fold(0.0, f64::max),
    })
}

/// How late `r` was handed to the client after its scheduled time (a connect it waited for
/// is not lag: it is recorded apart).
fn lag_ns(r: &RequestEvent) -> u64 {
    let handed_over = r.sent_ns.saturating_sub(r.connect_ns.unwrap_or(0));
    handed_over.saturating_sub(r.scheduled_ns)
}

/// A streaming chat workload of fixed lengths, warmed up for 0.5 s.
pub(crate) fn synthetic(
    arrival: Arrival,
    duration: Duration,
    prompt: u32,
    output: u32,
) -> Workload {
    Workload {
        api: Api::Chat,
        stream: true,
        arrival: ArrivalPlan::Single(arrival),
        data: DataSource::Synthetic(SyntheticData {
            prompt_tokens: LengthDist::Fixed(prompt),
            output_tokens: LengthDist::Fixed(output),
        }),
        tokenizer: None,
        warmup: Duration::from_millis(500),
        duration,
        max_requests: None,
        drain_timeout: Duration::from_secs(5),
        ignore_eos: true,
        request_fields: serde_json::Map::new(),
        keep_responses: 0,
        slo: multitenant::slo::Slo::default(),
    }
}

/// Drives `workload` at `url` into `dir` and returns its report and request events.
pub(crate) async fn load_and_read(
    url: &str,
    workload: Workload,
    dir: &Path,
) -> anyhow::Result<(LoadReport, Vec<RequestEvent>)> {
    let recorded =
        loadgen::standalone::record_workload(url, "bench", workload, dir, "bench", 1).await?;
    Ok((recorded.report, recorded.requests))
}

/// The figures of one rate: lag and rate over the measured phase, CPU over the whole stage
/// against every token of the stage.
/// `cpu_s` is (this process, the engine's) CPU seconds over the stage.
fn rate_stage(
    offered: f64,
    len: Duration,
    requests: &[RequestEvent],
    cpu_s: (f64, f64),
) -> RateStage {
    let measured: Vec<&RequestEvent> = requests
        .iter()
        .filter(|r| r.phase == Phase::Measure)
        .collect();
    let mut lags: Vec<f64> = measured.iter().map(|r| lag_ns(r) as f64 / 1e3).collect();
    let failed = measured.iter().filter(|r| r.error.is_some()).count();
    let tokens = |rs: &mut dyn Iterator<Item = &RequestEvent>| -> usize {
        rs.filter(|r| r.first_token_ns.is_some())
            .map(|r| r.chunk_gaps_us.len() + 1)
            .sum()
    };
    let measured_tokens = tokens(&mut measured.iter().copied());
    let all_tokens = tokens(&mut requests.iter());
    let achieved = measured.len() as f64 / len.as_secs_f64();
    let (lag_p50_us, lag_p99_us) = (quantile(&mut lags, 0.5), quantile(&mut lags, 0.99));
    RateStage {
        offered,
        achieved,
        lag_p50_us,
        lag_p99_us,
        streamed_tokens_per_s: measured_tokens as f64 / len.as_secs_f64(),
        cpu_ms_per_1k_tokens: cpu_s.0 * 1e3 / all_tokens.max(1) as f64 * 1e3,
        engine_cpu_ms_per_1k_tokens: cpu_s.1 * 1e3 / all_tokens.max(1) as f64 * 1e3,
        failed,
        held: lag_p99_us < LAG_BOUND.as_secs_f64() * 1e6
            && achieved >= offered * 0.99
            && failed == 0,
    }
}

async fn memory_stage(url: &str, streams: u32, dir: &Path) -> anyhow::Result<MemoryStage> {
    let before = rss_mib();
    let stop = CancellationToken::new();
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = 0f64;
            while !stop.is_cancelled() {
                peak = peak.max(rss_mib());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    // Each request lasts 8 s (8 steps of 1 s): every stream stays open through the 4 s
    // measured after a 3 s warmup in which the streams open one by one.
    let mut workload = synthetic(
        Arrival::Concurrency { n: streams },
        Duration::from_secs(4),
        16,
        8,
    );
    workload.warmup = Duration::from_secs(3);
    workload.drain_timeout = Duration::from_millis(500);
    let (_, requests) = load_and_read(url, workload, dir).await?;
    stop.cancel();
    let peak = sampler.await.unwrap_or(0.0);
    let mut edges: Vec<(u64, i64)> = requests
        .iter()
        .flat_map(|r| [(r.sent_ns, 1), (r.done_ns, -1)])
        .collect();
    edges.sort_unstable();
    let (mut open, mut peak_open) = (0i64, 0i64);
    for (_, step) in edges {
        open += step;
        peak_open = peak_open.max(open);
    }
    Ok(MemoryStage {
        streams,
        peak_open: usize::try_from(peak_open).unwrap_or(0),
        rss_before_mib: before,
        rss_peak_mib: peak,
        kib_per_stream: (peak - before) * 1024.0 / f64::from(streams),
    })
}

/// The warm-up of stage 4's warm concurrencies.
const WARM: Duration = Duration::from_secs(2);

async fn truth_stage(
    streams: u32,
    warmup: Duration,
    len: Duration,
    dir: &Path,
) -> anyhow::Result<TruthStage> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = SimEngineConfig {
        model: "bench".into(),
        adapters: Vec::new(),
        timing: SimTiming {
            max_batch: streams,
            prefill_us_per_token: 0.0,
            decode_step_us: 25_000.0,
            decode_step_us_per_seq: 0.0,
            prefix_cache_tokens: 0,
            ..SimTiming::default()
        },
        faults: SimFaults::default(),
        seed: 1,
        record_truth: true,
    };
    let engine = SimEngine::start(
        listener,
        config,
        Arc::new(SimGpu::new(SharingMode::Solo, 0.0)),
    )?;
    let mut workload = synthetic(
        Arrival::Concurrency { n: streams },
        len.max(Duration::from_secs(3)),
        16,
        64,
    );
    workload.warmup = warmup;
    let recorded = loadgen::standalone::record_workload(
        &engine.base_url(),
        "bench",
        workload,
        dir,
        "bench",
        1,
    )
    .await?;
    let (clock, requests) = (recorded.clock, recorded.requests);
    let connects = requests.iter().filter(|r| r.connect_ns.is_some()).count();
    let (mut ttft, mut itl) = (Vec::new(), Vec::new());
    let (mut way_in, mut intake, mut way_out) = (Vec::new(), Vec::new(), Vec::new());
    let (mut compared, mut unstamped) = (0, 0);
    for r in requests.iter().filter(|r| r.error.is_none()) {
        let (Some(truth), Some(first)) = (engine.truth(&r.id), r.first_token_ns) else {
            continue;
        };
        unstamped += usize::from(truth.arrived.is_none());
        let arrived = truth.start();
        compared += 1;
        let true_ttft = truth.emitted[0].duration_since(arrived).as_nanos() as f64;
        let measured_ttft = (first - r.sent_ns) as f64;
        ttft.push((measured_ttft - true_ttft) / 1e6);
        // The engine runs in this process, so its instants read on the load's own clock.
        let (arrived_ns, emitted) = (clock.ns_at(arrived), clock.ns_at(truth.emitted[0]));
        way_in.push((arrived_ns as f64 - r.sent_ns as f64) / 1e6);
        intake.push(truth.received.duration_since(arrived).as_nanos() as f64 / 1e6);
        way_out.push((first as f64 - emitted as f64) / 1e6);
        for (gap_us, w) in r.chunk_gaps_us.iter().zip(truth.emitted.windows(2)) {
            let true_gap = w[1].duration_since(w[0]).as_nanos() as f64;
            itl.push((*gap_us as f64 * 1e3 - true_gap) / 1e6);
        }
    }
    engine.stop().await;
    if compared == 0 {
        bail!(
            "no request of the {streams}-stream stage could be compared with the engine's record"
        );
    }
    Ok(TruthStage {
        streams,
        warmup_ms: u64::try_from(warmup.as_millis()).unwrap_or(u64::MAX),
        requests: compared,
        connects,
        unstamped,
        ttft_err_p50_ms: quantile(&mut ttft, 0.5),
        ttft_err_p99_ms: quantile(&mut ttft, 0.99),
        request_path_p99_ms: quantile(&mut way_in, 0.99),
        engine_intake_p99_ms: quantile(&mut intake, 0.99),
        response_path_p99_ms: quantile(&mut way_out, 0.99),
        itl_err_p50_ms: quantile(&mut itl, 0.5),
        itl_err_p99_ms: quantile(&mut itl, 0.99),
    })
}

fn print(f: &Figures) {
    println!(
        "load generator bench (simulated engine, SIMULATED timings; this machine: {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("  offered/s  achieved/s  lag p50 µs  lag p99 µs  tokens/s  CPU ms/1k tokens  engine CPU  held");
    for r in &f.rates {
        println!(
            "  {:>9.0}  {:>10.1}  {:>10.1}  {:>10.1}  {:>8.0}  {:>16.2}  {:>10.2}  {}",
            r.offered,
            r.achieved,
            r.lag_p50_us,
            r.lag_p99_us,
            r.streamed_tokens_per_s,
            r.cpu_ms_per_1k_tokens,
            r.engine_cpu_ms_per_1k_tokens,
            if r.held { "yes" } else { "no" }
        );
    }
    match f.rates.iter().rfind(|r| r.held) {
        Some(best) => println!(
            "\n  highest rate held (lag p99 < 1 ms, ≥ 99% sent, no failure): {:.0} requests/s, {:.0} streamed tokens/s, {:.2} ms CPU per 1,000 tokens",
            best.offered, best.streamed_tokens_per_s, best.cpu_ms_per_1k_tokens
        ),
        None => println!("\n  no rate was held"),
    }
    let m = &f.memory;
    println!(
        "  {} streams (peak {} open at once): RSS {:.1} MiB before, {:.1} MiB peak, {:.1} KiB per stream",
        m.streams, m.peak_open, m.rss_before_mib, m.rss_peak_mib, m.kib_per_stream
    );
    for t in &f.truth {
        println!(
            "  measured − true at {} streams, warm-up {} ms ({} requests, {} waited for a connect, {} unstamped): TTFT p50 {:.3} ms, p99 {:.3} ms (way in p99 {:.3} ms, way out p99 {:.3} ms; the engine's own intake p99 {:.3} ms); ITL p50 {:.3} ms, p99 {:.3} ms",
            t.streams, t.warmup_ms, t.requests, t.connects, t.unstamped, t.ttft_err_p50_ms, t.ttft_err_p99_ms, t.request_path_p99_ms, t.response_path_p99_ms, t.engine_intake_p99_ms, t.itl_err_p50_ms, t.itl_err_p99_ms
        );
    }
    let r = &f.replay;
    println!(
        "  trace replay ×{} ({} of {} records in {:.1} s): schedule lag p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        r.time_scale, r.sent, r.records, r.seconds, r.lag_p50_us, r.lag_p99_us, r.lag_max_us
    );
}

/// A simulated engine in a child process (`agent sim-engine`), stopped by its PID.
pub(crate) struct ChildEngine {
    child: tokio::process::Child,
    /// Where it serves.
    pub url: String,
}

impl ChildEngine {
    /// Starts one with `timing` and waits until it listens.
    pub async fn start(timing: &SimTiming) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the agent binary")?;
        let mut child = tokio::process::Command::new(&exe)
            .args(["sim-engine", "--listen", "127.0.0.1:0", "--model", "bench"])
            .args(["--max-batch", &timing.max_batch.to_string()])
            .args(["--decode-step-us", &timing.decode_step_us.to_string()])
            .args([
                "--decode-step-us-per-seq",
                &timing.decode_step_us_per_seq.to_string(),
            ])
            .args([
                "--prefill-us-per-token",
                &timing.prefill_us_per_token.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} sim-engine", exe.display()))?;
        let stdout = child.stdout.take().context("the engine's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the simulated engine did not start within 10 s")??
            .context("the simulated engine exited before it listened")?;
        let url = line
            .split(" on ")
            .nth(1)
            .context("unexpected first line from the simulated engine")?
            .trim()
            .to_owned();
        Ok(Self { child, url })
    }

    /// User plus system CPU time of the engine process so far, seconds (0 if unreadable).
    fn cpu_seconds(&self) -> f64 {
        let Some(pid) = self.child.id() else {
            return 0.0;
        };
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // Fields after the command name's closing parenthesis start at field 3;
                // utime and stime are fields 14 and 15.
                let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / ticks)
            })
            .unwrap_or(0.0)
    }

    /// Kills it and waits for its end.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// User plus system CPU time of this process so far, seconds.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// Resident memory of this process now, MiB (0 where /proc is missing).
pub(crate) fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The `q` quantile of `values` (sorted in place), nearest rank; NaN when empty.
pub(crate) fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}
