//! What survives a coordinator's end, and what a pipeline reads from its exit code: a local
//! agent dies with its coordinator even under SIGKILL, an agent's death is reported within
//! seconds with its prompt record kept, SIGTERM stops an experiment as Ctrl-C
//! does (exit 4), a run where no trial finished exits 5 with each reason in the terminal, and
//! a config named without a folder runs. They start, signal and kill whole coordinators with
//! their agents, whose start-ups compete for the cores with the timing tests: ignored by the
//! main suite and run alone by scripts/test.sh (`--ignored`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{binaries, read_summary, results_dir};

/// `coordinator run <cfg> --output-dir <runs>` to its end, which must be exit code 5 (no trial
/// finished); its stdout and stderr.
fn run_expecting_exit_5(coordinator: &Path, cfg: &Path, runs: &Path) -> (String, String) {
    let out = Command::new(coordinator)
        .arg("run")
        .arg(cfg)
        .arg("--output-dir")
        .arg(runs)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(5), "{stdout}{stderr}");
    (stdout, stderr)
}

/// PIDs of processes whose command line mentions `needle` (the test's own folder).
fn processes_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && cmdline.contains(" serve ") {
            found.push(pid);
        }
    }
    found
}

/// Waits up to `limit` for `done`, checking every 100 ms.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// A one-tenant simulated experiment that measures for `duration`.
fn long_config(dir: &Path, duration: &str) -> PathBuf {
    let cfg = dir.join("long.yaml");
    std::fs::write(
        &cfg,
        format!("name: long\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 5}}, data: {{prompt_tokens: 8, output_tokens: 8}}, warmup: 0s, duration: {duration}}}\nnodes:\n  - name: n\n    trials: [solo]\n    tenants: [{{name: t, engine: {{kind: simulated}}, workload: w}}]\n"),
    )
    .expect("config");
    cfg
}

