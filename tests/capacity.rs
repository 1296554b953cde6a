//! The capacity search on simulated engines: its solo interval agrees with long fixed-rate
//! runs around it on a cliff-shaped engine and on a gradual one (along a shared mix it does not
//! yet: that test is ignored, with the cause, until issue 32 is done), shared capacity falls as
//! MPS interference rises, the verdict reaches the terminal, summary.json and the page, and bad
//! capacity configs are refused. The searches
//! judge latency SLOs for minutes, so they are ignored by the main suite and run alone by
//! scripts/test.sh (`--ignored`).

use std::path::Path;

use coordinator::bench_capacity::{CLIFF, GRADUAL};
use multitenant::analysis::Summary;
use multitenant::capacity::{NodeCapacity, SearchEnd, SharingDecision};
use multitenant::config::Experiment;

use crate::report_html::chromium;
use crate::support::{read_summary, run_experiment};

/// One simulated tenant (or two) whose TTFT p50 bound is crossed sharply once its batch fills.
fn engine(decode_us: u32) -> String {
    format!("{{kind: simulated, timing: {{max_batch: 8, prefill_us_per_token: 20, decode_step_us: {decode_us}, decode_step_us_per_seq: 200}}}}")
}

fn node_capacity(summary: &Summary) -> &NodeCapacity {
    &summary
        .capacity
        .as_ref()
        .expect("capacity in summary.json")
        .nodes[0]
}

/// How far outside a search's interval the long runs stand, 6% and 15%: a run below the
/// interval's lower end must pass and one above its upper end must fail (the interval itself
/// is at most 8% wide). No other slack: the runs are judged as any trial is.
const OUTSIDE: [f64; 2] = [1.06, 1.15];

/// The rates of the long runs around `[pass, fail)`, rising.
fn rates_around(pass: f64, fail: f64) -> Vec<f64> {
    vec![
        pass / OUTSIDE[1],
        pass / OUTSIDE[0],
        fail * OUTSIDE[0],
        fail * OUTSIDE[1],
    ]
}

/// The config of a capacity search, or of long fixed-rate runs, for `tenants` (name, engine,
/// sweep rates or `None` for the search's start) under `trial` on one node.
fn grid_config(
    name: &str,
    slo: &str,
    trial: &str,
    tenants: &[(&str, &str, Option<&[f64]>)],
) -> String {
    let data = "data: {prompt_tokens: 256, output_tokens: 32}";
    let mut yaml = format!("name: {name}\nslo: {slo}\nworkloads:\n");
    let search = tenants.iter().all(|(_, _, rates)| rates.is_none());
    if search {
        yaml.push_str(&format!(
            "  w: {{arrival: {{kind: poisson, rate: 10}}, {data}, warmup: 500ms, duration: 1s}}\n"
        ));
        yaml.push_str("capacity: {probe: {warmup: 500ms, duration: 2s}, precision: 0.08, repeats: 2, max_rate: 400, max_probes: 24}\n");
    }
    for (tenant, _, rates) in tenants {
        if let Some(rates) = rates {
            let rates: Vec<String> = rates.iter().map(|r| format!("{r:.3}")).collect();
            yaml.push_str(&format!(
                "  {tenant}: {{arrival: {{kind: sweep, rates: [{}], spacing: poisson}}, {data}, warmup: 2s, duration: 15s}}\n",
                rates.join(", ")
            ));
        }
    }
    yaml.push_str(&format!("nodes:\n  - name: n\n    trials: [{trial}]\n    sim_gpu: {{mps_interference: 0.35}}\n    tenants:\n"));
    for (tenant, engine, _) in tenants {
        let workload = if search { "w" } else { tenant };
        yaml.push_str(&format!(
            "      - {{name: {tenant}, engine: {engine}, workload: {workload}}}\n"
        ));
    }
    yaml
}

/// Each stage of the long runs: its total offered rate and whether every tenant met the SLO.
fn long_run_verdicts(summary: &Summary) -> Vec<(f64, bool)> {
    summary
        .trials()
        .map(|(_, t)| {
            let total = t
                .tenants
                .iter()
                .map(|x| x.offered_rate.expect("open loop"))
                .sum();
            let pass = t
                .tenants
                .iter()
                .all(|x| x.slo.as_ref().expect("judged").pass);
            (total, pass)
        })
        .collect()
}

