//! `agent bench --soak`: the load generator held at many open streams for a long time, with
//! its resident memory and schedule lag over time. A leak shows as memory that climbs while
//! the load stays level; a slow-down, as lag that grows.
//!
//! The simulated engine (in a child process) answers each request with 10 tokens a second
//! apart, and arrivals come at `streams / 10` per second, so about `streams` requests are open
//! at any time once the warmup has filled them. Every request goes through the same client and
//! JSONL recording as a real run, into a temporary folder removed at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use multitenant::config::{Arrival, SimTiming};
use multitenant::events::{Phase, RequestEvent};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::bench::{load_and_read, quantile, rss_mib, synthetic, ChildEngine};

/// Tokens per request; one a second.
const TOKENS: u32 = 10;
/// How long each request stays open.
const REQUEST_LEN: Duration = Duration::from_secs(TOKENS as u64);
/// Warmup before the measured phase: long enough for every stream to open.
const WARMUP: Duration = Duration::from_secs(2 * TOKENS as u64);
/// How often resident memory is read.
const RSS_EVERY: Duration = Duration::from_secs(2);

/// What to hold, for how long.
#[derive(Debug, Clone, Copy)]
pub struct SoakSettings {
    /// Open streams to hold.
    pub streams: u32,
    /// The measured phase, after the warmup.
    pub duration: Duration,
}

/// One window of the measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct SoakWindow {
    /// Start of the window, seconds into the measured phase.
    pub from_s: f64,
    /// Requests sent in it.
    pub sends: usize,
    /// Schedule lag of those sends, µs.
    pub lag_p50_us: f64,
    /// Schedule lag of those sends, µs.
    pub lag_p99_us: f64,
    /// Requests open at the window's middle.
    pub open_streams: usize,
    /// The most requests open at once in the window.
    pub peak_open: usize,
    /// Requests sent in it that waited for a new connection (none were left in the pool).
    pub connects: usize,
    /// Highest resident memory of the load generator read in the window, MiB.
    pub rss_mib: f64,
    /// Requests sent in it that failed.
    pub failed: usize,
}

/// The soak's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SoakFigures {
    /// Streams asked for.
    pub streams: u32,
    /// Arrivals per second.
    pub rate: f64,
    /// Length of the measured phase, seconds.
    pub duration_s: f64,
    /// The measured phase, window by window.
    pub windows: Vec<SoakWindow>,
    /// Lowest and highest resident memory read in the measured phase, MiB.
    pub rss_range_mib: (f64, f64),
    /// Highest minus lowest, as a percentage of the lowest.
    pub rss_band_pct: f64,
    /// Schedule lag p99 over the whole measured phase, µs.
    pub lag_p99_us: f64,
    /// Measured requests that failed.
    pub failed: usize,
}

/// Runs the soak, prints its figures, and writes them to `json` if given.
pub async fn run(
    settings: SoakSettings,
    json: Option<&Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    eprintln!("{}", crate::raise_fd_limit());
    let scratch = std::env::temp_dir().join(format!("multitenant-soak-{}", std::process::id()));
    let result = tokio::select! {
        figures = soak(settings, &scratch) => figures,
        () = shutdown.cancelled() => Err(anyhow::anyhow!("stopped")),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let figures = result?;
    print(&figures);
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn soak(settings: SoakSettings, scratch: &Path) -> anyhow::Result<SoakFigures> {
    let rate = f64::from(settings.streams) / REQUEST_LEN.as_secs_f64();
    eprintln!(
        "soak: {} streams ({rate:.0} requests/s of {} s each) for {} after a {} warmup (engine in a child process; SIMULATED timings)",
        settings.streams,
        REQUEST_LEN.as_secs(),
        humantime::format_duration(settings.duration),
        humantime::format_duration(WARMUP),
    );
    let engine = ChildEngine::start(&SimTiming {
        max_batch: settings.streams.saturating_mul(2),
        prefill_us_per_token: 0.0,
        decode_step_us: 1_000_000.0,
        decode_step_us_per_seq: 0.0,
        prefix_cache_tokens: 0,
        ..SimTiming::default()
    })
    .await?;
    let mut workload = synthetic(Arrival::Constant { rate }, settings.duration, 16, TOKENS);
    workload.warmup = WARMUP;
    workload.drain_timeout = REQUEST_LEN + Duration::from_secs(5);
    let began = Instant::now();
    let stop = CancellationToken::new();
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut ticks = tokio::time::interval(RSS_EVERY);
            while !stop.is_cancelled() {
                tokio::select! {
                    _ = ticks.tick() => samples.push((began.elapsed().as_secs_f64(), rss_mib())),
                    () = stop.cancelled() => {}
                }
            }
            samples
        })
    };
    let loaded = load_and_read(&engine.url, workload, &scratch.join("soak")).await;
    stop.cancel();
    let rss = sampler.await.unwrap_or_default();
    engine.stop().await;
    let (_, requests) = loaded?;
    Ok(figures(settings, rate, &requests, &rss))
}

