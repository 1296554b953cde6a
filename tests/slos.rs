//! SLOs through the `coordinator` binary: judged per tenant and trial, shown in the table,
//! summary.json and summary.csv, and turned into exit status 3 by `--fail-on-slo` (in `run`
//! and in `analyze`), so a CI pipeline can gate on them.

use std::process::Command;

use crate::support::{binaries, read_summary, results_dir};

#[test]
fn a_missed_slo_fails_run_and_analyze_only_when_asked() {
    let (_, coordinator) = binaries();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Tenant `quick` (2 ms steps, 8 tokens) meets a 200 ms TTFT p99 easily; tenant `strict`
    // asks for TTFT p50 under 0.5 ms, which a 10 ms decode step cannot give.
    let cfg = tmp.path().join("slo.yaml");
    std::fs::write(
        &cfg,
        "name: slo\nslo: {ttft_ms: {p99: 200}, error_rate: 0.01}\nworkloads:\n  loose: {arrival: {kind: constant, rate: 10}, data: {prompt_tokens: 8, output_tokens: 8}, warmup: 0s, duration: 2s}\n  tight: {arrival: {kind: constant, rate: 10}, data: {prompt_tokens: 8, output_tokens: 8}, warmup: 0s, duration: 2s, slo: {ttft_ms: {p50: 0.5}}}\nnodes:\n  - name: n\n    trials: [mps]\n    tenants:\n      - {name: quick, engine: {kind: simulated, timing: {decode_step_us: 2000}}, workload: loose}\n      - {name: strict, engine: {kind: simulated, timing: {decode_step_us: 10000}}, workload: tight}\n",
    )
    .expect("config");
    let runs = tmp.path().join("runs");
    let out = Command::new(coordinator)
        .args(["run", "--fail-on-slo", "--output-dir"])
        .arg(&runs)
        .arg(&cfg)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SLO failed: n/mps/strict: ttft_ms p50"),
        "{stdout}"
    );
    assert!(!stdout.contains("SLO failed: n/mps/quick"), "{stdout}");
    let dir = results_dir(&stdout);
    let summary = read_summary(&dir);
    let tenants = &summary.nodes[0].trials[0].tenants;
    let quick = tenants.iter().find(|t| t.tenant == "quick").expect("quick");
    let strict = tenants
        .iter()
        .find(|t| t.tenant == "strict")
        .expect("strict");
    let quick_slo = quick.slo.as_ref().expect("judged");
    assert!(quick_slo.pass, "{quick_slo:?}");
    assert_eq!(quick_slo.attainment, Some(1.0));
    assert!(
        quick_slo.goodput_rps.is_some_and(|g| g > 8.0),
        "{quick_slo:?}"
    );
    let strict_slo = strict.slo.as_ref().expect("judged");
    assert!(!strict_slo.pass);
    assert_eq!(
        strict_slo.attainment,
        Some(0.0),
        "no request has a sub-ms TTFT"
    );
    // The workload's own SLO replaces the experiment's: no error-rate bound on `strict`.
    assert_eq!(strict_slo.checks.len(), 1);
    let csv = std::fs::read_to_string(dir.join("summary.csv")).expect("csv");
    assert!(csv
        .lines()
        .next()
        .expect("header")
        .contains(",slo,goodput_rps,slo_attainment,"));
    assert!(
        csv.lines()
            .any(|l| l.contains(",strict,") && l.contains(",fail,")),
        "{csv}"
    );

    // The same folder, analysed again: exit 3 only with the flag.
    let analyze = |flag: bool| {
        let mut cmd = Command::new(coordinator);
        cmd.arg("analyze").arg(&dir);
        if flag {
            cmd.arg("--fail-on-slo");
        }
        cmd.output().expect("analyze").status.code()
    };
    assert_eq!(analyze(true), Some(3));
    assert_eq!(analyze(false), Some(0));

    // The same events under GuideLLM's definitions: its inter_token_latency is our TPOT
    // formula and its time_to_first_token our TTFT, so those agree to the microsecond.
    let out = Command::new(coordinator)
        .arg("analyze")
        .arg(&dir)
        .args(["--definitions", "guidellm", "--write"])
        .output()
        .expect("analyze");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("under guidellm's definitions"),
        "{printed}"
    );
    let variants: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(dir.join("summary.guidellm.json")).expect("variant file"),
    )
    .expect("parse");
    assert_eq!(variants.len(), 2);
    for v in &variants {
        let tenant = tenants
            .iter()
            .find(|t| v["tenant"] == t.tenant.as_str())
            .expect("tenant");
        let ours = tenant.metrics.tpot_ms.expect("tpot").p50;
        let theirs = v["figures"]["inter_token_latency_ms"]["p50"]
            .as_f64()
            .expect("itl");
        assert!((ours - theirs).abs() < 1e-9, "{ours} vs {theirs}");
        let ttft = tenant.metrics.ttft_ms.expect("ttft").p50;
        let their_ttft = v["figures"]["time_to_first_token_ms"]["p50"]
            .as_f64()
            .expect("ttft");
        assert!((ttft - their_ttft).abs() < 1e-9, "{ttft} vs {their_ttft}");
        assert!(v["figures"]["time_per_output_token_ms"]["p50"].is_number());
    }
    let out = Command::new(coordinator)
        .arg("analyze")
        .arg(&dir)
        .args(["--definitions", "llmperf"])
        .output()
        .expect("analyze");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use vllm, guidellm or aiperf"));
}
