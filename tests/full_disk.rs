//! An agent whose disk fills up mid-trial: a 4 MiB tmpfs made by the test (root is needed to
//! mount it) holds the agent's runs, and prompts of some 20 KB each fill it within a second.
//! The trial stops at the first write that failed and ends `invalid`, the run fails (exit 1)
//! naming the file and ENOSPC in the terminal, and no later trial starts; every file on the full disk ends with a whole line; the
//! coordinator's copy (on another disk) equals the agent's files byte for byte; and the run's
//! reserve, which let the trial's end be written, is gone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use multitenant::events::read_stream;

use crate::support::{files_under, run_coordinator, InProcessAgent};

/// A tmpfs of `size` mounted at `at` until dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed ({status}): this test needs root, as CI has",
            at.display()
        );
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_ends_the_trial_invalid_with_the_file_and_keeps_every_whole_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "4m");
    let agent = InProcessAgent::start(&disk.0.join("agent")).await;
    let config = format!(
        "name: full\nlauncher:\n  kind: static\n  agents:\n    - {{node: n, url: \"{}\", token_env: AGENT_TOKEN}}\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 200}}, data: {{prompt_tokens: 4000, output_tokens: 8}}, warmup: 0s, duration: 30s}}\nnodes:\n  - {{name: n, trials: [mps, timeslice], tenants: [{{name: a, engine: {{kind: simulated, timing: {{prefill_us_per_token: 0, decode_step_us: 1000}}}}, workload: w}}]}}\n",
        agent.url
    );
    let cfg = tmp.path().join("full.yaml");
    std::fs::write(&cfg, config).expect("config");
    let runs = tmp.path().join("runs");
    let began = Instant::now();
    let out = run_coordinator(&cfg, &runs, &["AGENT_TOKEN"]).await;
    let took = began.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let terminal = format!("{stdout}\n{stderr}");
    // The node's run failed: exit 1, with the file and the error in the terminal.
    assert_eq!(out.status.code(), Some(1), "{terminal}");
    assert!(
        terminal.contains("the run failed on the agent: trial mps: cannot write mps/"),
        "{terminal}"
    );
    assert!(terminal.contains("No space left on device"), "{terminal}");
    assert!(
        terminal.contains("the trials after it were not run"),
        "the second trial is not tried on the full disk: {terminal}"
    );
    assert!(
        took < Duration::from_secs(20),
        "a 30 s trial on a full disk must stop at the failed write, took {took:?}"
    );

    let dir = std::fs::read_dir(&runs)
        .expect("runs")
        .next()
        .expect("the experiment folder")
        .expect("entry")
        .path();
    assert!(
        dir.join("summary.json").is_file(),
        "what was collected is summarised"
    );
    assert!(
        dir.join("summary.json").is_file(),
        "what was collected is summarised"
    );
    let run_id = dir.file_name().expect("name").to_owned();
    let agent_run = agent.data_dir.join(&run_id);
    assert!(
        !agent_run.join(".disk-reserve").exists(),
        "the reserve is given back once the run ended"
    );
    let ours = dir.join("nodes/n");
    let streams: Vec<PathBuf> = files_under(&agent_run)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert!(
        streams.iter().any(|p| p.ends_with("a.prompts.jsonl")),
        "{streams:?}"
    );
    for rel in &streams {
        let theirs = std::fs::read(agent_run.join(rel)).expect("agent file");
        assert!(
            theirs.ends_with(b"\n"),
            "{} ends inside a line on the full disk",
            rel.display()
        );
        let stream = read_stream(&agent_run.join(rel)).expect("readable");
        assert!(
            stream.warnings.is_empty(),
            "{}: {:?}",
            rel.display(),
            stream.warnings
        );
        let copy = std::fs::read(ours.join(rel)).expect("the coordinator's copy");
        assert!(theirs == copy, "{} differs from the agent's", rel.display());
    }
    // The trial's end was recorded on the full disk, with its reason.
    let agent_log = read_stream(&agent_run.join("mps/agent.jsonl")).expect("agent.jsonl");
    let end = agent_log.events.iter().rev().find_map(|l| match &l.event {
        multitenant::events::Event::Trial(t) => Some(t.clone()),
        _ => None,
    });
    let end = end.expect("the trial's end");
    assert_eq!(end.state, multitenant::events::TrialState::Invalid);
    assert!(
        end.reason
            .as_deref()
            .is_some_and(|r| r.contains("No space left on device")),
        "{end:?}"
    );
    drop(agent);
}