/// The figures from the request events and the `(seconds since the load began, RSS MiB)`
/// samples: windows of a tenth of the measured phase (at least 10 s).
fn figures(
    settings: SoakSettings,
    rate: f64,
    requests: &[RequestEvent],
    rss: &[(f64, f64)],
) -> SoakFigures {
    let origin_ns = requests.iter().map(|r| r.scheduled_ns).min().unwrap_or(0);
    let at_s = |ns: u64| ns.saturating_sub(origin_ns) as f64 / 1e9;
    let warmup_s = WARMUP.as_secs_f64();
    let duration_s = settings.duration.as_secs_f64();
    let window_s = (duration_s / 10.0).max(10.0);
    let measured: Vec<&RequestEvent> = requests
        .iter()
        .filter(|r| r.phase == Phase::Measure)
        .collect();
    let lag_us = |r: &RequestEvent| r.sent_ns.saturating_sub(r.scheduled_ns) as f64 / 1e3;
    // Every send and end on the load's clock, in order, for the peak open in each window.
    let mut changes: Vec<(u64, i64)> = requests
        .iter()
        .flat_map(|r| [(r.sent_ns, 1), (r.done_ns, -1)])
        .collect();
    changes.sort_unstable();
    let (mut changes, mut open) = (changes.into_iter().peekable(), 0i64);
    let mut windows = Vec::new();
    let mut from_s = 0.0;
    while from_s < duration_s {
        let to_s = (from_s + window_s).min(duration_s);
        let inside: Vec<&&RequestEvent> = measured
            .iter()
            .filter(|r| (from_s..to_s).contains(&(at_s(r.sent_ns) - warmup_s)))
            .collect();
        let mut lags: Vec<f64> = inside.iter().map(|r| lag_us(r)).collect();
        while let Some((_, change)) = changes.next_if(|&(ns, _)| at_s(ns) - warmup_s < from_s) {
            open += change;
        }
        let mut peak_open = open;
        while let Some((_, change)) = changes.next_if(|&(ns, _)| at_s(ns) - warmup_s < to_s) {
            open += change;
            peak_open = peak_open.max(open);
        }
        let middle_s = warmup_s + (from_s + to_s) / 2.0;
        let open_streams = requests
            .iter()
            .filter(|r| at_s(r.sent_ns) <= middle_s && middle_s < at_s(r.done_ns))
            .count();
        let rss_mib = rss
            .iter()
            .filter(|(t, _)| (warmup_s + from_s..warmup_s + to_s).contains(t))
            .map(|&(_, mib)| mib)
            .fold(f64::NAN, f64::max);
        windows.push(SoakWindow {
            from_s,
            sends: inside.len(),
            lag_p50_us: quantile(&mut lags, 0.5),
            lag_p99_us: quantile(&mut lags, 0.99),
            open_streams,
            peak_open: usize::try_from(peak_open).unwrap_or(0),
            connects: inside.iter().filter(|r| r.connect_ns.is_some()).count(),
            rss_mib,
            failed: inside.iter().filter(|r| r.error.is_some()).count(),
        });
        from_s = to_s;
    }
    let in_measure: Vec<f64> = rss
        .iter()
        .filter(|(t, _)| (warmup_s..warmup_s + duration_s).contains(t))
        .map(|&(_, mib)| mib)
        .collect();
    let low = in_measure.iter().copied().fold(f64::NAN, f64::min);
    let high = in_measure.iter().copied().fold(f64::NAN, f64::max);
    let mut lags: Vec<f64> = measured.iter().map(|r| lag_us(r)).collect();
    SoakFigures {
        streams: settings.streams,
        rate,
        duration_s,
        windows,
        rss_range_mib: (low, high),
        rss_band_pct: (high - low) / low * 100.0,
        lag_p99_us: quantile(&mut lags, 0.99),
        failed: measured.iter().filter(|r| r.error.is_some()).count(),
    }
}

