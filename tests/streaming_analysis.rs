//! Analysis in one streaming pass gives exactly the figures of reading each stream whole and
//! folding its events in order; and the Parquet export of the same real run holds every
//! request event, from whose columns the summary's TTFT follows to the microsecond.

use std::collections::BTreeMap;
use std::path::Path;

use multitenant::analysis::{analyze, Summary};
use multitenant::events::{read_stream, Event, Phase};
use multitenant::layout::ExperimentDir;
use multitenant::metrics::{LatencyHistogram, TenantAccumulator, TenantMetrics};
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::record::Field;

use crate::support::run_experiment;

/// A solo trial per tenant and a shared one, two tenants at different rates, 3 s each.
const CONFIG: &str = "name: streaming\nseed: 3\nworkloads:\n  fast: {arrival: {kind: poisson, rate: 40}, data: {kind: synthetic, prompt_tokens: 64, output_tokens: 16}, warmup: 500ms, duration: 3s}\n  slow: {arrival: {kind: constant, rate: 15}, data: {kind: synthetic, prompt_tokens: 128, output_tokens: 32}, warmup: 500ms, duration: 3s}\nnodes:\n  - name: n\n    trials: [solo, mps]\n    tenants:\n      - {name: a, engine: {kind: simulated}, workload: fast}\n      - {name: b, engine: {kind: simulated}, workload: slow}\n";

/// Each tenant stream of the folder read whole and folded in file order, as analysis did
/// before it streamed: (trial, tenant) → its metrics.
fn whole_file_figures(dir: &Path) -> BTreeMap<(String, String), TenantMetrics> {
    let mut out = BTreeMap::new();
    let experiment = ExperimentDir::new(dir);
    for node in experiment.nodes().expect("nodes") {
        for trial in node.trials_in_run_order().expect("trials") {
            for found in trial.tenant_streams().expect("streams") {
                let stream = read_stream(&found.path).expect("readable");
                let tenant = stream.header.tenant.as_ref().expect("tenant").name.clone();
                let end_ns = stream.events.iter().find_map(|l| match &l.event {
                    Event::Phase(p) if p.phase == Phase::Done => Some(p.at_ns),
                    _ => None,
                });
                let mut acc = TenantAccumulator::default();
                let mut implausible = 0;
                for line in &stream.events {
                    match &line.event {
                        Event::Request(r) if r.implausible(end_ns).is_some() => implausible += 1,
                        Event::Request(r) => acc.request(r),
                        Event::Phase(p) => acc.phase_event(p),
                        _ => {}
                    }
                }
                let mut metrics = acc.finish();
                metrics.implausible = implausible;
                out.insert((trial.name.clone(), tenant), metrics);
            }
        }
    }
    out
}

fn streamed_figures(summary: &Summary) -> BTreeMap<(String, String), TenantMetrics> {
    summary
        .trials()
        .flat_map(|(_, t)| {
            t.tenants
                .iter()
                .map(|x| ((t.trial.clone(), x.tenant.clone()), x.metrics.clone()))
        })
        .collect()
}

#[test]
fn one_streaming_pass_gives_the_figures_of_whole_files_and_parquet_holds_every_request() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = run_experiment(tmp.path(), "streaming", CONFIG);

    let analysis = analyze(&dir).expect("analysis");
    let streamed = streamed_figures(&analysis.summary);
    let whole = whole_file_figures(&dir);
    assert_eq!(
        streamed.len(),
        4,
        "solo-a, solo-b, mps/a, mps/b: {streamed:?}"
    );
    assert_eq!(streamed, whole);
    // Read on every core, taken in order: the same summary every time.
    let again = analyze(&dir).expect("analysis");
    assert_eq!(analysis.summary, again.summary);
    // The series the plots draw hold the summary's own histograms.
    let mps = analysis.series.nodes[0]
        .trials
        .iter()
        .find(|t| t.trial == "mps")
        .expect("mps series");
    for tenant in &mps.tenants {
        let figures = &streamed[&("mps".to_owned(), tenant.tenant.clone())];
        assert_eq!(tenant.ttft.percentiles(), figures.ttft_ms);
        let binned: u64 = tenant
            .timeline
            .rebinned(tenant.timeline.width_s())
            .values()
            .map(|b| b.output_tokens)
            .sum();
        assert_eq!(binned, figures.output_tokens, "{}", tenant.tenant);
    }

    let out = tmp.path().join("export");
    let exported = coordinator::export::export_parquet(&dir, &out).expect("export");
    assert!(exported.warnings.is_empty(), "{:?}", exported.warnings);
    let request_events: u64 = ExperimentDir::new(&dir)
        .nodes()
        .expect("nodes")
        .iter()
        .flat_map(|n| n.trials_in_run_order().expect("trials"))
        .flat_map(|t| t.tenant_streams().expect("streams"))
        .map(|s| read_stream(&s.path).expect("stream").requests().count() as u64)
        .sum();
    assert_eq!(
        exported.files[0],
        (out.join("requests.parquet"), request_events)
    );

    let reader = SerializedFileReader::new(
        std::fs::File::open(out.join("requests.parquet")).expect("requests.parquet"),
    )
    .expect("a Parquet file");
    assert_eq!(
        reader.metadata().file_metadata().num_rows() as u64,
        request_events
    );
    let mut ttft: BTreeMap<(String, String), LatencyHistogram> = BTreeMap::new();
    let mut rows = 0u64;
    let mut gaps = 0usize;
    for row in reader {
        let row = row.expect("row");
        rows += 1;
        let field: BTreeMap<&str, &Field> = row
            .get_column_iter()
            .map(|(name, value)| (name.as_str(), value))
            .collect();
        let text = |name: &str| match field[name] {
            Field::Str(s) => s.clone(),
            other => panic!("{name}: {other:?}"),
        };
        let long = |name: &str| match field[name] {
            Field::Long(v) => Some(*v),
            Field::Null => None,
            other => panic!("{name}: {other:?}"),
        };
        if let Field::ListInternal(list) = field["chunk_gaps_us"] {
            gaps += list.len();
        }
        let measured = text("phase") == "measure" && field["error_kind"] == &Field::Null;
        if let (true, Some(first), Some(_)) =
            (measured, long("first_token_ns"), long("last_token_ns"))
        {
            let sent = long("sent_ns").expect("sent_ns");
            ttft.entry((text("trial"), text("tenant")))
                .or_default()
                .record_ns((first - sent) as u64);
        }
    }
    assert_eq!(rows, request_events);
    assert!(gaps > 0, "the chunk gaps are exported as lists");
    assert_eq!(ttft.len(), 4);
    for (key, histogram) in &ttft {
        assert_eq!(
            histogram.percentiles(),
            streamed[key].ttft_ms,
            "{key:?}: TTFT from the Parquet columns"
        );
    }
}
