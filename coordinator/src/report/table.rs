//! The summary as a terminal table: one row per tenant and trial, then each trial's node total.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use multitenant::analysis::{Summary, TenantSummary, TrialSummary};
use multitenant::capacity::NodeCapacity;
use multitenant::metrics::Percentiles;

/// How the terminal shows a figure or verdict that has no data.
const NO_DATA: &str = "-";

/// A table in the house style, with `header`.
pub(super) fn styled<T: Into<comfy_table::Cell>>(header: impl IntoIterator<Item = T>) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(header);
    table
}

/// Right-aligns every column from the `first` on: the figures.
pub(super) fn align_numbers(table: &mut Table, first: usize) {
    for column in table.column_iter_mut().skip(first) {
        column.set_cell_alignment(CellAlignment::Right);
    }
}

fn ms(p: Option<&Percentiles>, pick: fn(&Percentiles) -> f64) -> String {
    p.map_or(NO_DATA.into(), |p| format!("{:.2}", pick(p)))
}

fn rate(v: Option<f64>) -> String {
    v.map_or(NO_DATA.into(), |v| format!("{v:.1}"))
}

fn times(v: Option<f64>) -> String {
    v.map_or(NO_DATA.into(), |v| format!("{v:.2}x"))
}

/// The slowdown of each tenant of each shared trial and the trial's co-location gain, or
/// `None` when no shared trial had a solo baseline.
fn render_comparison(summary: &Summary) -> Option<String> {
    let mut table = styled([
        "node",
        "trial",
        "tenant",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "E2E p99",
        "out tok/s",
    ]);
    let mut rows = 0;
    for (node, trial) in summary.trials() {
        for t in &trial.tenants {
            let Some(s) = t.slowdown else { continue };
            rows += 1;
            table.add_row([
                node.to_owned(),
                trial.trial.clone(),
                t.tenant.clone(),
                times(s.ttft_p50),
                times(s.ttft_p99),
                times(s.tpot_p50),
                times(s.tpot_p99),
                times(s.e2e_p99),
                times(s.output_tokens_per_s),
            ]);
        }
        if let Some(gain) = trial.colocation_gain {
            let mut row = vec![
                node.to_owned(),
                trial.trial.clone(),
                "= co-location gain".into(),
            ];
            row.extend((0..5).map(|_| String::new()));
            row.push(times(Some(gain)));
            table.add_row(row);
        }
    }
    align_numbers(&mut table, 3);
    (rows > 0).then(|| table.to_string())
}

/// The columns of the across-nodes table, in the terminal and in report.html.
pub(super) const ACROSS_NODES_HEADER: [&str; 9] = [
    "trial",
    "nodes",
    "done",
    "failed",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "TPOT p50 ms",
    "TPOT p99 ms",
    "out tok/s",
];

/// Each trial that ran on several nodes, across them (merged histograms, summed throughput),
/// or `None` for a one-node experiment.
fn render_across_nodes(summary: &Summary) -> Option<String> {
    if summary.across_nodes.is_empty() {
        return None;
    }
    let mut table = styled(ACROSS_NODES_HEADER);
    for t in &summary.across_nodes {
        table.add_row([
            t.trial.clone(),
            t.nodes.join(", "),
            t.completed.to_string(),
            t.failed.to_string(),
            ms(t.ttft_ms.as_ref(), |p| p.p50),
            ms(t.ttft_ms.as_ref(), |p| p.p99),
            ms(t.tpot_ms.as_ref(), |p| p.p50),
            ms(t.tpot_ms.as_ref(), |p| p.p99),
            rate(t.output_tokens_per_s),
        ]);
    }
    align_numbers(&mut table, 2);
    Some(table.to_string())
}

