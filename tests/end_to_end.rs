//! The README's main job, through the real binaries: `coordinator run` spawns `agent serve`,
//! runs solo and shared trials of two simulated tenants, and prints a summary that
//! `coordinator analyze` reproduces from the files alone.

use std::process::Command;

use multitenant::analysis::Summary;

use crate::support::{binaries, read_summary, results_dir};
use multitenant::analysis::TrialStatus;

fn table_of(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| !l.starts_with("results:") && !l.starts_with("report:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn run_prints_a_summary_that_analyze_reproduces_from_the_files() {
    let (_, coordinator) = binaries();
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2e.yaml");
    let run = Command::new(coordinator)
        .arg("run")
        .arg(&config)
        .arg("--output-dir")
        .arg(tmp.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "run failed:\n{}\n{}",
        stdout,
        String::from_utf8_lossy(&run.stderr)
    );
    let dir = results_dir(&stdout);

    for trial in ["solo-chat-a", "solo-pinned-b", "mps"] {
        assert!(stdout.contains(trial), "{trial} missing from\n{stdout}");
    }
    assert!(
        stdout.contains("SIMULATED"),
        "simulated results must say so"
    );
    assert!(stdout.contains("= node aggregate"));

    let summary: Summary = read_summary(&dir);
    // No GPU here: the agent said so once per trial, and wrote no GPU numbers at all.
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("GPU sampling is off: NVML could not be loaded")),
        "{:?}",
        summary.warnings
    );
    assert!(!dir.join("nodes/local/mps/gpu.jsonl").exists());
    assert!(summary.nodes[0]
        .trials
        .iter()
        .all(|t| t.gpus.is_empty() && t.energy_per_output_token_j.is_none()));
    assert!(summary.simulated);
    let node = &summary.nodes[0];
    let names: Vec<&str> = node.trials.iter().map(|t| t.trial.as_str()).collect();
    assert_eq!(
        names,
        ["solo-chat-a", "solo-pinned-b", "mps"],
        "trials in the order they ran"
    );
    let mps = &node.trials[2];
    assert_eq!(mps.state, TrialStatus::Finished);
    assert_eq!(mps.tenants.len(), 2);
    for t in &mps.tenants {
        let m = &t.metrics;
        assert!(m.completed > 5 && m.failed == 0, "{}: {m:?}", t.tenant);
        assert!(m.ttft_ms.is_some() && m.tpot_ms.is_some() && m.throughput.is_some());
        assert_eq!(m.token_source, "usage");
    }
    let sum: f64 = mps
        .tenants
        .iter()
        .filter_map(|t| t.metrics.throughput)
        .map(|t| t.output_tokens_per_s)
        .sum();
    let aggregate = mps.aggregate_output_tokens_per_s.expect("aggregate");
    assert!(
        aggregate > 0.0 && aggregate <= sum * 1.0001,
        "aggregate {aggregate} vs per-tenant sum {sum}"
    );

    // The shared GPU slows the tenants down compared with running alone.
    let solo_tpot = node.trials[0].tenants[0]
        .metrics
        .tpot_ms
        .expect("solo tpot")
        .p50;
    let shared_tpot = mps
        .tenants
        .iter()
        .find(|t| t.tenant == "chat-a")
        .and_then(|t| t.metrics.tpot_ms)
        .expect("mps tpot")
        .p50;
    assert!(
        shared_tpot > solo_tpot,
        "MPS TPOT {shared_tpot} ms should exceed solo {solo_tpot} ms"
    );

    // Sharing shows as a slowdown against solo, and the node's gain is reported.
    let chat = mps
        .tenants
        .iter()
        .find(|t| t.tenant == "chat-a")
        .expect("chat-a");
    let slowdown = chat.slowdown.expect("slowdown against solo");
    assert!(slowdown.tpot_p50.expect("tpot ratio") > 1.0, "{slowdown:?}");
    assert!(
        mps.colocation_gain.is_some_and(|g| g > 0.0),
        "{:?}",
        mps.colocation_gain
    );
    assert!(
        node.trials[0].tenants[0].slowdown.is_none(),
        "solo trials have no slowdown"
    );
    assert!(
        stdout.contains("sharing vs solo") && stdout.contains("= co-location gain"),
        "{stdout}"
    );

    let analyze = Command::new(coordinator)
        .arg("analyze")
        .arg(&dir)
        .output()
        .expect("analyze");
    assert!(analyze.status.success());
    assert_eq!(
        table_of(&String::from_utf8_lossy(&analyze.stdout)),
        table_of(&stdout),
        "analyze must print what run printed"
    );
    let csv = std::fs::read_to_string(dir.join("summary.csv")).expect("summary.csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows.len(),
        1 + 4,
        "header + one row per tenant and trial: {csv}"
    );
    assert!(rows[0].starts_with("node,trial,mode,state,tenant,"));
    assert!(
        rows.iter()
            .skip(1)
            .all(|r| r.split(',').count() == rows[0].split(',').count()),
        "{csv}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("local,mps,mps,finished,chat-a,m-a,simulated,,chat,true,")),
        "{csv}"
    );
    for file in [
        "config.yaml",
        "plan.json",
        "nodes/local/mps/chat-a.jsonl",
        "nodes/local/mps/agent.jsonl",
        "nodes/local/mps/host.jsonl",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
}
