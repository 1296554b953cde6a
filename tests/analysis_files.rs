//! The JSONL format round-trips exactly, damaged files are read with located warnings, and the
//! analysis of a hand-built folder gives hand-computed numbers.

use std::io::Write;
use std::path::Path;

use multitenant::analysis::analyze_dir;
use multitenant::config::{Api, SharingMode};
use multitenant::events::*;

fn header(stream: StreamKind, tenant: Option<&str>) -> Header {
    Header {
        schema_version: SCHEMA_VERSION.into(),
        tool_version: "test".into(),
        experiment: "hand".into(),
        run_id: "r".into(),
        node: "n".into(),
        trial: "mps".into(),
        mode: SharingMode::Mps,
        stream,
        zero_wall_ns: 1_700_000_000_000_000_000,
        simulated: true,
        stage: None,
        tenant: tenant
            .map(|name| TenantHeader {
                name: name.into(),
                model: "m".into(),
                engine: "simulated".into(),
                served_by: None,
                workload: "w".into(),
                api: Api::Chat,
                arrival: "constant 2/s".into(),
                offered_rate: Some(2.0),
                streaming: true,
                forced_length: true,
                slo: None,
                planned_ms: None,
                shared_prefixes: None,
            })
            .map(Box::new),
    }
}

/// A completed request: sent at `sent_ms`, TTFT `ttft_ms`, then `tokens - 1` chunks `gap_ms` apart.
fn request(id: &str, sent_ms: u64, ttft_ms: u64, gap_ms: u64, tokens: u32) -> RequestEvent {
    let ms = 1_000_000;
    let first = (sent_ms + ttft_ms) * ms;
    let last = first + u64::from(tokens - 1) * gap_ms * ms;
    RequestEvent {
        id: id.into(),
        phase: Phase::Measure,
        scheduled_ns: (sent_ms * ms).saturating_sub(50_000),
        sent_ns: sent_ms * ms,
        connect_ns: None,
        first_token_ns: Some(first),
        last_token_ns: Some(last),
        done_ns: last + ms,
        chunk_gaps_us: vec![gap_ms * 1_000; tokens as usize - 1],
        max_tokens: tokens,
        prompt_tokens: Some(100),
        output_tokens: Some(tokens),
        token_source: Some(TokenSource::Usage),
        status: Some(200),
        error: None,
        conversation: None,
        turn: None,
    }
}

fn write_stream(path: &Path, header: Header, events: &[Event]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut w =
        EventWriter::new(std::fs::File::create(path).expect("create"), header).expect("header");
    for e in events {
        w.write(e).expect("write");
    }
    w.finish().expect("finish");
}

