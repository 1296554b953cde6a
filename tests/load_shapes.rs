//! The load generator against its own definitions: realised arrivals of seeded runs, limits by
//! duration and by count, extra request fields, and a server that does not deliver the asked
//! length.

use std::path::Path;
use std::time::Duration;

use multitenant::analysis::analyze_dir;
use multitenant::config::{Arrival, ArrivalPlan, SimFaults, SimTiming, Spacing, Workload};
use multitenant::events::{read_stream, ErrorKind, Event, Phase, RequestEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{constant_workload, record_load, sim_engine};

/// An engine fast enough that it never holds the load generator back.
fn fast_timing() -> SimTiming {
    SimTiming {
        max_batch: 256,
        prefill_us_per_token: 0.0,
        decode_step_us: 1_000.0,
        decode_step_us_per_seq: 0.0,
        prefix_cache_tokens: 0,
        ..SimTiming::default()
    }
}

fn workload(arrival: Arrival, duration_s: u64) -> Workload {
    let mut w = constant_workload(1.0, Duration::from_secs(duration_s), 4, 2);
    w.arrival = ArrivalPlan::Single(arrival);
    w
}

/// Mean and coefficient of variation of the gaps between consecutive instants, in seconds.
fn gap_stats(instants: impl Iterator<Item = u64>) -> (f64, f64) {
    let mut sorted: Vec<u64> = instants.collect();
    sorted.sort_unstable();
    let gaps: Vec<f64> = sorted
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e9)
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    (mean, var.sqrt() / mean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: sends held to their schedule; scripts/test.sh runs it alone"]
async fn seeded_runs_realise_each_arrival_process() {
    // Holds the sends to their schedule (median under 0.25 ms, p99 under 5 ms): beside the
    // suite's other tests it measured their load (14 ms in CI), so it runs alone.
    let engine = sim_engine(fast_timing(), SimFaults::default()).await;
    let url = engine.base_url();
    // (process, expected mean gap s, expected cv, allowed cv error). A run of ~4 s at 150/s
    // gives ~600 gaps: a sample cv is within ±0.12 of 1 (Poisson) with 3 standard errors;
    // gamma with cv 2 has heavier tails and gets ±0.4. The mean gap is held to 4 standard
    // errors, 4·cv/√n of the mean (and 1% for constant gaps).
    //
    // The process is judged on the schedule the generator drew (scheduled_ns), and the sends
    // on their lag behind it: a constant schedule's gaps are exact, while the realised gaps
    // carry the machine's wake-up jitter (CI measured a cv of 0.22 for the 6.7 ms constant
    // gap with every send within 2 ms of its schedule).
    let cases = [
        (Arrival::Constant { rate: 150.0 }, 1.0 / 150.0, 0.0, 0.01),
        (Arrival::Poisson { rate: 150.0 }, 1.0 / 150.0, 1.0, 0.12),
        (
            Arrival::Gamma {
                rate: 150.0,
                cv: 2.0,
            },
            1.0 / 150.0,
            2.0,
            0.4,
        ),
    ];
    let dirs: Vec<tempfile::TempDir> = cases
        .iter()
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let runs = cases
        .iter()
        .zip(&dirs)
        .map(|((arrival, ..), dir)| record_load(&url, workload(*arrival, 4), dir.path()));
    let results = futures_util::future::join_all(runs).await;
    for (((arrival, mean_gap, cv, cv_err), (report, _, requests)), dir) in
        cases.iter().zip(&results).zip(&dirs)
    {
        assert_eq!(requests.len() as u64, report.sent, "{arrival:?}");
        // The drain records how many arrivals the schedule drew: every one was sent.
        assert_eq!(
            drain_scheduled(&dir.path().join("solo/t.jsonl")),
            Some(report.sent),
            "{arrival:?}"
        );
        assert!(requests.iter().all(|r| r.error.is_none()), "{arrival:?}");
        let (mean, got_cv) = gap_stats(requests.iter().map(|r| r.scheduled_ns));
        let (sent_mean, sent_cv) = gap_stats(requests.iter().map(|r| r.sent_ns));
        eprintln!(
            "{arrival:?}: {} sends, scheduled gap mean {:.3} ms cv {got_cv:.3}; \
             sent gap mean {:.3} ms cv {sent_cv:.3}",
            requests.len(),
            mean * 1e3,
            sent_mean * 1e3
        );
        let allowed = mean_gap * (4.0 * cv / (requests.len() as f64).sqrt()).max(0.01);
        assert!(
            (mean - mean_gap).abs() < allowed,
            "{arrival:?}: scheduled mean gap {mean}"
        );
        assert!(
            (sent_mean - mean_gap).abs() < allowed,
            "{arrival:?}: sent mean gap {sent_mean}"
        );
        // Each send happened when its schedule said: the realised process is the seeded one.
        // The median send is held tight, since a scheduler that slept on tokio's 1 ms timer
        // wheel would put it near 0.5 ms (this one measures 0.03 ms); the tail is held to
        // 5 ms, which a scheduler that lost its place would pass by tens of milliseconds. The
        // tail alone is the machine's: 0.2 ms here idle, 2.5 ms once in CI for the burstiest
        // process, with the same code.
        let mut lags: Vec<u64> = requests
            .iter()
            .map(|r| r.sent_ns - r.scheduled_ns)
            .collect();
        lags.sort_unstable();
        let lag_ms = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize] as f64 / 1e6;
        let (p50_ms, p99_ms) = (lag_ms(0.5), lag_ms(0.99));
        eprintln!(
            "{arrival:?}: schedule lag p50 {p50_ms:.3} ms, p99 {p99_ms:.3} ms, max {:.3} ms",
            lag_ms(1.0)
        );
        assert!(p50_ms < 0.25, "{arrival:?}: schedule lag p50 {p50_ms} ms");
        assert!(p99_ms < 5.0, "{arrival:?}: schedule lag p99 {p99_ms} ms");
        assert!(
            (got_cv - cv).abs() < *cv_err,
            "{arrival:?}: scheduled cv {got_cv}"
        );
    }
    engine.stop().await;
}

/// A ramp from 50/s to 250/s over 4 s: the first second averages 75/s and the last 225/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_run_climbs_from_one_rate_to_the_other() {
    let engine = sim_engine(fast_timing(), SimFaults::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let arrival = Arrival::Ramp {
        from: 50.0,
        to: 250.0,
        spacing: Spacing::Constant,
    };
    let (_, _, requests) = record_load(&engine.base_url(), workload(arrival, 4), dir.path()).await;
    let start = requests
        .iter()
        .map(|r| r.scheduled_ns)
        .min()
        .expect("requests");
    let in_second = |s: u64| {
        requests
            .iter()
            .filter(|r| (r.sent_ns - start) / 1_000_000_000 == s)
            .count() as i64
    };
    for (second, expected) in [(0, 75), (1, 125), (2, 175), (3, 225)] {
        let got = in_second(second);
        assert!(
            (got - expected).abs() <= 3,
            "second {second}: {got} sends, expected {expected}"
        );
    }
    engine.stop().await;
}

/// `phase` events of the stream at `path`.
fn phases(path: &Path) -> Vec<(Phase, u64)> {
    read_stream(path)
        .expect("stream")
        .events
        .into_iter()
        .filter_map(|l| match l.event {
            Event::Phase(p) => Some((p.phase, p.at_ns)),
            _ => None,
        })
        .collect()
}

/// The count of measure-phase arrivals the drain phase event of the stream at `path` records.
fn drain_scheduled(path: &Path) -> Option<u64> {
    read_stream(path)
        .expect("stream")
        .events
        .into_iter()
        .find_map(|l| match l.event {
            Event::Phase(p) if p.phase == Phase::Drain => p.scheduled,
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duration_ends_the_run_on_time_with_every_request_accounted_for() {
    // Each request takes 200 steps of 20 ms: 4 s, far past the 1 s phase and 0.5 s drain.
    let slow = SimTiming {
        max_batch: 64,
        prefill_us_per_token: 0.0,
        decode_step_us: 20_000.0,
        decode_step_us_per_seq: 0.0,
        prefix_cache_tokens: 0,
        ..SimTiming::default()
    };
    let engine = sim_engine(slow, SimFaults::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = constant_workload(10.0, Duration::from_secs(1), 4, 200);
    w.drain_timeout = Duration::from_millis(500);
    let (report, _, requests) = record_load(&engine.base_url(), w, dir.path()).await;
    assert_eq!(report.sent, 10, "10/s for 1 s");
    assert_eq!(requests.len(), 10, "every request sent has its event");
    for r in &requests {
        let error = r.error.as_ref().expect("cut off by the drain timeout");
        assert_eq!(error.kind, ErrorKind::Cancelled, "{r:?}");
        assert!(
            r.first_token_ns.is_some(),
            "{}: its first tokens are kept",
            r.id
        );
    }
    let phases = phases(&dir.path().join("solo/t.jsonl"));
    let at = |p: Phase| phases.iter().find(|(q, _)| *q == p).map(|(_, t)| *t);
    let (measure, drain, done) = (
        at(Phase::Measure).expect("measure"),
        at(Phase::Drain).expect("drain"),
        at(Phase::Done).expect("done"),
    );
    let ms = |ns: u64| ns as f64 / 1e6;
    assert!(
        (ms(drain - measure) - 1_000.0).abs() < 50.0,
        "measure lasted {} ms",
        ms(drain - measure)
    );
    assert!(
        (ms(done - drain) - 500.0).abs() < 100.0,
        "drain lasted {} ms",
        ms(done - drain)
    );

    // A count limit that comes first ends sending at that count.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = constant_workload(50.0, Duration::from_secs(10), 4, 2);
    w.max_requests = Some(25);
    let started = std::time::Instant::now();
    let (report, _, requests) = record_load(&engine.base_url(), w, dir.path()).await;
    assert_eq!((report.sent, requests.len()), (25, 25));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopped at the count, not the duration"
    );
    engine.stop().await;
}

/// An open loop whose server holds every request: past the load generator's in-flight cap
/// (here 30), arrivals are not sent but recorded as `client` errors that name the cap (which
/// the summary's load checks count apart from the engine's failures), and the trial still
/// ends on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_past_its_in_flight_cap_records_client_errors_not_engine_failures() {
    // Each request takes 100 steps of 100 ms: 10 s, past the 2 s phase and its 0.5 s drain.
    let stuck = SimTiming {
        max_batch: 1_000,
        prefill_us_per_token: 0.0,
        decode_step_us: 100_000.0,
        decode_step_us_per_seq: 0.0,
        prefix_cache_tokens: 0,
        ..SimTiming::default()
    };
    let engine = sim_engine(stuck, SimFaults::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = constant_workload(50.0, Duration::from_secs(2), 4, 100);
    w.drain_timeout = Duration::from_millis(500);
    let began = std::time::Instant::now();
    let recorded = agent::loadgen::standalone::record_workload_capped(
        &engine.base_url(),
        "sim",
        w,
        dir.path(),
        "solo",
        5,
        30,
    )
    .await
    .expect("drive");
    let requests = &recorded.requests;
    assert_eq!(requests.len(), 100, "50/s for 2 s, every arrival recorded");
    let (not_sent, sent): (Vec<&RequestEvent>, Vec<&RequestEvent>) =
        requests.iter().partition(|r| {
            r.error
                .as_ref()
                .is_some_and(|e| e.kind == ErrorKind::Client)
        });
    assert_eq!(
        sent.len(),
        30,
        "the first 30 fill the cap and stay in flight"
    );
    assert!(
        sent.iter().all(|r| r
            .error
            .as_ref()
            .is_some_and(|e| e.kind == ErrorKind::Cancelled)),
        "the 30 in flight are cut off by the drain timeout, not failed"
    );
    for r in &not_sent {
        let message = &r.error.as_ref().expect("error").message;
        assert!(
            message.contains("30 requests of this tenant were already in flight"),
            "{message}"
        );
        assert_eq!(r.sent_ns, r.done_ns, "{}: never sent", r.id);
    }
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "the 2 s phase and 0.5 s drain took {:?}",
        began.elapsed()
    );
    engine.stop().await;
}

/// A server that answers every request with one token whatever was asked, and hands each
/// request body it got to the test.
async fn one_token_server() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    let _ = tx.send(serde_json::from_str(&body[..length]).unwrap_or_default());
                    let answer = r#"{"choices":[{"index":0,"text":"hi"}],"usage":{"prompt_tokens":4,"completion_tokens":1}}"#;
                    let response = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}", answer.len());
                    let _ = socket.write_all(response.as_bytes()).await;
                    buf.clear();
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_fields_are_sent_and_short_outputs_are_reported_not_averaged_in() {
    let (url, mut bodies) = one_token_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = constant_workload(20.0, Duration::from_secs(1), 4, 8);
    w.api = multitenant::config::Api::Completions;
    w.stream = false;
    w.request_fields = serde_json::json!({"temperature": 0.25, "top_p": 0.5, "min_tokens": 8})
        .as_object()
        .cloned()
        .expect("object");
    let (report, _, requests) = record_load(&url, w, dir.path()).await;
    assert_eq!(requests.len() as u64, report.sent);
    // The load's pool is opened first by bodiless `GET /v1/models` requests: skipped.
    let body = loop {
        let body = bodies.recv().await.expect("a request body");
        if body.is_object() {
            break body;
        }
    };
    assert_eq!(body["temperature"], 0.25);
    assert_eq!(body["top_p"], 0.5);
    assert_eq!(body["min_tokens"], 8);
    assert_eq!(body["max_tokens"], 8);
    assert_eq!(body["ignore_eos"], true);
    for r in &requests {
        assert_eq!(
            (r.max_tokens, r.output_tokens),
            (8, Some(1)),
            "recorded per request"
        );
    }
}

/// The same short outputs, seen through the analysis of a folder: a load check names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_says_when_the_server_delivered_fewer_tokens_than_asked() {
    let (url, _bodies) = one_token_server().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "name: short\nworkloads:\n  w: {{api: completions, stream: false, arrival: {{kind: constant, rate: 20}}, data: {{prompt_tokens: 4, output_tokens: 8}}, warmup: 0s, duration: 1s}}\nnodes:\n  - name: n\n    tenants: [{{name: ext, engine: {{kind: external, url: \"{url}\", model: m}}, workload: w}}]\n"
    );
    let config_path = tmp.path().join("short.yaml");
    std::fs::write(&config_path, config).expect("write");
    let agent = crate::support::InProcessAgent::start(&tmp.path().join("agent")).await;
    let outcome = agent
        .run_experiment(&config_path, &tmp.path().join("runs"))
        .await;
    let summary = analyze_dir(&outcome.dir).expect("analyze");
    let tenant = &summary.nodes[0].trials[0].tenants[0];
    assert_eq!(tenant.metrics.short_outputs, tenant.metrics.completed);
    assert!(
        tenant
            .load_checks
            .iter()
            .any(|c| c.contains("delivered fewer output tokens than asked")),
        "{:?}",
        tenant.load_checks
    );
    assert!(summary
        .warnings
        .iter()
        .any(|w| w.contains("ext: ") && w.contains("fewer output tokens")));
    agent.stop().await;
}