/// Starts `coordinator run` on `cfg` and waits until its agent serves and a tenant stream
/// reaches the experiment folder.
fn start_run(tmp: &Path, cfg: &Path) -> Child {
    let (_, coordinator) = binaries();
    let child = Command::new(coordinator)
        .arg("run")
        .arg(cfg)
        .arg("--output-dir")
        .arg(tmp.join("runs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");
    let streaming = wait_for(Duration::from_secs(60), || {
        !processes_mentioning(tmp).is_empty()
            && crate::support::files_under(&tmp.join("runs"))
                .iter()
                .any(|f| f.ends_with("t.jsonl"))
    });
    assert!(streaming, "the run did not start");
    child
}

#[test]
#[ignore = "heavy: starts, signals and kills coordinators and agents; scripts/test.sh runs it alone"]
fn a_coordinator_killed_by_sigkill_takes_its_local_agent_with_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = long_config(tmp.path(), "60s");
    let mut coordinator = start_run(tmp.path(), &cfg);
    let agents = processes_mentioning(tmp.path());
    assert_eq!(agents.len(), 1, "one local agent: {agents:?}");
    // Some requests, so that there is something to adopt.
    std::thread::sleep(Duration::from_secs(2));
    coordinator.kill().expect("SIGKILL the coordinator");
    coordinator.wait().expect("reaped");
    // Simulated engines run inside the agent, so the agent's end is theirs too (vLLM engines
    // are process groups that the agent's guard ends, tests/engine_supervisor.rs).
    let gone = wait_for(Duration::from_secs(5), || {
        processes_mentioning(tmp.path()).is_empty()
    });
    assert!(
        gone,
        "the agent outlived its coordinator: {:?}",
        processes_mentioning(tmp.path())
    );
    // It stopped its run and kept what it recorded, which `coordinator attach` adopts: the
    // folder then holds the agent's copy byte for byte, and the summary counts all of it.
    let runs = tmp.path().join("runs");
    let kept = crate::support::files_under(&runs);
    let agent_stream = kept
        .iter()
        .find(|f| f.to_string_lossy().contains(".agent/n/") && f.ends_with("solo-t/t.jsonl"))
        .map(|f| runs.join(f))
        .unwrap_or_else(|| panic!("no agent copy of the tenant stream in {kept:?}"));
    let dir = agent_stream
        .ancestors()
        .find(|d| d.join("nodes").is_dir())
        .expect("the experiment folder")
        .to_owned();
    let collected = std::fs::read(dir.join("nodes/n/solo-t/t.jsonl")).unwrap_or_default();
    let theirs = std::fs::read(&agent_stream).expect("agent copy");
    assert!(theirs.starts_with(&collected));
    assert!(
        !dir.join("summary.json").exists(),
        "the killed run wrote no summary"
    );
    let (_, coordinator) = binaries();
    let attach = Command::new(coordinator)
        .arg("attach")
        .arg(&dir)
        .output()
        .expect("attach");
    let stdout = String::from_utf8_lossy(&attach.stdout);
    let stderr = String::from_utf8_lossy(&attach.stderr);
    // Interrupted: the agent stopped its trial when its coordinator went.
    assert_eq!(attach.status.code(), Some(4), "{stdout}{stderr}");
    assert!(
        stderr.contains("node n: adopted the agent's copy: ")
            && !stderr.contains(" 0 verified against its SHA256SUMS"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.join("nodes/n/solo-t/t.jsonl")).expect("adopted"),
        theirs,
        "the folder holds the agent's copy"
    );
    let (requests, _) = crate::support::request_events(&dir.join("nodes/n/solo-t/t.jsonl"));
    let summary = read_summary(&dir);
    assert!(summary.interrupted);
    assert!(
        !summary
            .warnings
            .iter()
            .any(|w| w.contains("its schedule placed")),
        "a stopped trial is judged against the arrivals before its stop: {:?}",
        summary.warnings
    );
    let (_, trial) = summary.trials().next().expect("the solo trial");
    assert_eq!(trial.state, multitenant::analysis::TrialStatus::Stopped);
    assert!(requests.len() >= 5, "{} requests", requests.len());
    assert_eq!(
        trial.tenants[0].metrics.sent,
        requests.len() as u64,
        "{stdout}"
    );
}

#[test]
#[ignore = "heavy: starts, signals and kills coordinators and agents; scripts/test.sh runs it alone"]
fn an_agent_killed_by_sigkill_is_reported_within_5_s_and_its_prompts_are_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = long_config(tmp.path(), "60s");
    let mut coordinator = start_run(tmp.path(), &cfg);
    // Let some requests end, so there are prompts to keep.
    std::thread::sleep(Duration::from_secs(2));
    let stderr = coordinator.stderr.take().expect("stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send((Instant::now(), line));
        }
    });
    let agents = processes_mentioning(tmp.path());
    assert_eq!(agents.len(), 1, "one local agent: {agents:?}");
    kill(Pid::from_raw(agents[0]), Signal::SIGKILL).expect("SIGKILL the agent");
    let killed = Instant::now();
    let out = coordinator.wait_with_output().expect("coordinator ends");
    let printed: Vec<(Instant, String)> = lines.try_iter().collect();
    let all: String = printed.iter().map(|(_, l)| format!("{l}\n")).collect();
    let (seen, line) = printed
        .iter()
        .find(|(_, l)| l.contains("the agent is gone"))
        .unwrap_or_else(|| panic!("the death was not reported:\n{all}"));
    assert!(
        seen.duration_since(killed) < Duration::from_secs(5),
        "reported {:?} after the kill: {line}",
        seen.duration_since(killed)
    );
    assert!(line.contains("node n"), "{line}");
    assert_eq!(out.status.code(), Some(1), "{all}");
    // The agent's own copy: every request its tenant stream recorded has its prompt (but
    // for one that ended in the instant of the kill).
    let kept = crate::support::files_under(&tmp.path().join("runs"));
    let prompts_path = kept
        .iter()
        .find(|f| f.to_string_lossy().contains("/.agent/") && f.ends_with("t.prompts.jsonl"))
        .unwrap_or_else(|| panic!("no prompt record kept: {kept:?}"));
    let prompts_path = tmp.path().join("runs").join(prompts_path);
    let prompts = multitenant::events::read_stream(&prompts_path).expect("prompts readable");
    let prompt_ids: std::collections::BTreeSet<String> = prompts
        .events
        .iter()
        .filter_map(|l| match &l.event {
            multitenant::events::Event::Prompt(p) => Some(p.id.clone()),
            _ => None,
        })
        .collect();
    let requests = multitenant::events::read_stream(&prompts_path.with_file_name("t.jsonl"))
        .expect("tenant stream readable");
    let request_ids: Vec<String> = requests.requests().map(|r| r.id.clone()).collect();
    assert!(request_ids.len() >= 5, "{} requests", request_ids.len());
    let missing = request_ids
        .iter()
        .filter(|id| !prompt_ids.contains(*id))
        .count();
    assert!(
        missing <= 1,
        "{missing} of {} requests lost their prompt",
        request_ids.len()
    );
}