/// Asserts that the long runs below `[pass, fail)` passed and those above it failed.
fn assert_long_runs_agree(what: &str, pass: f64, fail: f64, verdicts: &[(f64, bool)]) {
    eprintln!("{what}: search [{pass:.3}, {fail:.3}); long runs {verdicts:?}");
    assert_eq!(verdicts.len(), 4, "{what}: {verdicts:?}");
    for (rate, passed) in verdicts {
        let expected = *rate < pass;
        assert_eq!(
            *passed, expected,
            "{what}: a 15 s run at {rate:.3} req/s {} against the search's [{pass:.3}, {fail:.3}): {verdicts:?}",
            if *passed { "passed" } else { "failed" }
        );
    }
}

/// A solo search of `engine` under `slo`, then 15 s runs around its interval; `cliff`: whether
/// the engine's latency jumps at its capacity, as the search's fit must say.
fn solo_search_agrees_with_long_runs(what: &str, engine: &str, slo: &str, cliff: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let searched = run_experiment(
        tmp.path(),
        "search",
        &grid_config("search", slo, "solo", &[("t", engine, None)]),
    );
    let summary = read_summary(&searched);
    let solo = &node_capacity(&summary).solo[0].interval;
    assert_eq!(solo.end, SearchEnd::Converged, "{what}: {solo:?}");
    let (pass, fail) = (solo.passed.expect("a pass"), solo.failed.expect("a fail"));
    let rates = rates_around(pass, fail);
    let runs = run_experiment(
        tmp.path(),
        "runs",
        &grid_config("runs", slo, "solo", &[("t", engine, Some(&rates))]),
    );
    assert_long_runs_agree(what, pass, fail, &long_run_verdicts(&read_summary(&runs)));
    // The fit through all the probes names the one bound as binding, crossing it between the
    // long runs that passed and failed, and says whether it is a cliff.
    let fit = node_capacity(&summary).solo[0].fit.as_ref().expect("a fit");
    let bound = fit.bounds.first().expect("the bound fitted");
    assert_eq!(
        fit.binding.as_deref(),
        Some(bound.bound.as_str()),
        "{fit:?}"
    );
    let at = fit.crosses_at.expect("crosses");
    assert!(
        at > rates[0] && at < rates[3],
        "{what}: the fit crosses at {at}, outside the long runs {rates:?}: {fit:?}"
    );
    assert_eq!(bound.cliff.is_some(), cliff, "{what}: {fit:?}");
    // Every probe is a trial of its own in the folder, and analysis gave each its verdict.
    let probes: Vec<_> = summary.probes().collect();
    assert_eq!(probes.len() as u32, solo.probes);
    assert!(
        probes
            .iter()
            .all(|(_, t)| t.probe.as_ref().is_some_and(|p| p.queue_wait_ms.is_some())),
        "every probe records its wait for an empty queue"
    );
    assert!(searched.join("nodes/n/cap-solo-t.p01/t.jsonl").is_file());
    assert!(searched.join("nodes/n/cap-solo-t/agent.jsonl").is_file());
}

#[test]
#[ignore = "heavy: judges latency SLOs for minutes; scripts/test.sh runs it alone"]
fn a_solo_search_of_a_cliff_agrees_with_long_fixed_rate_runs() {
    solo_search_agrees_with_long_runs("cliff", CLIFF, "{ttft_ms: {p90: 150}}", true);
}

/// The probes' binomial verdicts alone took requests as independent draws, and on this engine
/// they are not: one prefill stalls every sequence decoding beside it, so TPOT p90 over 2 s
/// windows of one run swings from 17 to 41 ms. Searched so, [18.75, 20) while 21.2 passed;
/// with the batch-means test and lengthened repeats, [23.75, 25) three runs out of three.
#[test]
#[ignore = "heavy: judges latency SLOs for minutes; scripts/test.sh runs it alone"]
fn a_solo_search_of_a_gradual_engine_agrees_with_long_fixed_rate_runs() {
    solo_search_agrees_with_long_runs("gradual", GRADUAL, "{tpot_ms: {p90: 25}}", false);
}

