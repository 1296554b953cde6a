//! Two nodes through the `static` launcher of the config: agents that already run (here two
//! in this process, on loopback), reached by the `coordinator` binary with tokens from its
//! environment, and one summary that shows each node and the experiment across them.

use std::process::Command;

use crate::support::{binaries, read_summary, results_dir, test_token, InProcessAgent};

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
    let (_, coordinator) = binaries();
    let token = test_token().expose().to_owned();
    let runs = tmp.path().join("runs");
    let out = tokio::task::spawn_blocking({
        let (coordinator, cfg, runs, token) = (
            coordinator.clone(),
            cfg.clone(),
            runs.clone(),
            token.clone(),
        );
        move || {
            Command::new(coordinator)
                .arg("run")
                .arg(&cfg)
                .arg("--output-dir")
                .arg(&runs)
                .env("AGENT_A_TOKEN", &token)
                .env("AGENT_B_TOKEN", &token)
                .output()
                .expect("coordinator")
        }
    })
    .await
    .expect("join");
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
