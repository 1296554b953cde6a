//! The golden experiment, damaged the ways real folders get damaged: a tenant stream deleted,
//! one cut mid-line, one whose header is gone, a GPU stream cut inside its header, a trial folder that never appeared, a trial
//! marked invalid, and a tenant whose every request failed. `coordinator analyze --write`
//! still writes every report; each says what is missing and why, and no figure is made up
//! from nothing (no NaN, no 0 ms latency standing in for "no data").

use std::path::Path;
use std::process::Command;

use crate::support::{binaries, copy_tree, fixture, read_summary};
use multitenant::analysis::TrialStatus;

/// Rewrites every line of the stream at `path` with `edit`.
fn edit_lines(path: &Path, edit: impl Fn(serde_json::Value) -> serde_json::Value) {
    let text = std::fs::read_to_string(path).expect("read stream");
    let lines: Vec<String> = text
        .lines()
        .map(|l| edit(serde_json::from_str(l).expect("fixture line")))
        .map(|v| v.to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write stream");
}

fn damage(dir: &Path) {
    let trials = dir.join("nodes/n");
    // solo-b: b's stream is gone.
    std::fs::remove_file(trials.join("solo-b/b.jsonl")).expect("remove");
    // solo-a: a's stream lost its header (a crash while the file was created).
    let a = trials.join("solo-a/a.jsonl");
    let text = std::fs::read_to_string(&a).expect("read");
    std::fs::write(&a, &text[20..]).expect("write");
    // mps: a's stream was cut in the middle of its last request line.
    let a = trials.join("mps/a.jsonl");
    let text = std::fs::read_to_string(&a).expect("read");
    let cut = text.find("\"id\":\"a-5\"").expect("a-5") + 12;
    std::fs::write(&a, &text[..cut]).expect("write");
    // mps: the GPU stream is ten bytes of a header.
    let gpu = trials.join("mps/gpu.jsonl");
    let text = std::fs::read_to_string(&gpu).expect("read");
    std::fs::write(&gpu, &text[..10]).expect("write");
    // mps: every request of b failed, and the trial was marked invalid when its engine died.
    edit_lines(&trials.join("mps/b.jsonl"), |mut v| {
        if v["type"] == "request" {
            let sent = v["sent_ns"].as_u64().expect("sent");
            v = serde_json::json!({
                "seq": v["seq"], "type": "request", "id": v["id"], "phase": "measure",
                "scheduled_ns": sent, "sent_ns": sent, "done_ns": sent + 1_000_000,
                "max_tokens": 5,
                "error": {"kind": "connect", "message": "connection refused"},
            });
        }
        v
    });
    edit_lines(&trials.join("mps/agent.jsonl"), |mut v| {
        if v["state"] == "finished" {
            v["state"] = "invalid".into();
            v["reason"] = "engine of b exited with status 1".into();
        }
        v
    });
}

#[test]
fn a_damaged_experiment_still_reports_and_names_every_gap() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("damaged");
    copy_tree(&fixture("golden"), &dir);
    // The plan also lists a timeslice trial that never ran.
    let plan_path = dir.join("plan.json");
    let mut plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_path).expect("plan")).expect("json");
    plan["nodes"][0]["trials"]
        .as_array_mut()
        .expect("trials")
        .push(
            serde_json::json!({"trial": "timeslice", "mode": "timeslice", "tenants": ["a", "b"]}),
        );
    std::fs::write(&plan_path, plan.to_string()).expect("plan");
    damage(&dir);

    let (_, coordinator) = binaries();
    let out = Command::new(coordinator)
        .args(["analyze", "--write"])
        .arg(&dir)
        .output()
        .expect("analyze");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // summary.json: each gap is named with its file and reason.
    let summary = read_summary(&dir);
    let trial = |name: &str| {
        summary.nodes[0]
            .trials
            .iter()
            .find(|t| t.trial == name)
            .unwrap_or_else(|| panic!("no trial {name}"))
    };
    let solo_a = trial("solo-a");
    assert!(solo_a.tenants.is_empty());
    assert_eq!(solo_a.missing[0].tenant, "a");
    assert!(
        solo_a.missing[0].reason.contains("a.jsonl:1"),
        "{:?}",
        solo_a.missing
    );
    let solo_b = trial("solo-b");
    assert_eq!(solo_b.missing[0].tenant, "b");
    assert!(solo_b.missing[0].reason.contains("b.jsonl does not exist"));
    let timeslice = trial("timeslice");
    assert_eq!(timeslice.state, TrialStatus::Missing);
    assert_eq!(timeslice.missing.len(), 2);
    let mps = trial("mps");
    assert_eq!(mps.state, TrialStatus::Invalid);
    assert_eq!(
        mps.reason.as_deref(),
        Some("engine of b exited with status 1")
    );
    assert!(mps.gpus.is_empty() && mps.energy_per_output_token_j.is_none());
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("gpu.jsonl:1") && w.contains("no GPU figures")),
        "{:?}",
        summary.warnings
    );
    let b = mps.tenants.iter().find(|t| t.tenant == "b").expect("b");
    assert_eq!((b.metrics.sent, b.metrics.completed), (4, 0));
    assert!(b.metrics.ttft_ms.is_none() && b.metrics.throughput.is_none());
    assert!(b.slowdown.is_none(), "no solo baseline for b");
    let a = mps.tenants.iter().find(|t| t.tenant == "a").expect("a");
    assert_eq!(a.metrics.sent, 4, "the cut line is skipped, not guessed");
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("mps/a.jsonl:") && w.contains("truncated last line")),
        "{:?}",
        summary.warnings
    );

    // summary.csv and the terminal table name the missing tenants; no number from nothing.
    let csv = std::fs::read_to_string(dir.join("summary.csv")).expect("csv");
    assert!(csv.contains("n,solo-b,solo,stream missing,b,"), "{csv}");
    assert!(
        csv.contains("n,timeslice,timeslice,stream missing,a,"),
        "{csv}"
    );
    let b_row = csv
        .lines()
        .find(|l| l.starts_with("n,mps,mps,invalid,b,"))
        .expect("b's row");
    assert!(
        b_row.contains(",4,0,4,,,,,,,,,"),
        "empty cells, not zeros: {b_row}"
    );
    assert!(stdout.contains("stream missing"), "{stdout}");
    assert!(stdout.contains("mps (invalid)"), "{stdout}");

    // report.html: renders, says what is missing and why, never NaN or a made-up 0.
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    for text in ["NaN", "inf<", ">0.00</td>"] {
        assert!(!html.contains(text), "the report shows {text}");
    }
    assert!(
        html.contains("stream missing:"),
        "missing streams not shown"
    );
    assert!(html.contains("b.jsonl does not exist (plan.json lists this tenant)"));
    assert!(
        html.contains("timeslice (missing:"),
        "missing trial not shown"
    );
    assert!(
        html.contains("engine of b exited with status 1"),
        "invalid reason not shown"
    );
    assert!(html.contains("truncated last line"), "truncation not shown");
    assert!(html.contains("no data"), "no-data cells");
}