/// Fails today (issue 32), and the search may not be what is wrong. On this code it gives
/// [25.8, 27.0) (seeded: the same twice), yet 15 s runs at 28.6 and 31.0 pass. At 26.95 its
/// four probes (2.5 s to 38 s) were all unsure at 95%: the longest read 11.2% of the gradual
/// tenant's requests over the TPOT p90 bound of 25 ms (10% allowed), 58 of 517. Near this edge
/// the share over moves little with the rate, and one 15 s run's point estimate is no surer
/// than the probes. Before the long runs can referee at ±6% they must be judged at the same
/// confidence, or run for minutes; pooling the probes at one rate is the search's next step.
/// (Before batch means: [39.5, 41.25), with 34.4 failing.)
#[test]
#[ignore = "issue 32: near this gradual edge neither 15 s reference runs nor the probes are sure at 6%"]
fn a_shared_search_along_its_mix_agrees_with_long_fixed_rate_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let slo = "{ttft_ms: {p90: 150}, tpot_ms: {p90: 25}}";
    let tenants = [("a", CLIFF), ("b", GRADUAL)];
    let search: Vec<_> = tenants.iter().map(|&(t, e)| (t, e, None)).collect();
    let searched = run_experiment(
        tmp.path(),
        "search",
        &grid_config("search", slo, "mps", &search),
    );
    let node = node_capacity(&read_summary(&searched)).clone();
    let mix = node
        .shared
        .iter()
        .find(|s| s.mix_direction)
        .expect("the mix search");
    assert_eq!(mix.interval.end, SearchEnd::Converged, "{mix:?}");
    let (pass, fail) = (
        mix.interval.passed.expect("a pass"),
        mix.interval.failed.expect("a fail"),
    );
    let totals = rates_around(pass, fail);
    let per_tenant: Vec<Vec<f64>> = tenants
        .iter()
        .map(|(t, _)| totals.iter().map(|total| total * mix.shares[*t]).collect())
        .collect();
    let runs: Vec<_> = tenants
        .iter()
        .zip(&per_tenant)
        .map(|(&(t, e), rates)| (t, e, Some(rates.as_slice())))
        .collect();
    let ran = run_experiment(tmp.path(), "runs", &grid_config("runs", slo, "mps", &runs));
    assert_long_runs_agree(
        "shared mix",
        pass,
        fail,
        &long_run_verdicts(&read_summary(&ran)),
    );
}

/// Runs two tenants alone and under MPS with `interference`; returns the node's capacity. The
/// shared search runs to its precision (`until: precision`): the test compares capacities, and
/// a search stopped once its verdict is decided has no narrow one.
fn shared_capacity(tmp: &Path, interference: f64) -> NodeCapacity {
    let name = format!("mps{}", (interference * 10.0) as u32);
    let dir = run_experiment(
        tmp,
        &name,
        &format!(
            "name: {name}\nslo: {{ttft_ms: {{p50: 120}}}}\ncapacity: {{probe: {{warmup: 500ms, duration: 1500ms}}, precision: 0.1, repeats: 0, max_probes: 10, until: precision}}\nworkloads:\n  w: {{arrival: {{kind: poisson, rate: 20}}, data: {{prompt_tokens: 64, output_tokens: 16}}, warmup: 500ms, duration: 1s}}\nnodes:\n  - name: n\n    trials: [mps]\n    sim_gpu: {{mps_interference: {interference}}}\n    tenants:\n      - {{name: a, engine: {}, workload: w}}\n      - {{name: b, engine: {}, workload: w}}\n",
            engine(6000),
            engine(6000)
        ),
    );
    node_capacity(&read_summary(&dir)).clone()
}

#[test]
#[ignore = "heavy: judges latency SLOs for minutes; scripts/test.sh runs it alone"]
fn shared_capacity_falls_as_mps_interference_rises() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let found: Vec<(f64, f64, f64)> = [0.0, 0.6, 2.0]
        .into_iter()
        .map(|i| {
            let node = shared_capacity(tmp.path(), i);
            let mps = &node.shared[0];
            let eq = mps
                .gpu_equivalents
                .unwrap_or_else(|| panic!("{i}: {node:?}"));
            (i, mps.interval.passed.expect("a shared pass"), eq)
        })
        .collect();
    for pair in found.windows(2) {
        assert!(
            pair[0].1 > pair[1].1 && pair[0].2 > pair[1].2,
            "more interference, less shared capacity: {found:?}"
        );
    }
    // No interference: two tenants on one GPU carry about two GPUs' worth.
    assert!(found[0].2 > 1.5, "{found:?}");
}

