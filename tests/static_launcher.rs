//! Two nodes through the `static` launcher of the config: agents that already run (here two
//! in this process, on loopback), reached by the `coordinator` binary with tokens from its
//! environment, and one summary that shows each node and the experiment across them.

use std::process::Command;

use crate::support::{
    binaries, read_summary, results_dir, run_coordinator, test_token, InProcessAgent,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_static_agents_give_one_summary_with_merged_histograms() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = InProcessAgent::start(&tmp.path().join("agent-a")).await;
    let b = InProcessAgent::start(&tmp.path().join("agent-b")).await;
    let config = format!(
        "name: two\nlauncher:\n  kind: static\n  agents:\n    - {{node: a, url: \"{}\", token_env: AGENT_A_TOKEN}}\n    - {{node: b, url: \"{}\", token_env: AGENT_B_TOKEN}}\nworkloads:\n  fast: {{arrival: {{kind: constant, rate: 20}}, data: {{prompt_tokens: 8, output_tokens: 8}}, warmup: 0s, duration: 2s}}\n  slow: {{arrival: {{kind: constant, rate: 10}}, data: {{prompt_tokens: 8, output_tokens: 32}}, warmup: 0s, duration: 2s}}\nnodes:\n  - {{name: a, trials: [mps], tenants: [{{name: x, engine: {{kind: simulated, timing: {{decode_step_us: 2000}}}}, workload: fast}}]}}\n  - {{name: b, trials: [mps], tenants: [{{name: y, engine: {{kind: simulated, timing: {{decode_step_us: 12000}}}}, workload: slow}}]}}\n",
        a.url, b.url
    );
    let cfg = tmp.path().join("two.yaml");
    std::fs::write(&cfg, config).expect("config");
    let runs = tmp.path().join("runs");
    let out = run_coordinator(&cfg, &runs, &["AGENT_A_TOKEN", "AGENT_B_TOKEN"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("across nodes"), "{stdout}");
    let summary = read_summary(&results_dir(&stdout));
    let per_node: Vec<_> = summary
        .nodes
        .iter()
        .map(|n| {
            (
                n.node.clone(),
                n.trials[0].tenants[0].metrics.clone(),
                n.trials[0].aggregate_output_tokens_per_s,
            )
        })
        .collect();
    assert_eq!(
        per_node
            .iter()
            .map(|(n, ..)| n.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(summary.across_nodes.len(), 1);
    let across = &summary.across_nodes[0];
    assert_eq!((across.trial.as_str(), across.nodes.len()), ("mps", 2));
    assert_eq!(
        across.completed,
        per_node.iter().map(|(_, m, _)| m.completed).sum::<u64>()
    );
    // Node a answers in ~2 ms steps, node b in ~12 ms: merged, the median lies between the
    // two nodes' medians and the extremes are the nodes' extremes, which an average of
    // percentiles would not give.
    let ttft = across.ttft_ms.expect("merged TTFT");
    let (ta, tb) = (
        per_node[0].1.ttft_ms.expect("a"),
        per_node[1].1.ttft_ms.expect("b"),
    );
    assert!(ta.p50 < tb.p50, "{ta:?} {tb:?}");
    assert!(ttft.p50 >= ta.p50 && ttft.p50 <= tb.p50, "{ttft:?}");
    assert_eq!(ttft.max, ta.max.max(tb.max));
    assert_eq!(ttft.min, ta.min.min(tb.min));
    let sum: f64 = per_node.iter().filter_map(|(.., r)| *r).sum();
    let across_rate = across.output_tokens_per_s.expect("rate");
    assert!((across_rate - sum).abs() < 0.01, "{across_rate} vs {sum}");
    a.stop().await;
    b.stop().await;
}

/// A coordinator killed mid-run leaves a static agent running its trial; `coordinator attach`
/// calls it again, collects the rest from the lines the folder holds, and writes the summary
/// of a run that finished: the folder's copy is then the agent's, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_resumes_from_a_static_agent_after_its_coordinator_was_killed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent_dir = tmp.path().join("agent-a");
    let agent = InProcessAgent::start(&agent_dir).await;
    let config = format!(
        "name: killed\nlauncher:\n  kind: static\n  agents:\n    - {{node: a, url: \"{}\", token_env: AGENT_A_TOKEN}}\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 20}}, data: {{prompt_tokens: 8, output_tokens: 8}}, warmup: 0s, duration: 6s}}\nnodes:\n  - {{name: a, trials: [mps], tenants: [{{name: x, engine: {{kind: simulated, timing: {{decode_step_us: 2000}}}}, workload: w}}]}}\n",
        agent.url
    );
    let cfg = tmp.path().join("killed.yaml");
    std::fs::write(&cfg, config).expect("config");
    let (_, coordinator) = binaries();
    let token = test_token().expose().to_owned();
    let runs = tmp.path().join("runs");
    let mut run = Command::new(coordinator)
        .arg("run")
        .arg(&cfg)
        .arg("--output-dir")
        .arg(&runs)
        .env("AGENT_A_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("coordinator");
    // Killed once some of the tenant's requests are in the folder.
    let collected = |runs: &std::path::Path| {
        if !runs.is_dir() {
            return None;
        }
        crate::support::files_under(runs)
            .into_iter()
            .find(|f| f.ends_with("nodes/a/mps/x.jsonl"))
            .map(|f| runs.join(f))
    };
    let started = std::time::Instant::now();
    let stream = loop {
        if let Some(f) = collected(&runs) {
            if std::fs::read(&f).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) > 10 {
                break f;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the run did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    run.kill().expect("SIGKILL the coordinator");
    run.wait().expect("reaped");
    let dir = stream
        .ancestors()
        .find(|d| d.join("plan.json").is_file())
        .expect("the experiment folder")
        .to_owned();
    let run_id = dir.file_name().expect("name").to_owned();
    let out = tokio::task::spawn_blocking({
        let (coordinator, dir, token) = (coordinator.clone(), dir.clone(), token.clone());
        move || {
            Command::new(coordinator)
                .arg("attach")
                .arg(&dir)
                .env("AGENT_A_TOKEN", &token)
                .output()
                .expect("attach")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("node a: collected to the run's end from "),
        "{stderr}"
    );
    let theirs = std::fs::read(agent_dir.join(&run_id).join("mps/x.jsonl")).expect("agent copy");
    assert_eq!(std::fs::read(&stream).expect("ours"), theirs);
    let summary = read_summary(&dir);
    assert!(!summary.interrupted, "the run itself ran to its end");
    let (_, trial) = summary.trials().next().expect("the trial");
    assert!(trial.state.is_finished(), "{:?}", trial.state);
    assert_eq!(trial.tenants[0].metrics.sent, 120, "6 s at 20/s");
    agent.stop().await;
}
