//! Golden files: the hand-built experiment in `tests/fixtures/golden` (one node, trials
//! solo-a, solo-b and mps; every request written with round figures) gives exactly
//! `tests/fixtures/golden-expected/{summary.json, summary.csv, table.txt}`.
//!
//! Every figure below was worked out by hand from the fixture, then the expected files were
//! checked against these figures once. After a deliberate change of output, rewrite them with
//! `MULTITENANT_BLESS=1 cargo test --test integration golden` and read the diff: the asserts
//! on hand-worked figures still hold the numbers.
//!
//! The fixture (times in ms since the node's zero; every completed request has 100 prompt
//! tokens and 5 output tokens, so 4 chunk gaps; scheduled 0.05 ms before sent):
//! - solo-a, measure 1000–3000: `a` sent at 1000, 1500 (TTFT 20) and 2000, 2500 (TTFT 30),
//!   gaps 10 ms; one warmup request at 500 that must not count.
//! - solo-b, measure 4000–6000: `b` sent at 4000, 4500, 5000, 5500, TTFT 40, gaps 20.
//!   `b` has an SLO: TTFT p99 ≤ 50 ms.
//! - mps, measure 7000–9000: `a` sent at 7000…8500 every 500, TTFT 40, gaps 20, and a
//!   request at 8750 that failed (HTTP 503, done at 8760); `b` sent at 7250…8750 every 500,
//!   TTFT 80, gaps 40. One GPU sampled at 6500, 7500, 8500, 9500: utilization 40, 60, 80,
//!   50 %; 100 W throughout (energy counter +100 J per second). Answers kept in mps, scored
//!   against expected outputs: `a` answered " Paris" to "Paris" and " red, green and blue" to
//!   "red yellow blue" (its third prompt kept no answer); `b` answered " paris" and
//!   " red yellow blue".

use coordinator::report::{render_csv, render_table};
use multitenant::analysis::{analyze_dir, Summary, TenantSummary};

use crate::support::{copy_tree, fixture};

fn tenant<'a>(summary: &'a Summary, trial: &str, tenant: &str) -> &'a TenantSummary {
    summary.nodes[0]
        .trials
        .iter()
        .find(|t| t.trial == trial)
        .and_then(|t| t.tenants.iter().find(|x| x.tenant == tenant))
        .unwrap_or_else(|| panic!("no {trial}/{tenant}"))
}

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-9
}