#[test]
#[ignore = "heavy: judges latency SLOs for minutes; scripts/test.sh runs it alone"]
fn the_verdict_is_in_the_terminal_the_summary_and_the_page() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, coordinator) = crate::support::binaries();
    let cfg = tmp.path().join("verdict.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: verdict\nslo: {{ttft_ms: {{p50: 150}}}}\ncost: {{gpu_hour: 2.49}}\ncapacity: {{probe: {{warmup: 300ms, duration: 1s}}, precision: 0.25, repeats: 0, max_probes: 6, directions: 3}}\nworkloads:\n  w: {{arrival: {{kind: poisson, rate: 20}}, data: {{prompt_tokens: 64, output_tokens: 16}}, warmup: 300ms, duration: 1s}}\nnodes:\n  - name: n\n    trials: [mps]\n    sim_gpu: {{mps_interference: 0.3}}\n    tenants:\n      - {{name: a, engine: {}, workload: w}}\n      - {{name: b, engine: {}, workload: w}}\n",
            engine(5000),
            engine(8000)
        ),
    )
    .expect("config");
    let out = std::process::Command::new(coordinator)
        .arg("run")
        .arg(&cfg)
        .arg("--output-dir")
        .arg(tmp.path().join("runs"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = crate::support::results_dir(&stdout);
    let summary = read_summary(&dir);
    let node = node_capacity(&summary);
    assert!(node.verdict.starts_with("mps: "), "{}", node.verdict);
    // The verdict gives the range its intervals allow and the decision that range makes.
    let mps = &node.shared[0];
    let range = mps.gpu_equivalents_range.expect("a range");
    let decision = mps.decision.expect("a decision");
    assert!(
        node.verdict.contains(&format!(
            "{} GPU-equivalents: {}",
            range.describe(),
            decision.words()
        )),
        "{}",
        node.verdict
    );
    // A search stopped once its range decided may have no failing rate, and so no high end.
    assert!(
        range
            .high
            .map_or(mps.interval.end == SearchEnd::Decided, |high| range.low
                <= high),
        "{range:?} {:?}",
        mps.interval
    );
    // The terminal shows the verdict first, before the fixed-load table.
    let verdict_at = stdout.find(&node.verdict).expect("verdict printed");
    assert!(
        verdict_at < stdout.find("= node aggregate").expect("table"),
        "{stdout}"
    );
    // Three directions: the mix and two region directions, each a search of its own.
    assert_eq!(node.shared.len(), 3, "{node:?}");
    // What the searches cost: every probe held the engines at least its warmup of 300 ms (a
    // probe stopped early ends before its duration), and the node's total is its searches'.
    let probes = node.solo.iter().map(|s| s.interval.probes).sum::<u32>()
        + node.shared.iter().map(|s| s.interval.probes).sum::<u32>();
    assert!(node.engine_seconds >= 0.3 * f64::from(probes), "{node:?}");
    let parts = node.solo.iter().map(|s| s.engine_seconds).sum::<f64>()
        + node.shared.iter().map(|s| s.engine_seconds).sum::<f64>();
    assert!((node.engine_seconds - parts).abs() < 0.01, "{node:?}");
    assert!(
        stdout.contains("engine time the searches took: n "),
        "{stdout}"
    );
    assert!(summary
        .capacity
        .as_ref()
        .expect("capacity")
        .definition
        .contains("GPU-equivalents"));
    // Priced at 2.49 USD a GPU-hour: both tenants alone, and the mix at the configured 20 + 20
    // requests/s, from the output tokens each probe request returned (16 asked).
    let cost = node.cost.as_ref().expect("priced");
    assert_eq!((cost.gpu_hour, cost.currency.as_str()), (2.49, "USD"));
    assert_eq!(cost.solo.len(), 2, "{cost:?}");
    for s in &cost.solo {
        assert_eq!(s.output_tokens_per_request, 16.0, "{s:?}");
        let solo = node
            .solo
            .iter()
            .find(|x| x.tenant == s.tenant)
            .expect("solo");
        let expected = 2.49 * 1e6 / (solo.interval.passed.expect("passed") * 16.0 * 3600.0);
        assert!(
            (s.per_million_output_tokens - expected).abs() < 0.001,
            "{s:?}"
        );
    }
    let shared = &cost.shared[0];
    assert_eq!(shared.mode, multitenant::config::SharingMode::Mps);
    let traffic = shared
        .traffic
        .as_ref()
        .expect("the configured traffic priced");
    let in_proportion: f64 = node
        .solo
        .iter()
        .map(|s| 20.0 / s.interval.failed.expect("a failing rate"))
        .sum();
    assert!(
        (traffic.dedicated_gpus - in_proportion).abs() < 0.001,
        "{traffic:?}"
    );
    let lines = cost.lines("n");
    for line in &lines {
        assert!(stdout.contains(line.as_str()), "{line}: {stdout}");
    }
    // Every search that found a failing rate names its binding bound, fitted through its
    // probes: a's TTFT p50 (each tenant has only that bound).
    let fits = node.fit_lines();
    assert!(
        fits.iter()
            .any(|l| l.starts_with("n cap-solo-a: binding: a: ttft_ms p50 (crosses 150 at ")),
        "{fits:?}"
    );
    for line in &fits {
        assert!(stdout.contains(line.as_str()), "{line}: {stdout}");
    }

    let csv = std::fs::read_to_string(dir.join("capacity.csv")).expect("capacity.csv");
    // Two solo rows, then two tenants in each of three shared searches.
    assert_eq!(csv.lines().count(), 1 + 2 + 6, "{csv}");
    assert!(
        csv.starts_with("node,")
            && csv.lines().next().is_some_and(|h| {
                h.ends_with(",engine_s,binding,binding_crosses_rps,per_1m_output_tokens,currency")
            }),
        "{csv}"
    );
    assert!(
        csv.lines()
            .nth(3)
            .is_some_and(|l| l.starts_with("n,cap-mps,mps,a,")),
        "{csv}"
    );
    // a's solo row: its binding bound and the price of its output at capacity.
    let solo_a = csv
        .lines()
        .find(|l| l.starts_with("n,cap-solo-a,solo,a,"))
        .expect("a's solo row");
    let price = cost
        .solo
        .iter()
        .find(|s| s.tenant == "a")
        .expect("a priced");
    assert!(
        solo_a.contains(",a: ttft_ms p50,")
            && solo_a.ends_with(&format!(",{},USD", price.per_million_output_tokens)),
        "{solo_a}"
    );
    let region = dir.join("plots/n-capacity-region.svg");
    let svg = std::fs::read_to_string(&region).expect("capacity region plot");
    assert!(
        svg.matches("<circle").count() >= 3,
        "every direction's point drawn"
    );
    let page = dir.join("report.html");
    let (dom, stderr) = chromium(&page, &tmp.path().join("profile"), &["--dump-dom"]);
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(
        dom.contains("<div class=\"verdict\" id=\"verdict\">"),
        "no verdict box"
    );
    assert!(dom.contains(&node.verdict), "the verdict in the page");
    assert!(dom.contains(&lines[0]), "the prices in the page");
    assert!(dom.contains(&fits[0]), "the binding bounds in the page");
    assert!(
        dom.contains(&format!("{} ({})", range.describe(), decision.words())),
        "the range and decision in the capacity table"
    );
    assert!(
        dom.contains("data-plot=\"n-capacity-region.svg\""),
        "no region plot"
    );
}

#[test]
#[ignore = "heavy: judges latency SLOs for minutes; scripts/test.sh runs it alone"]
fn a_probe_whose_failure_is_certain_stops_early_and_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The first probe offers 240 req/s to an engine that carries about 60: its TTFT is past
    // 50 ms within a second, and a p99 allows only 1% of the probe's planned requests over.
    // A budget of one probe leaves out the probes below it, which only this test would wait on.
    let dir = run_experiment(
        tmp.path(),
        "early",
        &format!(
            "name: early\nslo: {{ttft_ms: {{p99: 50}}}}\ncapacity: {{probe: {{warmup: 500ms, duration: 6s}}, precision: 0.25, repeats: 0, max_rate: 240, max_probes: 3, budget: 7s}}\nworkloads:\n  w: {{arrival: {{kind: poisson, rate: 240}}, data: {{prompt_tokens: 64, output_tokens: 16}}, warmup: 500ms, duration: 1s}}\nnodes:\n  - name: n\n    trials: [solo]\n    tenants:\n      - {{name: t, engine: {}, workload: w}}\n",
            engine(6000)
        ),
    );
    let summary = read_summary(&dir);
    let (_, first) = summary
        .probes()
        .find(|(_, t)| t.trial == "cap-solo-t.p01")
        .expect("the first probe");
    let probe = first.probe.as_ref().expect("a probe");
    let multitenant::capacity::ProbeVerdict::Fail { missed } = &probe.verdict else {
        panic!("{probe:?}")
    };
    // Why it stopped, then what its requests so far fail at 95% (every second of them over).
    assert!(
        missed[0].starts_with("t: ttft_ms p99: ") && missed[0].ends_with("stopped early"),
        "{missed:?}"
    );
    assert!(
        missed.len() == 2
            && missed[1].starts_with("t: ttft_ms p99 ")
            && missed[1].ends_with("95% sure)"),
        "{missed:?}"
    );
    let stream = std::fs::read_to_string(dir.join("nodes/n/cap-solo-t.p01/agent.jsonl"))
        .expect("the probe's agent stream");
    assert!(stream.contains("\"type\":\"probe_stopped\""), "{stream}");
    // It measured well under its planned 6 s.
    let measured = first.tenants[0]
        .metrics
        .throughput
        .as_ref()
        .expect("a window")
        .window_s;
    assert!(measured < 4.0, "measured {measured} s");
}

