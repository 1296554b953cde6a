//! A broken response never stops the run or enters the latency figures: HTTP errors, non-JSON
//! chunks and dropped connections each become a failed request event with its reason.

use std::collections::BTreeMap;
use std::time::Duration;

use multitenant::config::{SimFaults, SimTiming};
use multitenant::events::ErrorKind;
use multitenant::events::Phase;
use multitenant::metrics::TenantAccumulator;

use crate::support::{constant_workload, record_load, sim_engine};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_becomes_a_failed_request_with_its_reason_and_the_run_goes_on() {
    let timing = SimTiming {
        decode_step_us: 2_000.0,
        ..SimTiming::default()
    };
    let faults = SimFaults {
        http_error: 0.15,
        malformed_chunk: 0.15,
        drop_connection: 0.15,
    };
    let engine = sim_engine(timing, faults).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (report, _, requests) = record_load(
        &engine.base_url(),
        constant_workload(50.0, Duration::from_secs(2), 16, 8),
        dir.path(),
    )
    .await;
    assert_eq!(report.sent, 100);
    assert_eq!(
        requests.len(),
        100,
        "every request is recorded, failed or not"
    );

    let mut by_kind: BTreeMap<ErrorKind, Vec<String>> = BTreeMap::new();
    for r in &requests {
        if let Some(e) = &r.error {
            by_kind.entry(e.kind).or_default().push(e.message.clone());
        }
    }
    let http = &by_kind[&ErrorKind::HttpStatus];
    assert!(
        http.iter()
            .all(|m| m.starts_with("HTTP 500") && m.contains("simulated internal error")),
        "{http:?}"
    );
    let malformed = &by_kind[&ErrorKind::MalformedChunk];
    assert!(
        malformed.iter().all(|m| m.contains("is not JSON")),
        "{malformed:?}"
    );
    let dropped = &by_kind[&ErrorKind::StreamDropped];
    assert!(!dropped.is_empty());
    assert_eq!(by_kind.len(), 3, "only the injected kinds: {by_kind:?}");
    let failed: usize = by_kind.values().map(Vec::len).sum();
    assert!(
        (25..=65).contains(&failed),
        "about 45% should fail, {failed} did"
    );

    // Failed requests are counted, never averaged into latency.
    let mut acc = TenantAccumulator::default();
    acc.phase(Phase::Measure, 0);
    requests.iter().for_each(|r| acc.request(r));
    let m = acc.finish();
    assert_eq!((m.sent, m.failed), (100, failed as u64));
    assert_eq!(m.ttft_ms.expect("ttft").count, 100 - failed as u64);
    engine.stop().await;
}
