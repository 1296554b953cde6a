//! Coordinator and agent over loopback gRPC, with the event stream cut twice mid-run: the
//! coordinator resumes from the lines it holds, and its copy equals the agent's files byte for
//! byte, every sequence number once, in order.

use std::time::Duration;

use coordinator::launch::AgentEndpoint;
use coordinator::run::{run_experiment, Launch};
use multitenant::events::{read_stream, Event};
use tokio_util::sync::CancellationToken;

use crate::support::{files_under, test_token, CuttableProxy, InProcessAgent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_event_stream_resumes_with_nothing_lost_or_doubled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = InProcessAgent::start(&tmp.path().join("agent")).await;
    let proxy = CuttableProxy::start(agent.port).await;
    let endpoint = AgentEndpoint {
        url: format!("http://127.0.0.1:{}", proxy.port),
        token: test_token(),
        tls: None,
    };
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resume.yaml");
    let out = tmp.path().join("runs");
    let run = tokio::spawn({
        let out = out.clone();
        async move {
            run_experiment(
                &config,
                Some(&out),
                Launch::Static(vec![endpoint]),
                CancellationToken::new(),
            )
            .await
        }
    });
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.cut();
    }
    let outcome = run.await.expect("join").expect("experiment");
    let (node, report) = &outcome.nodes[0];
    assert_eq!(node, "node-a");
    assert_eq!(report.status, multitenant::proto::v1::RunStatus::Finished);
    assert!(
        report.resumes >= 2,
        "the stream was cut twice, resumed {} times",
        report.resumes
    );

    let run_id = outcome.dir.file_name().expect("name").to_owned();
    let agent_run = agent.data_dir.join(&run_id);
    let ours = outcome.dir.join("nodes/node-a");
    // The agent's SHA256SUMS lists its closed streams for `coordinator attach`, and its run
    // record lets a restarted agent serve the run again; neither is a stream.
    let agent_files: Vec<_> = files_under(&agent_run)
        .into_iter()
        .filter(|p| {
            p != std::path::Path::new(multitenant::layout::SUMS_FILE)
                && p != std::path::Path::new(multitenant::layout::RUN_RECORD_FILE)
        })
        .collect();
    // The node's folder holds every stream of the agent's, and the preflight the coordinator
    // asked for before the run.
    let mut copied = files_under(&ours);
    let doctor = copied
        .iter()
        .position(|p| p == std::path::Path::new("doctor.json"));
    copied.remove(doctor.expect("nodes/node-a/doctor.json"));
    assert_eq!(agent_files, copied);
    // agent, host, and per tenant its requests, the prompts they sent and its engine's
    // metrics (a simulated engine's prefix-cache counters).
    assert_eq!(agent_files.len(), 8, "{agent_files:?}");
    for rel in &agent_files {
        let theirs = std::fs::read(agent_run.join(rel)).expect("agent file");
        let copy = std::fs::read(ours.join(rel)).expect("our copy");
        assert!(theirs == copy, "{} differs from the agent's", rel.display());
        let stream = read_stream(&ours.join(rel)).expect("readable");
        assert!(stream.warnings.is_empty(), "{:?}", stream.warnings);
        for (i, line) in stream.events.iter().enumerate() {
            assert_eq!(line.seq, i as u64 + 1, "{}: sequence broken", rel.display());
        }
        if rel.ends_with("a.jsonl") {
            let requests = stream
                .events
                .iter()
                .filter(|l| matches!(l.event, Event::Request(_)))
                .count();
            assert_eq!(requests, 270, "60/s over 4.5 s");
        }
        if rel.ends_with("a.prompts.jsonl") {
            let prompts = stream
                .events
                .iter()
                .filter(|l| matches!(l.event, Event::Prompt(_)))
                .count();
            assert_eq!(prompts, 270, "one prompt per request sent");
        }
    }
    agent.stop().await;
}