/// A budget of engine time too small for the searches: the first solo search brackets what
/// it can, the searches after it do not start their engines, and the verdict says the budget
/// was spent with what was known, never a point as if it were sure.
#[test]
#[ignore = "heavy: judges latency SLOs for minutes; scripts/test.sh runs it alone"]
fn a_spent_budget_ends_the_searches_with_what_they_knew() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, stdout) = crate::support::run_experiment_printing(
        tmp.path(),
        "budget",
        &format!(
            "name: budget\nslo: {{ttft_ms: {{p50: 120}}}}\ncapacity: {{probe: {{warmup: 300ms, duration: 1s}}, precision: 0.05, repeats: 0, budget: 4s}}\nworkloads:\n  w: {{arrival: {{kind: poisson, rate: 20}}, data: {{prompt_tokens: 64, output_tokens: 16}}, warmup: 300ms, duration: 1s}}\nnodes:\n  - name: n\n    trials: [mps]\n    tenants:\n      - {{name: a, engine: {}, workload: w}}\n      - {{name: b, engine: {}, workload: w}}\n",
            engine(5000),
            engine(8000)
        ),
    );
    let summary = read_summary(&dir);
    let node = node_capacity(&summary);
    let first = &node.solo[0].interval;
    assert_eq!(first.end, SearchEnd::Budget, "{node:?}");
    assert!(first.probes >= 1, "{node:?}");
    assert!(
        first
            .budget_spent
            .as_deref()
            .is_some_and(|w| w.contains("of the 4 s budget spent")),
        "{node:?}"
    );
    // The searches after it found the budget spent before their first probe.
    for later in [&node.solo[1].interval, &node.shared[0].interval] {
        assert_eq!(later.probes, 0, "{node:?}");
        assert_eq!(later.end, SearchEnd::Budget, "{node:?}");
        assert!(later.budget_spent.is_some(), "{node:?}");
    }
    assert!(
        node.verdict
            .starts_with("undecided: the engine-time budget was spent"),
        "{}",
        node.verdict
    );
    assert!(stdout.contains(&node.verdict), "{stdout}");
    // Each probe started only while it fit: the node spent at most the budget and the
    // overrun of its last probe (its wait for empty queues and its drain).
    assert!(node.engine_seconds < 4.0 + 3.0, "{node:?}");
}

