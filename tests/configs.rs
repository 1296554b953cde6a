//! Every shipped config is valid, and `coordinator validate` lists every problem of a bad one.

use std::process::Command;

use multitenant::config::Experiment;

use crate::support::binaries;

#[test]
fn every_shipped_config_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for dir in ["configs", "tests/fixtures"] {
        for entry in std::fs::read_dir(root.join(dir))
            .expect("configs folder")
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") && !path.ends_with("bad.yaml") {
                Experiment::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
    }
    assert!(seen >= 3, "only {seen} configs found");
}

#[test]
fn validate_lists_every_problem_with_its_path_and_fails() {
    let (_, coordinator) = binaries();
    let bad = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad.yaml");
    let out = Command::new(coordinator)
        .arg("validate")
        .arg(&bad)
        .output()
        .expect("run coordinator");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "5 problem(s)",
        "workloads.chat.arrival.rate: rate must be > 0 requests/s, got -2",
        "workloads.chat.colour: unknown key",
        "nodes[0].tenants[1].workload: no workload named \"missing\"",
        "nodes[0].tenants[1].port: port 18000 is already used by nodes[0].tenants[0]",
        "nodes[0].tenants[2].engine.kind: \"gpu-magic\" is not an engine kind: use simulated, vllm, external or adapter",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from:\n{stderr}"
        );
    }
}

#[test]
fn validate_says_what_a_trace_replay_sends_to_each_tenant() {
    let (_, coordinator) = binaries();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/trace-replay.yaml");
    let out = Command::new(coordinator)
        .arg("validate")
        .arg(&config)
        .output()
        .expect("run coordinator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // 512 rows, 8 of them failed requests; 346 ChatGPT and 158 GPT-4 records remain.
    for expected in [
        "504 records over 119.9 s, replayed ×10 in 12.0 s; records per tenant: chat-large 158, chat-small 346",
        "8 records with a zero output length (failed requests) skipped",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
}
