//! Embeddings tenants (`api: embeddings`) against the simulated engine, beside a chat tenant on
//! the same GPU: each request is one prefill answered whole, measured end to end, with its
//! input tokens counted from `usage` and no tokens streamed.

use multitenant::config::Api;
use multitenant::events::{read_stream, TokenSource};

use crate::support::{read_summary, run_experiment_printing, tenant_in};

/// Tokens of each embedded text.
const PROMPT: u32 = 200;
/// The engine's step: 1 ms, plus 20 µs per prompt token prefilled in it.
const STEP_US: u64 = 1_000;
const PREFILL_US_PER_TOKEN: u64 = 20;

#[test]
fn an_embeddings_tenant_is_measured_end_to_end_beside_a_chat_tenant() {
    let tmp = tempfile::tempdir().expect("tmp");
    let engine = format!("{{kind: simulated, timing: {{max_batch: 64, prefill_us_per_token: {PREFILL_US_PER_TOKEN}, decode_step_us: {STEP_US}, decode_step_us_per_seq: 0}}}}");
    let yaml = format!(
        "name: embeddings\nlauncher: {{kind: local}}\nworkloads:\n  embed:\n    api: embeddings\n    arrival: {{kind: constant, rate: 20}}\n    data: {{prompt_tokens: {PROMPT}}}\n    warmup: 0s\n    duration: 3s\n    slo: {{e2e_ms: {{p99: 1000}}}}\n  chat:\n    arrival: {{kind: constant, rate: 10}}\n    data: {{prompt_tokens: 32, output_tokens: 16}}\n    warmup: 0s\n    duration: 3s\nnodes:\n  - name: local\n    trials: [solo, mps]\n    tenants:\n      - {{name: embed, workload: embed, port: 18471, engine: {engine}}}\n      - {{name: chat, workload: chat, port: 18472, engine: {engine}}}\n"
    );
    let (dir, printed) = run_experiment_printing(tmp.path(), "embeddings", &yaml);

    // Every request: one prefill of the whole text, answered whole, no output asked or given.
    let stream = read_stream(&dir.join("nodes/local/solo-embed/embed.jsonl")).expect("stream");
    assert!(stream.warnings.is_empty(), "{:?}", stream.warnings);
    let requests: Vec<_> = stream.requests().collect();
    assert_eq!(requests.len(), 60, "3 s at 20/s");
    let prefill_ns = (STEP_US + PREFILL_US_PER_TOKEN * u64::from(PROMPT)) * 1_000;
    for r in &requests {
        assert!(r.error.is_none(), "{r:?}");
        assert_eq!(r.first_token_ns, None, "nothing is streamed: {r:?}");
        assert!(r.chunk_gaps_us.is_empty());
        assert_eq!((r.max_tokens, r.output_tokens), (0, Some(0)));
        assert_eq!(
            r.prompt_tokens,
            Some(PROMPT),
            "counted by the engine's usage"
        );
        assert_eq!(r.token_source, Some(TokenSource::Usage));
        let e2e = r.done_ns - r.sent_ns;
        assert!(
            e2e >= prefill_ns,
            "answered in {e2e} ns, before the {prefill_ns} ns step that prefilled it ended"
        );
    }

    let summary = read_summary(&dir);
    let solo = tenant_in(&summary, "solo-embed", "embed");
    assert_eq!(solo.api, Api::Embeddings);
    let m = &solo.metrics;
    assert_eq!((m.completed, m.failed), (60, 0));
    assert!(m.ttft_ms.is_none() && m.tpot_ms.is_none() && m.itl_ms.is_none());
    let e2e = m.e2e_ms.expect("latency end to end");
    let prefill_ms = prefill_ns as f64 / 1e6;
    // Alone on its engine at 20/s, each text waits for no other: a step and the HTTP round trip.
    assert!(
        e2e.p50 >= prefill_ms && e2e.p50 < prefill_ms + 10.0,
        "latency p50 {} ms against a {prefill_ms} ms step",
        e2e.p50
    );
    let throughput = m.throughput.expect("throughput");
    assert_eq!(throughput.output_tokens_per_s, 0.0);
    let per_request = throughput.input_tokens_per_s / throughput.requests_per_s;
    assert!(
        (per_request - f64::from(PROMPT)).abs() < 1e-6,
        "{throughput:?}"
    );
    assert!(solo.slo.as_ref().is_some_and(|s| s.pass), "{:?}", solo.slo);

    // Shared with the chat tenant, its latency is set against its solo latency.
    let shared = tenant_in(&summary, "mps", "embed");
    let slowdown = shared.slowdown.expect("a solo baseline");
    assert!(slowdown.e2e_p99.is_some_and(|r| r > 0.0), "{slowdown:?}");
    assert_eq!(slowdown.ttft_p99, None);

    // The terminal gives embeddings tenants a table of their own, with their input tokens/s.
    let (_, table) = printed
        .split_once("embeddings tenants")
        .unwrap_or_else(|| panic!("no embeddings table in:\n{printed}"));
    assert!(table.contains("in tok/s"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("solo-embed"))
        .unwrap_or_else(|| panic!("no solo-embed row in:\n{table}"));
    assert!(
        row.contains(&format!("{:.1}", throughput.input_tokens_per_s)),
        "{row}"
    );
}
