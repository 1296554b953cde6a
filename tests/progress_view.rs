//! What a user watches while trials run: on a terminal, redrawn lines per node and tenant
//! (through a pseudo-terminal made by util-linux `script`); in a pipe, plain lines. Both end
//! with one line per tenant whose count is the tenant's stream's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{binaries, request_events};

/// Two simulated tenants, solo then under MPS, 3.5 s of load each.
const CONFIG: &str = "\
name: progress
seed: 3
workloads:
  chat:
    api: chat
    arrival: {kind: constant, rate: 20}
    data: {prompt_tokens: 32, output_tokens: 8}
    warmup: 500ms
    duration: 3s
nodes:
  - name: local
    trials: [solo, mps]
    tenants:
      - {name: a, engine: {kind: simulated, model: m-a, timing: {decode_step_us: 2000}}, workload: chat}
      - {name: b, engine: {kind: simulated, model: m-b, timing: {decode_step_us: 3000}}, workload: chat}
";

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("progress.yaml");
    std::fs::write(&path, CONFIG).expect("write config");
    path
}

/// The experiment folder named by the `results:` line.
fn results_in(output: &str) -> PathBuf {
    let line = output
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("results: "))
        .unwrap_or_else(|| panic!("no results line in\n{output}"));
    PathBuf::from(line)
}

/// Each tenant of each trial left one line whose count of requests done is its stream's.
fn finished_lines_match_the_streams(output: &str, dir: &Path) {
    for trial in ["solo-a", "solo-b", "mps"] {
        let tenants: &[&str] = if trial == "mps" {
            &["a", "b"]
        } else {
            &[&trial[5..]]
        };
        for tenant in tenants {
            let (events, _) =
                request_events(&dir.join(format!("nodes/local/{trial}/{tenant}.jsonl")));
            assert!(
                events.len() > 40,
                "{trial}/{tenant}: {} requests",
                events.len()
            );
            let failed = events.iter().filter(|e| e.error.is_some()).count();
            let line = format!(
                "  local/{trial}/{tenant}: done {}, failed {failed}, ",
                events.len() - failed
            );
            assert!(output.contains(&line), "no `{line}` in\n{output}");
        }
    }
}

#[test]
fn a_pipe_gets_plain_lines_a_stage_change_at_a_time() {
    let (_, coordinator) = binaries();
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = Command::new(coordinator)
        .args(["run", "--output-dir"])
        .arg(tmp.path())
        .arg(write_config(tmp.path()))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escape codes in a pipe:\n{stderr}"
    );
    // The node's stages of its last trial, in order, each once. Draining may be passed over:
    // the agent's record of the trial's end and the tenants' streams come in apart, and an end
    // seen first closes the trial's lines (CI saw it once).
    let mut at = 0;
    for stage in [
        "starting engines",
        "warming up",
        "measuring",
        "draining in-flight requests",
        "finished",
    ] {
        let line = format!("node local: trial mps (3 of 3): {stage}\n");
        let Some(found) = stderr[at..].find(&line) else {
            assert!(
                stage.starts_with("draining") && stderr[at..].contains("(3 of 3): finished\n"),
                "no `{line}` after byte {at} of\n{stderr}"
            );
            continue;
        };
        at += found + line.len();
        assert_eq!(stderr.matches(&line).count(), 1, "{line}");
    }
    // Running lines every 2 s: done, failed, rate, TTFT so far and time against the plan.
    let running = stderr
        .lines()
        .find(|l| l.starts_with("  local/") && l.contains(" req/s "))
        .unwrap_or_else(|| panic!("no running line in\n{stderr}"));
    assert!(running.contains("failed "), "{running}");
    assert!(running.contains("TTFT p50 "), "{running}");
    assert!(running.contains(" of 3.5 s, "), "{running}");
    finished_lines_match_the_streams(&stderr, &results_in(&stdout));
}

#[test]
fn a_terminal_gets_redrawn_lines_and_every_other_line_above_them() {
    let (_, coordinator) = binaries();
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(tmp.path());
    let command = format!(
        "stty cols 200 rows 50; exec {} run --output-dir {} {}",
        coordinator.display(),
        tmp.path().display(),
        config.display()
    );
    // `script` runs the command on a pseudo-terminal of its own; -e passes its exit code on.
    let run = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("TERM", "xterm-256color")
        .output()
        .expect("util-linux `script` runs");
    let output = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{output}");
    // Redrawn: cursor moved up and lines cleared, bars with their time against the plan.
    assert!(output.contains("\x1b[1A"), "no cursor-up in\n{output}");
    assert!(output.contains("\x1b[2K"), "no line clear in\n{output}");
    assert!(
        output.contains("node local: trial mps (3 of 3): measuring"),
        "{output}"
    );
    // A bar drawn before the tenant's first answer shows `TTFT -`; later ones show the p50.
    let bars: Vec<&str> = output
        .split(['\r', '\n'])
        .filter(|l| l.contains("local/mps/a [") && l.contains(" req/s "))
        .collect();
    assert!(!bars.is_empty(), "no live line for mps/a in\n{output}");
    for bar in &bars {
        assert!(bar.contains(" of 3.5 s, "), "{bar}");
        assert!(
            bar.contains("TTFT p50 ") || bar.contains("TTFT - "),
            "{bar}"
        );
    }
    assert!(
        bars.iter().any(|bar| bar.contains("TTFT p50 ")),
        "no live line for mps/a with a TTFT in\n{}",
        bars.join("\n")
    );
    // Printed above the view, whole, after the view's line was cleared (indicatif pads a line
    // to the terminal's width rather than ending it): the agent's line and each tenant's last.
    assert!(
        output.contains("\x1b[2Knode local: trials solo-a, solo-b, mps   "),
        "{output}"
    );
    finished_lines_match_the_streams(&output, &results_in(&output));
}
