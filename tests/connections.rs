//! Connections of the load generator: a TCP connect is recorded on its own and never counted
//! as time to first token, and a closed loop starts on a pool opened before its clock.

use std::time::Duration;

use agent::clock::RunClock;
use agent::loadgen::client::{self, Target};
use agent::loadgen::connections::LoadClient;
use multitenant::config::{Api, Arrival, ArrivalPlan, SimFaults, SimTiming};
use tokio_util::sync::CancellationToken;

use crate::support::{constant_workload, four_word_prompt, record_load, sim_engine};

fn timing() -> SimTiming {
    SimTiming {
        max_batch: 64,
        prefill_us_per_token: 0.0,
        decode_step_us: 2_000.0,
        decode_step_us_per_seq: 0.0,
        prefix_cache_tokens: 0,
        ..SimTiming::default()
    }
}

/// The first request on a fresh client opens a connection and records its connect, with
/// `sent_ns` at the instant the connection was ready, before the engine received it; the
/// second reuses the connection and records none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_opened_a_connection_records_the_connect_outside_ttft() {
    let engine = sim_engine(timing(), SimFaults::default()).await;
    let clock = RunClock::start();
    let http = LoadClient::new(clock).expect("client");
    let target = Target {
        base_url: engine.base_url(),
        api: Api::Chat,
        model: "sim".into(),
        api_key: None,
        stream: true,
        ignore_eos: true,
        request_fields: serde_json::Map::new(),
    };
    let abort = CancellationToken::new();
    let mut measured = Vec::new();
    for id in ["first", "second"] {
        let before_ns = clock.now_ns();
        let prompt = four_word_prompt();
        let request = client::Outgoing::alone(id, &prompt);
        let m = client::execute(&http, &target, request, &clock, &abort).await;
        assert!(m.error.is_none(), "{id}: {:?}", m.error);
        let truth = engine.truth(id).expect("the engine recorded it");
        let received_ns = clock.ns_at(truth.received);
        assert!(
            before_ns <= m.sent_ns && m.sent_ns <= received_ns,
            "{id}: sent {} outside [{before_ns}, {received_ns}]",
            m.sent_ns
        );
        measured.push((before_ns, m));
    }
    let (before_ns, first) = &measured[0];
    let connect_ns = first
        .connect_ns
        .expect("the first request opened a connection");
    assert!(connect_ns > 0 && connect_ns < 1_000_000_000, "{connect_ns}");
    // Sent when its connection was ready: the connect lies between the call and the send.
    assert!(first.sent_ns - before_ns >= connect_ns, "{first:?}");
    assert_eq!(measured[1].1.connect_ns, None, "the second reused it");
    engine.stop().await;
}

/// 32 closed-loop streams with no warm-up start at the same instant, yet none waits for a
/// connect: the pool was opened before the load's clock started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_closed_loop_starts_on_a_pool_opened_before_it() {
    let engine = sim_engine(timing(), SimFaults::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut workload = constant_workload(1.0, Duration::from_secs(1), 4, 8);
    workload.arrival = ArrivalPlan::Single(Arrival::Concurrency { n: 32 });
    let (_, _, requests) = record_load(&engine.base_url(), workload, dir.path()).await;
    assert!(requests.len() >= 32, "{} requests", requests.len());
    assert!(requests.iter().all(|r| r.error.is_none()));
    // The 32 first requests, one per stream: a later one may still find its connection not
    // yet back in the pool (the answer read, the connection not yet released) and open
    // another, which the load check counts; that is not the cold start.
    let mut by_send: Vec<_> = requests.iter().collect();
    by_send.sort_by_key(|r| r.sent_ns - r.connect_ns.unwrap_or(0));
    let waited: Vec<_> = by_send[..32]
        .iter()
        .filter(|r| r.connect_ns.is_some())
        .collect();
    assert!(
        waited.is_empty(),
        "{} waited for a connect: {:?}",
        waited.len(),
        waited.first()
    );
    engine.stop().await;
}