#[test]
fn every_event_kind_round_trips_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("s.jsonl");
    let mut failed = request("f", 5, 1, 1, 3);
    failed.error = Some(RequestError {
        kind: ErrorKind::StreamDropped,
        message: "cut \"mid\" stream\n".into(),
    });
    failed.conversation = Some(3);
    failed.turn = Some(2);
    let events = vec![
        Event::Phase(PhaseEvent {
            phase: Phase::Warmup,
            at_ns: 0,
            scheduled: None,
            connections: None,
        }),
        Event::Request(request("a", 1, 20, 10, 5)),
        Event::Request(failed),
        Event::Trial(TrialEvent {
            at_ns: 3,
            state: TrialState::Invalid,
            reason: Some("engine died".into()),
        }),
        Event::Engine(EngineEvent {
            at_ns: 4,
            tenant: "a".into(),
            state: EngineState::Ready,
            detail: "http://127.0.0.1:1".into(),
        }),
        Event::Warning(WarningEvent {
            at_ns: 5,
            message: "ünïcode ✓".into(),
        }),
        Event::Prompt(PromptEvent {
            id: "a-000001".into(),
            origin: "data/p.jsonl:7".into(),
            prompt_tokens: Some(12),
            max_tokens: 64,
            text: "a \"quoted\" prompt\nover two lines".into(),
            expected: Some("the answer".into()),
            response: Some(" tok1 tok2".into()),
        }),
        Event::HostSample(HostSample {
            at_ns: 6,
            cpu_percent: 12.5,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 1 << 34,
            engines: vec![EngineProcessSample {
                tenant: "a".into(),
                pids: vec![10, 11],
                cpu_percent: 150.5,
                memory_rss_bytes: 3 << 30,
            }],
        }),
        Event::Phase(PhaseEvent {
            phase: Phase::Drain,
            at_ns: 9,
            scheduled: Some(40),
            connections: Some(multitenant::events::ConnectionUse {
                preopened: 10,
                peak_in_flight: 14,
            }),
        }),
        Event::ProbeStopped(ProbeStoppedEvent {
            at_ns: 10,
            reason: "a: ttft_ms p99: 10 requests over 150 ms".into(),
        }),
        Event::BudgetSpent(BudgetSpentEvent {
            at_ns: 11,
            spent_ms: 19_500,
            budget_ms: 20_000,
            next_probe_ms: 3_000,
        }),
    ];
    write_stream(&path, header(StreamKind::Tenant, Some("a")), &events);
    let back = read_stream(&path).expect("read");
    assert_eq!(back.header, header(StreamKind::Tenant, Some("a")));
    assert!(back.warnings.is_empty());
    let got: Vec<Event> = back.events.iter().map(|l| l.event.clone()).collect();
    assert_eq!(got, events);
    let text = std::fs::read_to_string(&path).expect("text");
    assert!(text
        .lines()
        .next()
        .expect("line 1")
        .starts_with(r#"{"seq":0,"type":"header","schema_version":"1.8""#));
    assert!(text
        .lines()
        .nth(2)
        .expect("line 3")
        .contains(r#""chunk_gaps_us":[10000,10000,10000,10000]"#));
}

#[test]
fn damaged_lines_are_skipped_with_file_and_line_and_newer_schemas_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("s.jsonl");
    write_stream(
        &path,
        header(StreamKind::Agent, None),
        &[Event::Warning(WarningEvent {
            at_ns: 1,
            message: "x".into(),
        })],
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    f.write_all(b"not json\n{\"seq\":3,\"type\":\"warning\",\"at_ns\":2,\"message\":\"y\"}\n{\"seq\":4,\"type\":\"war").expect("append");
    let s = read_stream(&path).expect("still readable");
    assert_eq!(s.events.len(), 2);
    let shown = path.display().to_string();
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(
        s.warnings[0].starts_with(&format!("{shown}:3: not a valid event")),
        "{}",
        s.warnings[0]
    );
    assert!(
        s.warnings[1].starts_with(&format!("{shown}:5: truncated last line")),
        "{}",
        s.warnings[1]
    );

    let mut newer = header(StreamKind::Agent, None);
    newer.schema_version = "2.0".into();
    write_stream(&path, newer, &[]);
    let err = read_stream(&path).expect_err("newer major");
    assert!(
        err.to_string().contains("schema version 2.0 is newer"),
        "{err}"
    );
}

#[test]
fn a_hand_built_folder_gives_hand_computed_figures() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let trial = tmp.path().join("nodes/n/mps");
    write_stream(
        &trial.join("agent.jsonl"),
        header(StreamKind::Agent, None),
        &[
            Event::Trial(TrialEvent {
                at_ns: 0,
                state: TrialState::Started,
                reason: None,
            }),
            Event::Trial(TrialEvent {
                at_ns: 9,
                state: TrialState::Finished,
                reason: None,
            }),
        ],
    );
    // Tenant a: measure from 0 to 2 s; two completed requests and one failed.
    //   r1: sent 0 ms, TTFT 100 ms, 11 tokens 20 ms apart -> last 300 ms, done 301 ms, TPOT 20 ms.
    //   r2: sent 500 ms, TTFT 300 ms, 11 tokens 40 ms apart -> last 1200 ms, done 1201 ms, TPOT 40 ms.
    //   r3: failed (HTTP 503), sent 1000 ms, done 1010 ms.
    //   A warmup request and the broken last line are ignored.
    let mut warm = request("w", 0, 1, 1, 2);
    warm.phase = Phase::Warmup;
    let mut r3 = request("r3", 1000, 5, 1, 2);
    r3.error = Some(RequestError {
        kind: ErrorKind::HttpStatus,
        message: "HTTP 503".into(),
    });
    r3.done_ns = 1_010_000_000;
    write_stream(
        &trial.join("a.jsonl"),
        header(StreamKind::Tenant, Some("a")),
        &[
            Event::Request(warm),
            Event::Phase(PhaseEvent {
                phase: Phase::Measure,
                at_ns: 0,
                scheduled: None,
                connections: None,
            }),
            Event::Request(request("r1", 0, 100, 20, 11)),
            Event::Request(request("r2", 500, 300, 40, 11)),
            Event::Request(r3),
            Event::Phase(PhaseEvent {
                phase: Phase::Drain,
                at_ns: 2_000_000_000,
                scheduled: None,
                connections: None,
            }),
        ],
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(trial.join("a.jsonl"))
        .expect("open")
        .write_all(b"{\"seq\":7,")
        .expect("append");
    // Tenant b: measured, but nothing completed.
    write_stream(
        &trial.join("b.jsonl"),
        header(StreamKind::Tenant, Some("b")),
        &[Event::Phase(PhaseEvent {
            phase: Phase::Measure,
            at_ns: 0,
            scheduled: None,
            connections: None,
        })],
    );

    // GPU 0 used 100 J per second: over the window 0 to 1.201 s that is 120.1 J, or
    // 120.1 / 22 J per output token. A sample after the window does not enter the means.
    let gpu = |at_ms: u64, energy_mj: u64, util: u32| {
        Event::GpuSample(GpuSample {
            at_ns: at_ms * 1_000_000,
            gpu: 0,
            utilization_gpu_pct: Some(util),
            energy_mj: Some(energy_mj),
            power_mw: Some(100_000),
            ..GpuSample::default()
        })
    };
    write_stream(
        &trial.join("gpu.jsonl"),
        header(StreamKind::Gpu, None),
        &[
            gpu(0, 0, 40),
            gpu(1000, 100_000, 60),
            gpu(2000, 200_000, 99),
        ],
    );

    let s = analyze_dir(tmp.path()).expect("analyze");
    assert!(s.simulated);
    let t = &s.nodes[0].trials[0];
    assert_eq!(
        (t.trial.as_str(), t.state.name(), t.mode),
        ("mps", "finished", SharingMode::Mps)
    );
    let a = &t.tenants[0].metrics;
    assert_eq!((a.sent, a.completed, a.failed), (3, 2, 1));
    assert_eq!(a.errors.get("http_status"), Some(&1));
    assert_eq!(a.error_rate, Some(1.0 / 3.0));
    let ttft = a.ttft_ms.expect("ttft");
    assert_eq!(
        (ttft.count, ttft.min, ttft.max, ttft.mean),
        (2, 100.0, 300.0, 200.0)
    );
    let tpot = a.tpot_ms.expect("tpot");
    assert_eq!((tpot.min, tpot.max), (20.0, 40.0));
    let itl = a.itl_ms.expect("itl");
    assert_eq!(
        (itl.count, itl.min, itl.max, itl.mean),
        (20, 20.0, 40.0, 30.0)
    );
    let e2e = a.e2e_ms.expect("e2e");
    assert_eq!((e2e.min, e2e.max), (300.0, 700.0));
    let lag = a.schedule_lag_ms.expect("lag");
    assert_eq!((lag.count, lag.max), (3, 0.05));
    // Window: first sent 0 to last done 1.201 s; 22 output and 200 prompt tokens; 3 sends in 2 s.
    let tp = a.throughput.expect("throughput");
    assert_eq!(tp.window_s, 1.201);
    assert!((tp.output_tokens_per_s - 22.0 / 1.201).abs() < 1e-9);
    assert!((tp.total_tokens_per_s - 222.0 / 1.201).abs() < 1e-9);
    assert_eq!(a.achieved_rate, Some(1.5));
    // Tenant b has no data: no figure stands in for it.
    let b = &t.tenants[1].metrics;
    assert_eq!(
        (b.sent, b.ttft_ms, b.throughput, b.error_rate),
        (0, None, None, None)
    );
    assert!((t.aggregate_output_tokens_per_s.expect("aggregate") - 22.0 / 1.201).abs() < 1e-9);
    let g = &t.gpus[0];
    assert_eq!(
        (g.samples, g.utilization_mean_pct, g.power_mean_w),
        (2, Some(50.0), Some(100.0))
    );
    assert!((g.energy_j.expect("energy") - 120.1).abs() < 1e-9);
    assert!((t.energy_per_output_token_j.expect("J/token") - 120.1 / 22.0).abs() < 1e-9);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("a.jsonl:8: truncated last line")),
        "{:?}",
        s.warnings
    );
    assert!(
        s.warnings
            .iter()
            .any(|w| w == "mps/b: no completed measured request"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn implausible_times_are_counted_named_and_left_out_of_the_figures() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let trial = tmp.path().join("nodes/n/mps");
    write_stream(
        &trial.join("agent.jsonl"),
        header(StreamKind::Agent, None),
        &[Event::Trial(TrialEvent {
            at_ns: 9,
            state: TrialState::Finished,
            reason: None,
        })],
    );
    let mut early = request("early", 500, 10, 1, 2);
    early.first_token_ns = Some(100 * 1_000_000);
    let mut far = request("far", 600, 10, 1, 2);
    far.done_ns = 1 << 63;
    let phase = |phase, at_ms: u64| {
        Event::Phase(PhaseEvent {
            phase,
            at_ns: at_ms * 1_000_000,
            scheduled: None,
            connections: None,
        })
    };
    write_stream(
        &trial.join("a.jsonl"),
        header(StreamKind::Tenant, Some("a")),
        &[
            phase(Phase::Measure, 0),
            Event::Request(request("good", 0, 100, 20, 11)),
            Event::Request(early),
            Event::Request(far),
            phase(Phase::Drain, 2000),
            phase(Phase::Done, 2500),
        ],
    );
    let s = analyze_dir(tmp.path()).expect("analyze");
    let a = &s.nodes[0].trials[0].tenants[0].metrics;
    assert_eq!((a.sent, a.completed, a.implausible), (1, 1, 2));
    let e2e = a.e2e_ms.expect("e2e");
    assert_eq!((e2e.count, e2e.max), (1, 300.0), "only the good request");
    assert!(
        s.warnings.iter().any(|w| w.contains("a.jsonl:4: request early has implausible times (first token before its send), and 1 more like it; left out of the figures")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn skipped_lines_are_named_up_to_a_bound_and_an_oversized_line_is_skipped_not_parsed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("s.jsonl");
    write_stream(&path, header(StreamKind::Agent, None), &[]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    for _ in 0..1000 {
        f.write_all(b"not json\n").expect("append");
    }
    let s = read_stream(&path).expect("readable");
    assert_eq!(s.warnings.len(), MAX_NAMED_SKIPS + 1, "{:?}", s.warnings);
    assert!(
        s.warnings[MAX_NAMED_SKIPS].ends_with(&format!(
            "{} more lines skipped like the {MAX_NAMED_SKIPS} above",
            1000 - MAX_NAMED_SKIPS
        )),
        "{}",
        s.warnings[MAX_NAMED_SKIPS]
    );

    // A well-formed event, but longer than any real one: skipped by its length, and the
    // lines after it are still read.
    write_stream(&path, header(StreamKind::Agent, None), &[]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    let huge = format!(
        "{{\"seq\":1,\"type\":\"warning\",\"at_ns\":1,\"message\":\"{}\"}}\n",
        "x".repeat(MAX_LINE_BYTES)
    );
    f.write_all(huge.as_bytes()).expect("append");
    f.write_all(b"{\"seq\":2,\"type\":\"warning\",\"at_ns\":2,\"message\":\"after\"}\n")
        .expect("append");
    let s = read_stream(&path).expect("readable");
    assert_eq!(s.events.len(), 1, "only the line after the huge one");
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(
        s.warnings[0].contains(":2: a line of") && s.warnings[0].contains("-byte bound"),
        "{}",
        s.warnings[0]
    );
}