#[test]
fn capacity_configs_that_cannot_be_searched_are_refused_with_their_path() {
    let base = |extra: &str, arrival: &str| {
        format!("name: x\n{extra}\nworkloads:\n  w: {{arrival: {arrival}, data: {{prompt_tokens: 8, output_tokens: 8}}, duration: 1s}}\nnodes:\n  - name: n\n    trials: [mps]\n    tenants:\n      - {{name: a, engine: {{kind: simulated}}, workload: w}}\n      - {{name: b, engine: {{kind: simulated}}, workload: w}}\n")
    };
    let refused = |yaml: String| {
        Experiment::from_yaml(&yaml, "x.yaml")
            .expect_err("refused")
            .to_string()
    };
    let no_slo = refused(base("capacity: {}", "{kind: poisson, rate: 2}"));
    assert!(
        no_slo.contains("nodes[0].tenants[0]") && no_slo.contains("has none"),
        "{no_slo}"
    );
    let closed = refused(base(
        "slo: {ttft_ms: {p99: 100}}\ncapacity: {}",
        "{kind: concurrency, n: 4}",
    ));
    assert!(
        closed.contains("workloads.w.arrival") && closed.contains("open-loop"),
        "{closed}"
    );
    let bad = refused(base(
        "slo: {ttft_ms: {p99: 100}}\ncapacity: {precision: 0, max_rate: 0.1, mix: {a: 1, c: 2}, budget: 0s, until: soon}",
        "{kind: poisson, rate: 2}",
    ));
    let priced = refused(base(
        "slo: {ttft_ms: {p99: 100}}\ncapacity: {}\ncost: {gpu_hour: -1, currency: usd}",
        "{kind: poisson, rate: 2}",
    ));
    for expected in [
        "cost.gpu_hour: -1 must be the price of one GPU for one hour",
        "cost.currency: \"usd\" is not a currency code",
    ] {
        assert!(priced.contains(expected), "{expected}: {priced}");
    }
    let unsearched = refused(base(
        "slo: {ttft_ms: {p99: 100}}\ncost: {gpu_hour: 2}",
        "{kind: poisson, rate: 2}",
    ));
    assert!(
        unsearched.contains("cost: prices the SLO capacities, and this config searches none"),
        "{unsearched}"
    );
    for expected in [
        "capacity.precision",
        "capacity.max_rate",
        "capacity.until: \"soon\": use decided",
        "capacity.mix.c",
        "tenant b of nodes[0] has no weight",
        "capacity.budget: a search needs some engine time: at least one probe's warmup and duration (12s)",
    ] {
        assert!(bad.contains(expected), "{expected}: {bad}");
    }
    let fine = base(
        "slo: {ttft_ms: {p99: 100}}\ncapacity: {directions: 3}",
        "{kind: gamma, rate: 2, cv: 2}",
    );
    let experiment = Experiment::from_yaml(&fine, "x.yaml").expect("valid");
    let cap = experiment.capacity.as_ref().expect("capacity");
    let names: Vec<String> = cap
        .searches(&experiment.nodes[0])
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        names,
        [
            "cap-solo-a",
            "cap-solo-b",
            "cap-mps",
            "cap-mps-d2",
            "cap-mps-d3"
        ]
    );
}