#[test]
#[ignore = "heavy: starts, signals and kills coordinators and agents; scripts/test.sh runs it alone"]
fn sigterm_stops_the_experiment_like_ctrl_c_and_exits_4() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = long_config(tmp.path(), "60s");
    let coordinator = start_run(tmp.path(), &cfg);
    // While it runs, no other coordinator may write into its folder.
    let folder = std::fs::read_dir(tmp.path().join("runs"))
        .expect("runs")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("nodes").is_dir())
        .expect("the experiment folder");
    let attach = |dir: &Path| {
        let (_, bin) = binaries();
        Command::new(bin)
            .arg("attach")
            .arg(dir)
            .output()
            .expect("attach")
    };
    let refused = attach(&folder);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "is in use by coordinator run (pid {}",
            coordinator.id()
        )),
        "{said}"
    );
    let pid = Pid::from_raw(i32::try_from(coordinator.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let started = Instant::now();
    let out = coordinator.wait_with_output().expect("coordinator ends");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stdout}{stderr}");
    assert!(
        stderr.contains("SIGTERM: stopping the experiment"),
        "{stderr}"
    );
    assert!(stdout.contains("INTERRUPTED"), "{stdout}");
    // Judged against the arrivals scheduled before the stop, the load was on time.
    assert!(!stdout.contains("its schedule placed"), "{stdout}");
    let dir = results_dir(&stdout);
    assert!(read_summary(&dir).interrupted);
    // Kept in the folder: a later analysis still says so.
    let analysed = multitenant::analysis::analyze_dir(&dir).expect("analysis");
    assert!(analysed.interrupted);
    assert!(
        processes_mentioning(tmp.path()).is_empty(),
        "agent left behind"
    );
    // Its end let the folder go.
    let later = attach(&folder);
    let said = String::from_utf8_lossy(&later.stderr);
    assert!(!said.contains("is in use by"), "{said}");
    assert!(read_summary(&folder).interrupted);
}

#[test]
#[ignore = "heavy: starts, signals and kills coordinators and agents; scripts/test.sh runs it alone"]
fn a_run_where_no_trial_finished_exits_5_and_prints_each_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (agent, coordinator) = binaries();
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-vllm.sh");
    let cfg = tmp.path().join("crash.yaml");
    std::fs::write(
        &cfg,
        format!("name: crash\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 5}}, data: {{prompt_tokens: 8, output_tokens: 8}}, warmup: 0s, duration: 20s}}\nnodes:\n  - name: n\n    trials: [solo]\n    tenants: [{{name: t, workload: w, engine: {{kind: vllm, model: crash-after-2, executable: {}, startup_timeout: 10s, kv_cache_memory_bytes: 134217728, env: {{FAKE_VLLM_AGENT_BIN: {}}}}}}}]\n", fake.display(), agent.display()),
    )
    .expect("config");
    let (stdout, stderr) = run_expecting_exit_5(coordinator, &cfg, &tmp.path().join("runs"));
    assert!(
        stdout.contains("trial n/solo-t invalid: the engine of t exited during the trial"),
        "{stdout}"
    );
    assert!(
        stdout.contains("experiment crash"),
        "the name is shown: {stdout}"
    );
    assert!(stderr.contains("no trial finished"), "{stderr}");
}