/// The capacity verdict box and table, when the experiment searched capacity.
fn render_capacity(summary: &Summary) -> Option<String> {
    let capacity = summary.capacity.as_ref()?;
    let label = if summary.simulated {
        "verdict (SIMULATED engine)"
    } else {
        "verdict"
    };
    let mut verdict = styled([label]);
    for node in &capacity.nodes {
        verdict.add_row([format!("{}: {}", node.node, node.verdict)]);
    }
    let cost: Vec<String> = capacity
        .nodes
        .iter()
        .map(|n| format!("{} {}", n.node, engine_time(n.engine_seconds)))
        .collect();
    let mut table = styled([
        "node",
        "search",
        "mode",
        "tenant",
        "capacity req/s",
        "of solo",
        "probes",
        "engine s",
        "GPU-eq",
    ]);
    for node in &capacity.nodes {
        for s in &node.solo {
            table.add_row([
                node.node.clone(),
                s.search.clone(),
                "solo".into(),
                s.tenant.clone(),
                s.interval.describe(),
                NO_DATA.into(),
                s.interval.probes.to_string(),
                format!("{:.0}", s.engine_seconds),
                NO_DATA.into(),
            ]);
        }
        for s in &node.shared {
            table.add_row([
                node.node.clone(),
                s.search.clone(),
                s.mode.name().into(),
                "= total".into(),
                s.interval.describe(),
                NO_DATA.into(),
                s.interval.probes.to_string(),
                format!("{:.0}", s.engine_seconds),
                match (s.gpu_equivalents_range, s.gpu_equivalents) {
                    (Some(range), _) => range.describe(),
                    (None, Some(g)) => format!("{g:.2}"),
                    (None, None) => NO_DATA.into(),
                },
            ]);
            for t in &s.tenants {
                table.add_row([
                    node.node.clone(),
                    s.search.clone(),
                    s.mode.name().into(),
                    t.tenant.clone(),
                    t.passed_rps
                        .map_or_else(|| NO_DATA.into(), |r| format!("{r:.3}")),
                    t.of_solo
                        .map_or_else(|| NO_DATA.into(), |r| format!("{r:.2}")),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
        }
    }
    align_numbers(&mut table, 5);
    let prices: String = capacity.nodes.iter().filter_map(render_cost).collect();
    let fits: String = capacity
        .nodes
        .iter()
        .flat_map(NodeCapacity::fit_lines)
        .map(|line| format!("{line}\n"))
        .collect();
    Some(format!(
        "{verdict}\nSLO capacity, requests/s [highest rate that passed, lowest that failed]; shared rows give each tenant's rate at the highest passing total\n{table}\n{fits}engine time the searches took: {}\n{prices}",
        cost.join(", ")
    ))
}

/// A node's capacities priced, a line each, when the config priced a GPU-hour.
fn render_cost(node: &NodeCapacity) -> Option<String> {
    let lines = node.cost.as_ref()?.lines(&node.node);
    Some(lines.iter().map(|l| format!("{l}\n")).collect())
}

/// `4 min 12 s`, or `38 s` under a minute.
fn engine_time(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    if whole < 60 {
        format!("{whole} s")
    } else {
        format!("{} min {} s", whole / 60, whole % 60)
    }
}

/// A trial's name, with its state when it did not finish (`mps (invalid)`).
fn trial_label(trial: &TrialSummary) -> String {
    if trial.state.is_finished() {
        trial.trial.clone()
    } else {
        format!("{} ({})", trial.trial, trial.state)
    }
}

/// A tenant's SLO verdict as the tables show it.
fn slo_cell(t: &TenantSummary) -> String {
    match t.slo.as_ref() {
        Some(s) if s.pass => "pass".into(),
        Some(_) => "FAIL".into(),
        None => NO_DATA.into(),
    }
}

/// The embeddings tenants, which stream no tokens: latency end to end and input tokens/s, or
/// `None` when there are none.
fn render_embeddings(summary: &Summary) -> Option<String> {
    let mut table = styled([
        "node",
        "trial",
        "tenant",
        "done",
        "failed",
        "latency p50 ms",
        "latency p99 ms",
        "req/s",
        "in tok/s",
        "offered/s",
        "achieved/s",
        "SLO",
    ]);
    let mut rows = 0;
    for (node, trial) in summary.trials() {
        for t in trial.tenants.iter().filter(|t| !t.api.generates()) {
            rows += 1;
            let m = &t.metrics;
            table.add_row([
                node.to_owned(),
                trial_label(trial),
                t.tenant.clone(),
                m.completed.to_string(),
                m.failed.to_string(),
                ms(m.e2e_ms.as_ref(), |p| p.p50),
                ms(m.e2e_ms.as_ref(), |p| p.p99),
                rate(m.throughput.map(|t| t.requests_per_s)),
                rate(m.throughput.map(|t| t.input_tokens_per_s)),
                rate(t.offered_rate),
                rate(m.achieved_rate),
                slo_cell(t),
            ]);
        }
    }
    align_numbers(&mut table, 3);
    (rows > 0).then(|| table.to_string())
}

/// Renders the summary; every missing figure shows as `-`, never as 0.
pub fn render_table(summary: &Summary) -> String {
    let mut table = styled([
        "node",
        "trial",
        "tenant",
        "done",
        "failed",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TPOT p50 ms",
        "TPOT p99 ms",
        "out tok/s",
        "offered/s",
        "achieved/s",
        "SLO",
    ]);
    for (node, trial) in summary.trials() {
        let trial_label = trial_label(trial);
        for t in trial.tenants.iter().filter(|t| t.api.generates()) {
            let m = &t.metrics;
            table.add_row([
                node.to_owned(),
                trial_label.clone(),
                t.tenant.clone(),
                m.completed.to_string(),
                m.failed.to_string(),
                ms(m.ttft_ms.as_ref(), |p| p.p50),
                ms(m.ttft_ms.as_ref(), |p| p.p99),
                ms(m.tpot_ms.as_ref(), |p| p.p50),
                ms(m.tpot_ms.as_ref(), |p| p.p99),
                rate(m.throughput.map(|t| t.output_tokens_per_s)),
                rate(t.offered_rate),
                rate(m.achieved_rate),
                slo_cell(t),
            ]);
        }
        for missing in &trial.missing {
            let mut row = vec![
                node.to_owned(),
                trial_label.clone(),
                missing.tenant.clone(),
                "stream missing".into(),
            ];
            row.extend((0..9).map(|_| NO_DATA.to_owned()));
            table.add_row(row);
        }
        // Output tokens summed: nothing to sum in a trial of embeddings tenants alone.
        let embeddings_alone = !trial.tenants.is_empty()
            && trial.tenants.iter().all(|t| !t.api.generates())
            && trial.missing.is_empty();
        if embeddings_alone {
            continue;
        }
        let mut total: Vec<Cell> = vec![
            Cell::new(node),
            Cell::new(&trial_label),
            Cell::new("= node aggregate"),
        ];
        total.extend((0..6).map(|_| Cell::new("")));
        total.push(Cell::new(rate(trial.aggregate_output_tokens_per_s)));
        total.extend((0..3).map(|_| Cell::new("")));
        table.add_row(total);
    }
    align_numbers(&mut table, 3);
    let mut out = String::new();
    let comparison = render_comparison(summary);
    let label = if summary.simulated {
        " [SIMULATED engine: latencies come from the timing model, not a GPU]"
    } else {
        ""
    };
    out.push_str(&format!("experiment {}{label}\n", summary.experiment));
    if let Some(capacity) = render_capacity(summary) {
        out.push_str(&capacity);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    if let Some(embeddings) = render_embeddings(summary) {
        out.push_str(
            "embeddings tenants (answered whole: latency end to end, no tokens streamed)\n",
        );
        out.push_str(&embeddings);
        out.push('\n');
    }
    if let Some(comparison) = comparison {
        out.push_str("sharing vs solo (shared / solo; latency above 1 is slower, throughput below 1 is less)\n");
        out.push_str(&comparison);
        out.push('\n');
    }
    if let Some(across) = render_across_nodes(summary) {
        out.push_str(
            "across nodes (latency from every tenant's merged histogram; throughput summed)\n",
        );
        out.push_str(&across);
        out.push('\n');
    }
    for (node, trial) in summary.trials().filter(|(_, t)| !t.state.is_finished()) {
        let reason = trial.reason.as_deref().unwrap_or("no reason was recorded");
        out.push_str(&format!(
            "trial {node}/{} {}: {reason}\n",
            trial.trial, trial.state
        ));
    }
    for failure in summary.slo_misses() {
        out.push_str(&format!("SLO failed: {failure}\n"));
    }
    if summary.interrupted {
        out.push_str("INTERRUPTED: the experiment was stopped before its end; the figures cover what was recorded until then\n");
    }
    for line in answer_scores(summary) {
        out.push_str(&format!("answers: {line}\n"));
    }
    out.push_str(&render_prompts(summary));
    out.push_str(&render_adapters(summary));
    for (node, trial) in summary.trials() {
        for t in &trial.tenants {
            // Unique prompts hit nothing, and a line per tenant saying so would be noise.
            let hit_rate = t.server.as_ref().and_then(|s| s.prefix_cache_hit_rate);
            if let Some(rate) = hit_rate.filter(|&r| r >= 0.001) {
                out.push_str(&format!(
                    "prefix cache: {node}/{}/{}: {:.1}% of prompt tokens served from the engine's cache\n",
                    trial.trial,
                    t.tenant,
                    rate * 100.0
                ));
            }
        }
    }
    for warning in &summary.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

/// What overrode the default of prompts unique to their request (once per tenant), and each
/// conversation tenant's TTFT by turn (per trial).
fn render_prompts(summary: &Summary) -> String {
    let mut out = String::new();
    let mut said = std::collections::BTreeSet::new();
    for (node, trial) in summary.trials() {
        for t in &trial.tenants {
            if let Some(why) = &t.shared_prefixes {
                if said.insert((node, t.tenant.as_str())) {
                    out.push_str(&format!("prompts: {node}/{}: {why}\n", t.tenant));
                }
            }
            if t.metrics.ttft_by_turn.is_empty() {
                continue;
            }
            let turns: Vec<String> = t
                .metrics
                .ttft_by_turn
                .iter()
                .map(|t| {
                    let p = &t.ttft_ms;
                    format!("{}: {:.1}/{:.1} ({})", t.turn, p.p50, p.p99, p.count)
                })
                .collect();
            out.push_str(&format!(
                "TTFT by turn: {node}/{}/{}: turn: p50/p99 ms (requests) {}\n",
                trial.trial,
                t.tenant,
                turns.join(", ")
            ));
        }
    }
    out
}

/// One line per LoRA adapter tenant (once, whatever its trials): whose engine serves it, so a
/// reader of the table knows which of its tenants share one engine.
fn render_adapters(summary: &Summary) -> String {
    let mut out = String::new();
    let mut said = std::collections::BTreeSet::new();
    for (node, trial) in summary.trials() {
        for t in &trial.tenants {
            let Some(base) = &t.served_by else { continue };
            if said.insert((node, t.tenant.as_str())) {
                out.push_str(&format!(
                    "engine: {node}/{}: a LoRA adapter ({}) in {base}'s engine\n",
                    t.tenant, t.model
                ));
            }
        }
    }
    out
}

/// One line per tenant and trial whose answers were kept: how many, and their scores.
fn answer_scores(summary: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    for (node, trial) in summary.trials() {
        for t in &trial.tenants {
            let Some(q) = &t.quality else { continue };
            let scores = match (q.exact_match, q.rouge_l) {
                (Some(exact), Some(rouge)) => format!(
                    "{} scored against expected outputs: exact match {:.1}%, ROUGE-L {rouge:.3}",
                    q.scored,
                    exact * 100.0
                ),
                _ => "no expected outputs to score against".into(),
            };
            out.push(format!(
                "{}/{}/{}: {} kept, {scores}",
                node, trial.trial, t.tenant, q.kept
            ));
        }
    }
    out
}

/// Every tenant's figures under a peer's definitions (p50, p99, mean), with what differs from
/// the peer's own computation.
pub fn render_variants(peer: &str, variants: &[multitenant::analysis::TenantVariant]) -> String {
    let mut table = styled([
        "node", "trial", "tenant", "figure", "p50 ms", "p99 ms", "mean ms",
    ]);
    for v in variants {
        for (name, p) in &v.metrics.figures {
            table.add_row([
                v.node.clone(),
                v.trial.clone(),
                v.tenant.clone(),
                name.clone(),
                ms(p.as_ref(), |p| p.p50),
                ms(p.as_ref(), |p| p.p99),
                ms(p.as_ref(), |p| p.mean),
            ]);
        }
    }
    align_numbers(&mut table, 4);
    let mut out =
        format!("under {peer}'s definitions (same events, that tool's formulas and names)\n");
    out.push_str(&table.to_string());
    out.push('\n');
    if let Some(v) = variants.first() {
        for note in &v.metrics.notes {
            out.push_str(&format!("note: {note}\n"));
        }
    }
    out
}

/// The comparison as a terminal table, one column per experiment.
pub fn render_comparison_table(
    labels: &[String],
    figures: &[super::compare::ComparedFigure],
) -> String {
    let mut header = vec!["tenant".to_owned(), "figure".to_owned()];
    header.extend(labels.iter().cloned());
    let mut table = styled(header);
    for f in figures {
        let mut row = vec![f.tenant.clone(), f.figure.clone()];
        for (i, v) in f.values.iter().enumerate() {
            let value = v.map_or(NO_DATA.into(), |v| format!("{v:.2}"));
            let cell = match i.checked_sub(1).map(|j| (f.change[j], &f.direction[j])) {
                Some((Some(c), d)) => format!("{value} ({:+.1}%, {})", c * 100.0, d.name()),
                _ => value,
            };
            row.push(cell);
        }
        table.add_row(row);
    }
    align_numbers(&mut table, 2);
    table.to_string()
}