/// Two tenants that share one BurstGPT-format trace (by its `Model` column), each at its
/// share of the trace sped up ten times; `window` adds keys to the arrival (`limit: 60`).
fn shared_trace_config(capacity: &str, window: &str) -> String {
    let trace = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/traces/burstgpt-sample.csv"
    );
    format!(
        "name: trace-cap\nslo: {{ttft_ms: {{p50: 150}}}}\ncapacity: {capacity}\nworkloads:\n  w: {{api: completions, arrival: {{kind: trace, path: {trace}, format: burstgpt, time_scale: 10{window}, tenant_map: {{column: Model, to: {{ChatGPT: a, GPT-4: b}}}}}}, duration: 3s}}\nnodes:\n  - name: n\n    trials: [mps]\n    tenants:\n      - {{name: a, engine: {}, workload: w}}\n      - {{name: b, engine: {}, workload: w}}\n",
        engine(6000),
        engine(6000)
    )
}

#[test]
fn tenants_sharing_a_trace_are_searched_in_its_own_mix() {
    for (capacity, path) in [
        ("{mix: {a: 1, b: 1}}", "capacity.mix"),
        ("{directions: 2}", "capacity.directions"),
    ] {
        let err = Experiment::from_yaml(&shared_trace_config(capacity, ""), "x.yaml")
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains(&format!(
                "{path}: nodes[0]: tenants a, b share the trace of workload \"w\""
            )),
            "{err}"
        );
    }
    let experiment =
        Experiment::from_yaml(&shared_trace_config("{}", ""), "x.yaml").expect("valid");
    // Each tenant's configured rate is its share of the trace, sped up: the mix they keep.
    let rates: Vec<f64> = experiment.nodes[0]
        .tenants
        .iter()
        .map(|t| multitenant::config::configured_rate(&experiment, t).expect("a replay rate"))
        .collect();
    let total = rates[0] + rates[1];
    // 512 records over about two minutes, ten times faster.
    assert!((35.0..=50.0).contains(&total), "{rates:?}");
    let cap = experiment.capacity.as_ref().expect("capacity");
    let mix = cap.mix_of(&experiment, &experiment.nodes[0]);
    assert!(
        (mix[0] - rates[0] / total).abs() < 1e-9,
        "{mix:?} {rates:?}"
    );
    // A probe at twice the configured rate replays the trace twice as fast.
    let multitenant::config::ArrivalPlan::Single(arrival) = experiment.workloads["w"].arrival
    else {
        panic!("one arrival");
    };
    assert_eq!(
        multitenant::config::with_rate(&arrival, rates[0], 2.0 * rates[0]),
        multitenant::config::Arrival::Trace { time_scale: 20.0 }
    );
}