#[test]
#[ignore = "heavy: starts, signals and kills coordinators and agents; scripts/test.sh runs it alone"]
fn an_unreachable_external_endpoint_exits_5_with_its_reason_in_the_terminal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, coordinator) = binaries();
    // Nothing listens on the discard port of loopback.
    let cfg = tmp.path().join("ext.yaml");
    std::fs::write(
        &cfg,
        "name: unreachable\nworkloads:\n  w: {arrival: {kind: constant, rate: 5}, data: {prompt_tokens: 8, output_tokens: 8}, warmup: 0s, duration: 2s}\nnodes:\n  - {name: n, trials: [solo], tenants: [{name: t, workload: w, engine: {kind: external, url: \"http://127.0.0.1:9\", model: m}}]}\n",
    )
    .expect("config");
    let (stdout, stderr) = run_expecting_exit_5(coordinator, &cfg, &tmp.path().join("runs"));
    assert!(
        stdout.contains(
            "trial n/solo-t invalid: tenant t: http://127.0.0.1:9 did not become healthy within 30s"
        ),
        "the reason is in the terminal, not only in summary.json: {stdout}"
    );
    assert!(stdout.contains("experiment unreachable"), "{stdout}");
    assert!(stderr.contains("no trial finished"), "{stderr}");
}

#[test]
#[ignore = "heavy: starts, signals and kills coordinators and agents; scripts/test.sh runs it alone"]
fn a_config_named_without_a_folder_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    long_config(tmp.path(), "1s");
    let (_, coordinator) = binaries();
    let out = Command::new(coordinator)
        .current_dir(tmp.path())
        .args(["run", "long.yaml", "--output-dir", "runs"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = results_dir(&stdout);
    let dir = if dir.is_absolute() {
        dir
    } else {
        tmp.path().join(dir)
    };
    assert!(read_summary(&dir)
        .trials()
        .all(|(_, t)| t.state.is_finished()));
}

#[test]
fn absurd_rates_and_names_that_cannot_be_file_names_are_refused_with_the_bound() {
    let config = |name: &str, rate: &str| {
        format!("name: {name}\nworkloads:\n  w: {{arrival: {{kind: poisson, rate: {rate}}}, data: {{prompt_tokens: 8, output_tokens: 8}}, duration: 3s}}\nnodes:\n  - name: n\n    tenants: [{{name: t, engine: {{kind: simulated}}, workload: w}}]\n")
    };
    let refused = |yaml: String| {
        multitenant::config::Experiment::from_yaml(&yaml, "x.yaml")
            .expect_err("refused")
            .to_string()
    };
    let fast = refused(config("ok", "1e9"));
    assert!(
        fast.contains("workloads.w.arrival.rate") && fast.contains("at most 10000/s"),
        "{fast}"
    );
    for name in ["..", ".hidden", &"x".repeat(65)] {
        let text = refused(config(name, "2"));
        assert!(
            text.contains("cannot name files and folders"),
            "{name}: {text}"
        );
    }
    assert!(multitenant::config::Experiment::from_yaml(&config("ok", "10000"), "x.yaml").is_ok());
    // Over the size one gRPC message carries to an agent: refused by validation, not at run.
    let padded = format!(
        "{}# {}\n",
        config("ok", "2"),
        "x".repeat(multitenant::config::MAX_CONFIG_BYTES)
    );
    let big = refused(padded);
    assert!(big.contains("-byte bound") && big.contains("gRPC"), "{big}");
}