fn print(f: &SoakFigures) {
    println!(
        "soak: {} streams, {:.0} requests/s, {:.0} s measured (simulated engine, SIMULATED timings; this machine: {} cores)",
        f.streams,
        f.rate,
        f.duration_s,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("  from s    sends  lag p50 µs  lag p99 µs  open streams  peak open  connects  RSS MiB  failed");
    for w in &f.windows {
        println!(
            "  {:>6.0}  {:>7}  {:>10.1}  {:>10.1}  {:>12}  {:>9}  {:>8}  {:>7.1}  {:>6}",
            w.from_s,
            w.sends,
            w.lag_p50_us,
            w.lag_p99_us,
            w.open_streams,
            w.peak_open,
            w.connects,
            w.rss_mib,
            w.failed
        );
    }
    println!(
        "\n  RSS over the measured phase {:.1}–{:.1} MiB (a band of {:.1} %); schedule lag p99 {:.1} µs; {} failed",
        f.rss_range_mib.0, f.rss_range_mib.1, f.rss_band_pct, f.lag_p99_us, f.failed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(scheduled_s: f64, lag_us: u64, open_s: f64, phase: Phase) -> RequestEvent {
        let scheduled_ns = (scheduled_s * 1e9) as u64;
        let sent_ns = scheduled_ns + lag_us * 1_000;
        let done_ns = sent_ns + (open_s * 1e9) as u64;
        RequestEvent {
            id: format!("r{scheduled_s}"),
            phase,
            scheduled_ns,
            sent_ns,
            connect_ns: None,
            first_token_ns: Some(sent_ns + 1),
            last_token_ns: Some(done_ns),
            done_ns,
            chunk_gaps_us: Vec::new(),
            max_tokens: 1,
            prompt_tokens: Some(16),
            output_tokens: Some(1),
            token_source: None,
            status: Some(200),
            error: None,
            conversation: None,
            turn: None,
        }
    }

    #[test]
    fn windows_cut_the_measured_phase_and_count_what_each_holds() {
        let settings = SoakSettings {
            streams: 2,
            duration: Duration::from_secs(20),
        };
        let warmup = WARMUP.as_secs_f64();
        // One send a second from 0 s (the warmup's start), each open 10 s, lag 100 µs in the
        // first window and 300 µs in the second.
        let mut requests: Vec<RequestEvent> = (0..40)
            .map(|i| {
                let t = f64::from(i);
                let phase = if t < warmup {
                    Phase::Warmup
                } else {
                    Phase::Measure
                };
                let lag = if t < warmup + 10.0 { 100 } else { 300 };
                request(t, lag, 10.0, phase)
            })
            .collect();
        // And one short request 12.5 s in, on a connection of its own: one more open for a
        // moment, in neither window's middle.
        let mut extra = request(warmup + 12.5, 300, 0.1, Phase::Measure);
        extra.connect_ns = Some(150_000);
        requests.push(extra);
        let rss: Vec<(f64, f64)> = (0..40)
            .map(|i| (f64::from(i), 100.0 + f64::from(i) / 10.0))
            .collect();
        let f = figures(settings, 1.0, &requests, &rss);
        assert_eq!(f.windows.len(), 2);
        assert_eq!(
            f.windows.iter().map(|w| w.sends).collect::<Vec<_>>(),
            [10, 11]
        );
        assert_eq!(f.windows[0].lag_p99_us, 100.0);
        assert_eq!(f.windows[1].lag_p99_us, 300.0);
        // At the middle of each window, the sends of the 10 s before it are open; the short
        // request is the second window's peak and its one connect.
        let seen: Vec<_> = f
            .windows
            .iter()
            .map(|w| (w.open_streams, w.peak_open, w.connects))
            .collect();
        assert_eq!(seen, [(10, 10, 0), (10, 11, 1)]);
        let (low, high) = f.rss_range_mib;
        assert_eq!(
            (low, high),
            (100.0 + warmup / 10.0, 100.0 + (warmup + 19.0) / 10.0)
        );
        assert!((f.rss_band_pct - (high - low) / low * 100.0).abs() < 1e-9);
        assert_eq!(f.failed, 0);
    }
}