/// The figures worked out by hand.
fn check_by_hand(s: &Summary) {
    let trials: Vec<&str> = s.nodes[0].trials.iter().map(|t| t.trial.as_str()).collect();
    assert_eq!(trials, ["solo-a", "solo-b", "mps"], "in run order");

    let a = tenant(s, "solo-a", "a");
    let m = &a.metrics;
    assert_eq!(
        (m.sent, m.completed, m.failed),
        (4, 4, 0),
        "warmup excluded"
    );
    let ttft = m.ttft_ms.expect("ttft");
    // {20, 20, 30, 30}: p50 is the 2nd value, reported as its bucket's upper edge (16 µs
    // buckets between 16.4 and 32.8 ms: 20.015); p99 the 4th, 30.015 held at the max 30.
    assert_eq!(
        (ttft.min, ttft.p50, ttft.p99, ttft.max),
        (20.0, 20.015, 30.0, 30.0)
    );
    // Mean 25, population standard deviation 5.
    assert_eq!((ttft.mean, ttft.stddev), (25.0, 5.0));
    // TPOT = (last − first) / (5 − 1) = 40 / 4 = 10 ms for every request.
    assert_eq!(m.tpot_ms.map(|p| (p.p50, p.p99)), Some((10.0, 10.0)));
    // E2E = TTFT + 40 = {60, 60, 70, 70}: p50 60.031 (32 µs buckets), p99 held at 70.
    assert_eq!(m.e2e_ms.map(|p| (p.p50, p.p99)), Some((60.031, 70.0)));
    // Window 1000 → 2571 (last done: 2500 + 30 + 40 + 1) = 1.571 s; 20 output tokens.
    let t = m.throughput.expect("throughput");
    assert!(close(t.window_s, 1.571));
    assert!(close(t.output_tokens_per_s, 20.0 / 1.571), "12.7307");
    assert!(close(t.total_tokens_per_s, 420.0 / 1.571));
    // 400 prompt tokens (100 a request) over the same window.
    assert!(close(t.input_tokens_per_s, 400.0 / 1.571), "254.6149");
    // 4 sent over the 2 s measure phase; schedule lag 0.05 ms.
    assert_eq!(m.achieved_rate, Some(2.0));
    assert_eq!(m.schedule_lag_ms.map(|p| p.p99), Some(0.05));

    let b = tenant(s, "solo-b", "b");
    // Window 4000 → 5621 = 1.621 s; 4 good requests (TTFT 40 ≤ 50): goodput 4 / 1.621 =
    // 2.468 /s, attainment 1.
    let slo = b.slo.as_ref().expect("b's SLO");
    assert!(slo.pass);
    assert_eq!((slo.goodput_rps, slo.attainment), (Some(2.468), Some(1.0)));

    let a = tenant(s, "mps", "a");
    let m = &a.metrics;
    assert_eq!((m.sent, m.completed, m.failed), (5, 4, 1));
    assert_eq!(m.errors.get("http_status"), Some(&1));
    assert_eq!(m.error_rate, Some(0.2));
    assert_eq!(m.achieved_rate, Some(2.5), "5 sent in 2 s");
    // The failed request's end (8760) closes the window: 7000 → 8760 = 1.76 s.
    assert!(close(
        m.throughput.expect("tp").output_tokens_per_s,
        20.0 / 1.76
    ));
    let slowdown = a.slowdown.expect("against solo-a");
    // TTFT p50 40 / 20.015 = 1.99850…; p99 40 / 30 = 1.3333; TPOT 20 / 10 = 2; throughput
    // (20 / 1.76) / (20 / 1.571) = 0.8926.
    assert_eq!(slowdown.ttft_p50, Some(1.9985));
    assert_eq!(slowdown.ttft_p99, Some(1.3333));
    assert_eq!(slowdown.tpot_p50, Some(2.0));
    assert_eq!(slowdown.output_tokens_per_s, Some(0.8926));
    // E2E p99 120 (shared) / 70 (solo) = 1.7143.
    assert_eq!(slowdown.e2e_p99, Some(1.7143));

    let b = tenant(s, "mps", "b");
    // TTFT 80 > 50: the SLO fails; no request met it.
    let slo = b.slo.as_ref().expect("b's SLO");
    assert!(!slo.pass);
    assert_eq!(slo.checks[0].measured, Some(80.0));
    assert_eq!((slo.goodput_rps, slo.attainment), (Some(0.0), Some(0.0)));

    let mps = &s.nodes[0].trials[2];
    // 40 output tokens over 7000 → 8991 (b's last: 8750 + 80 + 160 + 1) = 1.991 s.
    assert!(close(
        mps.aggregate_output_tokens_per_s.expect("aggregate"),
        40.0 / 1.991
    ));
    // Gain = aggregate / (solo a + solo b) = 20.0904 / (12.7307 + 12.3381) = 0.8014.
    assert_eq!(mps.colocation_gain, Some(0.8014));
    // GPU: samples at 7500 and 8500 fall in the window: utilization (60 + 80) / 2 = 70 %,
    // memory max 12 GiB; energy 100 W × 1.991 s = 199.1 J over 40 tokens = 4.9775 J/token.
    let gpu = &mps.gpus[0];
    assert_eq!(gpu.samples, 2);
    assert_eq!(gpu.utilization_mean_pct, Some(70.0));
    assert_eq!(gpu.memory_used_max_bytes, Some(12 << 30));
    assert!(close(gpu.energy_j.expect("energy"), 199.1));
    assert!(close(
        mps.energy_per_output_token_j.expect("J/token"),
        199.1 / 40.0
    ));
    // a: one exact match of two; ROUGE-L 1 and, for [red green and blue] against
    // [red yellow blue], LCS 2: P 2/4, R 2/3, F1 4/7; mean (1 + 4/7) / 2 = 0.786.
    let q = tenant(s, "mps", "a").quality.as_ref().expect("a's answers");
    assert_eq!(
        (q.kept, q.scored, q.exact_match, q.rouge_l),
        (2, 2, Some(0.5), Some(0.786))
    );
    // b: "paris" is not an exact match for "Paris" (case), but ROUGE-L lower-cases: 1 and 1.
    let q = tenant(s, "mps", "b").quality.as_ref().expect("b's answers");
    assert_eq!((q.exact_match, q.rouge_l), (Some(0.5), Some(1.0)));
    assert!(
        tenant(s, "solo-a", "a").quality.is_none(),
        "no answers kept there"
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn a_hand_built_experiment_gives_exactly_the_golden_summary_csv_and_table() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("golden");
    copy_tree(&fixture("golden"), &dir);
    let summary = analyze_dir(&dir).expect("analysis");
    check_by_hand(&summary);

    let expected = fixture("golden-expected");
    let outputs = [
        (
            "summary.json",
            serde_json::to_string_pretty(&summary).expect("json") + "\n",
        ),
        ("summary.csv", render_csv(&summary)),
        ("table.txt", render_table(&summary)),
    ];
    if std::env::var_os("MULTITENANT_BLESS").is_some() {
        std::fs::create_dir_all(&expected).expect("expected dir");
        for (name, text) in &outputs {
            std::fs::write(expected.join(name), text).expect("bless");
        }
    }
    for (name, text) in &outputs {
        let want = std::fs::read_to_string(expected.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e} (bless with MULTITENANT_BLESS=1)"));
        if *text != want {
            let line = text
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(text.lines().count().min(want.lines().count()));
            panic!(
                "{name} differs from the golden file at line {}:\n got: {:?}\nwant: {:?}",
                line + 1,
                text.lines().nth(line),
                want.lines().nth(line)
            );
        }
    }
}
