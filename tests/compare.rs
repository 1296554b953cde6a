//! `coordinator compare` on two real local runs that differ only in offered rate: the busier
//! run's batches are larger, so its TPOT is worse and its throughput better, and the
//! comparison says so in the table, the JSON and the HTML page.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{binaries, run_experiment};

fn run_at(rate: u32, tmp: &Path) -> PathBuf {
    // Each decode step costs 5 ms plus 0.5 ms per running sequence: at 2/s about one request
    // runs at a time, at 30/s about nine.
    run_experiment(
        tmp,
        &format!("rate-{rate}"),
        &format!("name: rate-{rate}\nworkloads:\n  w: {{arrival: {{kind: constant, rate: {rate}}}, data: {{prompt_tokens: 8, output_tokens: 32}}, warmup: 1s, duration: 3s}}\nnodes:\n  - {{name: n, trials: [mps], tenants: [{{name: t, engine: {{kind: simulated, timing: {{decode_step_us: 5000, decode_step_us_per_seq: 500}}}}, workload: w}}]}}\n"),
    )
}

#[test]
fn compare_shows_the_direction_of_a_higher_offered_rate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let calm = run_at(2, tmp.path());
    let busy = run_at(30, tmp.path());
    let (_, coordinator) = binaries();
    let json = tmp.path().join("compare.json");
    let html = tmp.path().join("compare.html");
    let out = Command::new(coordinator)
        .arg("compare")
        .arg(&calm)
        .arg(&busy)
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("SIMULATED"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parse");
    let direction = |figure: &str| {
        doc["figures"]
            .as_array()
            .expect("figures")
            .iter()
            .find(|f| f["tenant"] == "n/mps/t" && f["figure"] == figure)
            .unwrap_or_else(|| panic!("no {figure}"))["direction"][0]
            .as_str()
            .expect("direction")
            .to_owned()
    };
    assert_eq!(direction("tpot_p50_ms"), "worse", "{stdout}");
    assert_eq!(direction("output_tokens_per_s"), "better", "{stdout}");
    assert_eq!(direction("requests_per_s"), "better", "{stdout}");
    assert!(
        stdout.contains("worse") && stdout.contains("better"),
        "{stdout}"
    );
    // The HTML page colours the same cells: the busy run's TPOT row worse, its throughput
    // better.
    let page = std::fs::read_to_string(&html).expect("compare.html");
    let row = |figure: &str| {
        page.lines()
            .find(|l| l.contains("<td>n/mps/t</td>") && l.contains(&format!("<td>{figure}</td>")))
            .unwrap_or_else(|| panic!("no {figure} row in {page}"))
            .to_owned()
    };
    assert!(
        row("tpot_p50_ms").contains("class=\"num worse\""),
        "{}",
        row("tpot_p50_ms")
    );
    assert!(
        row("output_tokens_per_s").contains("class=\"num better\""),
        "{}",
        row("output_tokens_per_s")
    );
    assert!(page.contains("SIMULATED engine"));
}
