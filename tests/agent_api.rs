//! The agent's API on bad and repeated calls, and a run stopped mid-trial: in-flight requests
//! are recorded as cancelled, the trial says it was stopped, and every stream is closed.

use std::time::Duration;

use multitenant::events::{read_stream, ErrorKind, Event, TrialState};
use multitenant::proto::v1::agent_client::AgentClient;
use multitenant::proto::v1::{GetRunRequest, RunStatus, StartRunRequest, StopRunRequest};
use tonic::Code;

use crate::support::{request_events, test_token, InProcessAgent};

const SLOW: &str = r#"
name: slow
workloads:
  w:
    arrival: {kind: concurrency, n: 4}
    data: {prompt_tokens: 8, output_tokens: 64}
    warmup: 0s
    duration: 60s
nodes:
  - name: n
    trials: [mps, timeslice]
    tenants:
      - {name: a, engine: {kind: simulated, timing: {decode_step_us: 50000}}, workload: w}
"#;

fn start(run_id: &str, config: &str, node: &str) -> tonic::Request<StartRunRequest> {
    let req = StartRunRequest {
        run_id: run_id.into(),
        config_yaml: config.into(),
        node: node.into(),
    };
    test_token()
        .attach(tonic::Request::new(req))
        .expect("attach")
}

fn authed<T>(req: T) -> tonic::Request<T> {
    test_token()
        .attach(tonic::Request::new(req))
        .expect("attach")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_are_refused_with_reasons_and_a_stopped_run_records_its_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = InProcessAgent::start(tmp.path()).await;
    let mut client = AgentClient::connect(agent.url.clone())
        .await
        .expect("connect");

    let bad_config = SLOW.replace("n: 4", "n: 0");
    let err = client
        .start_run(start("r1", &bad_config, "n"))
        .await
        .expect_err("bad config");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("workloads.w.arrival.n: n must be ≥ 1"),
        "{}",
        err.message()
    );
    let err = client
        .start_run(start("r1", SLOW, "nope"))
        .await
        .expect_err("unknown node");
    assert!(
        err.message().contains("no node named \"nope\""),
        "{}",
        err.message()
    );
    let err = client
        .start_run(start("../escape", SLOW, "n"))
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);

    let first = client
        .start_run(start("r1", SLOW, "n"))
        .await
        .expect("start")
        .into_inner();
    assert_eq!(
        (first.already_running, first.trials),
        (false, vec!["mps".to_owned(), "timeslice".to_owned()])
    );
    let again = client
        .start_run(start("r1", SLOW, "n"))
        .await
        .expect("idempotent")
        .into_inner();
    assert!(again.already_running);
    let err = client
        .start_run(start("r1", &SLOW.replace("slow", "other"), "n"))
        .await
        .expect_err("conflict");
    assert_eq!(err.code(), Code::AlreadyExists);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = client
        .stop_run(authed(StopRunRequest {
            run_id: "r1".into(),
        }))
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(stopped.status(), RunStatus::Stopped);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let run = loop {
        let run = client
            .get_run(authed(GetRunRequest {
                run_id: "r1".into(),
            }))
            .await
            .expect("get")
            .into_inner();
        if run.status() != RunStatus::Running {
            break run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not stop in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(run.status(), RunStatus::Stopped);
    assert!(
        run.streams
            .iter()
            .all(|s| s.closed && s.sha256_hex.len() == 64),
        "{:?}",
        run.streams
    );
    assert!(
        !run.streams.iter().any(|s| s.path.starts_with("timeslice/")),
        "no trial starts after a stop"
    );

    let tenant = read_stream(&tmp.path().join("r1/mps/a.jsonl")).expect("tenant stream");
    let cancelled = tenant
        .events
        .iter()
        .filter(|l| matches!(&l.event, Event::Request(r) if r.error.as_ref().is_some_and(|e| e.kind == ErrorKind::Cancelled)))
        .count();
    assert_eq!(
        cancelled, 4,
        "the four in-flight requests are recorded as cancelled"
    );
    let log = read_stream(&tmp.path().join("r1/mps/agent.jsonl")).expect("agent stream");
    let last_trial_state = log.events.iter().rev().find_map(|l| match &l.event {
        Event::Trial(t) => Some(t.state),
        _ => None,
    });
    assert_eq!(last_trial_state, Some(TrialState::Stopped));
    agent.stop().await;
}

const EXCLUSIVE: &str = r#"
name: exclusive
workloads:
  w: {arrival: {kind: constant, rate: 20}, data: {prompt_tokens: 8, output_tokens: 8}, warmup: 0s, duration: 1s}
nodes:
  - name: n
    trials: [exclusive]
    tenants:
      - {name: a, engine: {kind: simulated, timing: {decode_step_us: 2000}}, workload: w}
      - {name: b, engine: {kind: simulated, timing: {decode_step_us: 2000}}, workload: w}
"#;

/// `(first sent, last done)` of a tenant stream's requests.
fn span(path: &std::path::Path) -> (u64, u64) {
    let (requests, _) = request_events(path);
    assert_eq!(requests.len(), 20, "{}", path.display());
    assert!(requests.iter().all(|r| r.error.is_none()));
    let first = requests.iter().map(|r| r.sent_ns).min().expect("requests");
    (
        first,
        requests.iter().map(|r| r.done_ns).max().expect("requests"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_trial_loads_one_tenant_at_a_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = InProcessAgent::start(tmp.path()).await;
    let mut client = AgentClient::connect(agent.url.clone())
        .await
        .expect("connect");
    client
        .start_run(start("ex", EXCLUSIVE, "n"))
        .await
        .expect("start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let run = client
            .get_run(authed(GetRunRequest {
                run_id: "ex".into(),
            }))
            .await
            .expect("get")
            .into_inner();
        if run.status() != RunStatus::Running {
            assert_eq!(run.status(), RunStatus::Finished);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, a_end) = span(&tmp.path().join("ex/exclusive/a.jsonl"));
    let (b_start, _) = span(&tmp.path().join("ex/exclusive/b.jsonl"));
    assert!(b_start > a_end, "b was loaded while a still was");
    agent.stop().await;
}