#[test]
#[ignore = "heavy: judges latency SLOs for minutes; scripts/test.sh runs it alone"]
fn a_capacity_search_speeds_a_shared_trace_up_for_its_tenants_together() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = run_experiment(
        tmp.path(),
        "trace-cap",
        // The first 60 records: about 14 s of trace, under 1.5 s at ten times its speed, so
        // every probe of 3 s would outlast its replay.
        &shared_trace_config(
            "{probe: {warmup: 0s, duration: 3s}, precision: 0.3, repeats: 0, max_probes: 5, max_rate: 400}",
            ", limit: 60",
        ),
    );
    let summary = read_summary(&dir);
    let node = node_capacity(&summary);
    assert_eq!(node.solo.len(), 2, "{node:?}");
    for solo in &node.solo {
        assert!(solo.interval.probes >= 2, "{solo:?}");
    }
    // Every probe replays the trace, and a shared probe speeds it up as much for both.
    let speed = |trial: &str, tenant: &str| -> String {
        let path = dir.join(format!("nodes/n/{trial}/{tenant}.jsonl"));
        let stream = multitenant::events::read_stream(&path).expect("tenant stream");
        stream.header.tenant.expect("tenant header").arrival
    };
    let solo_speeds: std::collections::BTreeSet<String> = (1..=2)
        .map(|k| speed(&format!("cap-solo-a.p{k:02}"), "a"))
        .collect();
    assert!(
        solo_speeds.len() == 2 && solo_speeds.iter().all(|s| s.starts_with("trace replay ×")),
        "two probes at two speeds: {solo_speeds:?}"
    );
    let shared = speed("cap-mps.p01", "a");
    assert!(shared.starts_with("trace replay ×"), "{shared}");
    assert_eq!(shared, speed("cap-mps.p01", "b"));
    // A probe measures only while its replay sends (a second at least), not its 3 s.
    let trace = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/traces/burstgpt-sample.csv"
    ))
    .expect("trace");
    // The replayed records: the first 60 with an answer (zero outputs are skipped).
    let records: Vec<f64> = trace
        .lines()
        .skip(1)
        .map(|row| row.split(',').collect::<Vec<&str>>())
        .filter(|cells| cells[3] != "0")
        .map(|cells| cells[0].parse().expect("a time"))
        .take(60)
        .collect();
    let span_s = records[59] - records[0];
    for k in 1..=2 {
        let path = dir.join(format!("nodes/n/cap-solo-a.p{k:02}/a.jsonl"));
        let header = multitenant::events::read_stream(&path)
            .expect("tenant stream")
            .header
            .tenant
            .expect("tenant header");
        let times: f64 = header
            .arrival
            .trim_start_matches("trace replay ×")
            .parse()
            .expect("a speed");
        let planned = header.planned_ms.expect("planned") as f64 / 1e3;
        assert!(
            planned <= (span_s / times).clamp(1.0, 3.0) + 1e-3,
            "probe {k} at ×{times} planned {planned} s"
        );
    }
}

/// configs/local.yaml under five seeds: every run's GPU-equivalents range overlaps every
/// other's, and no two runs decide opposite ways (one "wins", another "loses"); "undecided"
/// is always allowed. The seed draws the probes' arrivals and prompts, so this is what a user
/// who runs the default again would see.
///
/// Six minutes of runs, more than CI's time allows beside the other heavy tests: run it with
/// `--ignored` (last, with batch-means verdicts: seeds 1 and 5 "wins" at 1.09–1.49 and
/// 1.20–1.75, seeds 2–4 undecided at 0.92–1.35; 382 s).
#[test]
#[ignore = "six minutes of runs, beyond CI's time: cargo test --test integration capacity::the_default -- --ignored"]
fn the_default_verdict_is_repeatable_under_five_seeds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let local = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/local.yaml"),
    )
    .expect("configs/local.yaml");
    assert!(local.contains("\nseed: 7\n"), "the default states its seed");
    let found: Vec<(u64, f64, f64, SharingDecision)> = (1..=5u64)
        .map(|seed| {
            let yaml = local.replace("\nseed: 7\n", &format!("\nseed: {seed}\n"));
            let dir = run_experiment(tmp.path(), &format!("seed{seed}"), &yaml);
            let node = node_capacity(&read_summary(&dir)).clone();
            let mix = node
                .shared
                .iter()
                .find(|s| s.mix_direction)
                .unwrap_or_else(|| panic!("seed {seed}: no mix search: {node:?}"));
            let range = mix
                .gpu_equivalents_range
                .unwrap_or_else(|| panic!("seed {seed}: no range: {node:?}"));
            let high = range.high.unwrap_or(f64::INFINITY);
            (seed, range.low, high, range.decision())
        })
        .collect();
    eprintln!("GPU-equivalents by seed (seed, low, high, decision): {found:?}");
    let highest_low = found.iter().map(|f| f.1).fold(f64::MIN, f64::max);
    let lowest_high = found.iter().map(|f| f.2).fold(f64::MAX, f64::min);
    assert!(
        highest_low <= lowest_high,
        "every range overlaps every other: {found:?}"
    );
    let decided = |d: SharingDecision| found.iter().any(|f| f.3 == d);
    assert!(
        !(decided(SharingDecision::Wins) && decided(SharingDecision::Loses)),
        "one seed says sharing wins, another that it loses: {found:?}"
    );
}
