//! `report.html`: one self-contained page (no network, no external file) with the summary's
//! tables, sortable by any column and coloured by SLO verdict and trial state, the plots inline,
//! what could not be shown and why, and the metric definitions.

use std::fmt::Write;

use multitenant::analysis::{Summary, TenantSummary, TrialSummary};
use multitenant::capacity::SharingDecision;
use multitenant::metrics::Percentiles;
use multitenant::series::ExperimentSeries;

use super::{escape, frame, table, Cell};
use crate::report::plots::Plots;

fn pct(p: Option<&Percentiles>, pick: fn(&Percentiles) -> f64) -> Cell {
    Cell::Num(p.map(pick), 2, "")
}

fn slo_cell(t: &TenantSummary) -> Cell {
    match &t.slo {
        Some(s) if s.pass => Cell::Marked("pass".into(), "pass"),
        Some(_) => Cell::Marked("FAIL".into(), "fail"),
        None => Cell::Text("none set".into()),
    }
}

fn trial_label(trial: &TrialSummary) -> String {
    match &trial.reason {
        Some(reason) if !trial.state.is_finished() => {
            format!("{} ({}: {reason})", trial.trial, trial.state)
        }
        _ if !trial.state.is_finished() => format!("{} ({})", trial.trial, trial.state),
        _ => trial.trial.clone(),
    }
}

fn tenants_table(out: &mut String, summary: &Summary) {
    let header = [
        "node",
        "trial",
        "tenant",
        "model",
        "sent",
        "done",
        "failed",
        "offered/s",
        "achieved/s",
        "out tok/s",
        "in tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TPOT p50 ms",
        "TPOT p99 ms",
        "ITL p99 ms",
        "E2E p99 ms",
        "TTFT p99 vs solo",
        "E2E p99 vs solo",
        "out tok/s vs solo",
        "SLO",
    ];
    let mut rows = Vec::new();
    for (node, trial) in summary.trials() {
        let class = if trial.state.is_finished() {
            ""
        } else {
            "not-finished"
        };
        for t in &trial.tenants {
            let m = &t.metrics;
            let slowdown = t.slowdown;
            rows.push((
                class,
                vec![
                    Cell::Text(node.to_owned()),
                    Cell::Text(trial_label(trial)),
                    Cell::Text(t.tenant.clone()),
                    Cell::Text(t.model.clone()),
                    Cell::Num(Some(m.sent as f64), 0, ""),
                    Cell::Num(Some(m.completed as f64), 0, ""),
                    Cell::Num(Some(m.failed as f64), 0, ""),
                    Cell::Num(t.offered_rate, 2, ""),
                    Cell::Num(m.achieved_rate, 2, ""),
                    Cell::Num(m.throughput.map(|x| x.output_tokens_per_s), 1, ""),
                    Cell::Num(m.throughput.map(|x| x.input_tokens_per_s), 1, ""),
                    pct(m.ttft_ms.as_ref(), |p| p.p50),
                    pct(m.ttft_ms.as_ref(), |p| p.p99),
                    pct(m.tpot_ms.as_ref(), |p| p.p50),
                    pct(m.tpot_ms.as_ref(), |p| p.p99),
                    pct(m.itl_ms.as_ref(), |p| p.p99),
                    pct(m.e2e_ms.as_ref(), |p| p.p99),
                    Cell::Num(slowdown.and_then(|s| s.ttft_p99), 2, "×"),
                    Cell::Num(slowdown.and_then(|s| s.e2e_p99), 2, "×"),
                    Cell::Num(slowdown.and_then(|s| s.output_tokens_per_s), 2, "×"),
                    slo_cell(t),
                ],
            ));
        }
        for missing in &trial.missing {
            let mut cells = vec![
                Cell::Text(node.to_owned()),
                Cell::Text(trial_label(trial)),
                Cell::Text(missing.tenant.clone()),
                Cell::Marked(format!("stream missing: {}", missing.reason), "fail"),
            ];
            cells.extend((4..header.len()).map(|_| Cell::Num(None, 0, "")));
            rows.push(("missing", cells));
        }
    }
    table(out, &header, &rows);
}

fn trials_table(out: &mut String, summary: &Summary) {
    let header = [
        "node",
        "trial",
        "mode",
        "state",
        "tenants",
        "aggregate out tok/s",
        "aggregate total tok/s",
        "co-location gain",
        "J per output token",
        "GPU util mean %",
        "GPU memory max GiB",
        "GPU power mean W",
    ];
    let mut rows = Vec::new();
    for (node, trial) in summary.trials() {
        let gpus = &trial.gpus;
        let mean = |pick: fn(&multitenant::metrics::gpu::GpuTrialSummary) -> Option<f64>| {
            let v: Vec<f64> = gpus.iter().filter_map(pick).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let state = match &trial.reason {
            Some(r) => format!("{}: {r}", trial.state),
            None => trial.state.name().to_owned(),
        };
        let state_class = if trial.state.is_finished() {
            "pass"
        } else {
            "fail"
        };
        rows.push((
            "",
            vec![
                Cell::Text(node.to_owned()),
                Cell::Text(trial.trial.clone()),
                Cell::Text(trial.mode.name().into()),
                Cell::Marked(state, state_class),
                Cell::Num(Some(trial.tenants.len() as f64), 0, ""),
                Cell::Num(trial.aggregate_output_tokens_per_s, 1, ""),
                Cell::Num(trial.aggregate_total_tokens_per_s, 1, ""),
                Cell::Num(trial.colocation_gain, 2, "×"),
                Cell::Num(trial.energy_per_output_token_j, 4, ""),
                Cell::Num(mean(|g| g.utilization_mean_pct), 1, ""),
                Cell::Num(
                    gpus.iter()
                        .filter_map(|g| g.memory_used_max_bytes)
                        .max()
                        .map(|b| b as f64 / (1u64 << 30) as f64),
                    2,
                    "",
                ),
                Cell::Num(mean(|g| g.power_mean_w), 1, ""),
            ],
        ));
    }
    table(out, &header, &rows);
}

fn slo_table(out: &mut String, summary: &Summary) -> bool {
    let mut rows = Vec::new();
    for (node, trial) in summary.trials() {
        for t in &trial.tenants {
            let Some(slo) = &t.slo else { continue };
            for check in &slo.checks {
                let class = if check.verdict.passed() {
                    "pass"
                } else {
                    "fail"
                };
                rows.push((
                    "",
                    vec![
                        Cell::Text(node.to_owned()),
                        Cell::Text(trial_label(trial)),
                        Cell::Text(t.tenant.clone()),
                        Cell::Text(check.bound.clone()),
                        Cell::Num(Some(check.limit), 3, ""),
                        Cell::Num(check.measured, 3, ""),
                        Cell::Marked(check.verdict.name().to_owned(), class),
                        Cell::Num(slo.goodput_rps, 2, ""),
                        Cell::Num(slo.attainment.map(|a| a * 100.0), 1, "%"),
                    ],
                ));
            }
        }
    }
    if rows.is_empty() {
        return false;
    }
    table(
        out,
        &[
            "node",
            "trial",
            "tenant",
            "bound",
            "limit",
            "measured",
            "verdict",
            "goodput req/s",
            "attainment",
        ],
        &rows,
    );
    true
}

fn across_nodes_table(out: &mut String, summary: &Summary) {
    let rows: Vec<_> = summary
        .across_nodes
        .iter()
        .map(|t| {
            (
                "",
                vec![
                    Cell::Text(t.trial.clone()),
                    Cell::Text(t.nodes.join(", ")),
                    Cell::Num(Some(t.completed as f64), 0, ""),
                    Cell::Num(Some(t.failed as f64), 0, ""),
                    pct(t.ttft_ms.as_ref(), |p| p.p50),
                    pct(t.ttft_ms.as_ref(), |p| p.p99),
                    pct(t.tpot_ms.as_ref(), |p| p.p50),
                    pct(t.tpot_ms.as_ref(), |p| p.p99),
                    Cell::Num(t.output_tokens_per_s, 1, ""),
                ],
            )
        })
        .collect();
    table(out, &crate::report::table::ACROSS_NODES_HEADER, &rows);
}

fn definitions_table(out: &mut String, summary: &Summary) {
    let d = &summary.definitions;
    let rows: Vec<_> = [
        ("TTFT", &d.ttft),
        ("TPOT", &d.tpot),
        ("ITL", &d.itl),
        ("E2E", &d.e2e),
        ("throughput window", &d.window),
        ("aggregate throughput", &d.aggregate),
        ("schedule lag", &d.schedule_lag),
    ]
    .into_iter()
    .map(|(name, text)| ("", vec![Cell::Text(name.into()), Cell::Text(text.clone())]))
    .collect();
    table(out, &["figure", "definition (docs/metrics.md)"], &rows);
}

fn plots_section(out: &mut String, plots: &Plots) {
    out.push_str("<div class=\"plots\">\n");
    for plot in &plots.drawn {
        let class = if plot.file.ends_with("timeline.svg") {
            " class=\"wide\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<figure{class} data-plot=\"{file}\"><figcaption>{title} \
             <a href=\"plots/{file}\">(SVG)</a></figcaption>\n{svg}</figure>\n",
            file = escape(&plot.file),
            title = escape(&plot.title),
            svg = strip_xml_declaration(&plot.svg),
        );
    }
    out.push_str("</div>\n");
    if !plots.gaps.is_empty() {
        out.push_str("<h3>Not plotted</h3><ul class=\"gaps\">\n");
        for gap in &plots.gaps {
            let _ = writeln!(
                out,
                "<li><b>{}</b>: {}</li>",
                escape(&gap.title),
                escape(&gap.reason)
            );
        }
        out.push_str("</ul>\n");
    }
}

fn strip_xml_declaration(svg: &str) -> &str {
    match svg.strip_prefix("<?xml") {
        Some(rest) => rest.find("?>").map_or(svg, |i| rest[i + 2..].trim_start()),
        None => svg,
    }
}

/// Renders the whole report of `summary` with `plots`, and the kept answers of `series`.
pub fn render_html(summary: &Summary, plots: &Plots, series: &ExperimentSeries) -> String {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<h1>multitenant report: {}</h1>\n<p>summary schema {}, multitenant {}</p>",
        escape(&summary.experiment),
        escape(&summary.schema_version),
        multitenant::TOOL_VERSION,
    );
    if summary.simulated {
        body.push_str(
            "<p class=\"simulated\"><b>SIMULATED engine:</b> latencies come from the simulated \
             engine's timing model, not from a GPU.</p>\n",
        );
    }
    capacity_section(&mut body, summary);
    let failures = summary.slo_misses();
    if !failures.is_empty() {
        body.push_str("<h2>SLO misses</h2><ul class=\"warnings\">\n");
        for f in &failures {
            let _ = writeln!(body, "<li>{}</li>", escape(f));
        }
        body.push_str("</ul>\n");
    }
    body.push_str("<h2>Tenants</h2>\n");
    tenants_table(&mut body, summary);
    body.push_str("<h2>Trials</h2>\n");
    trials_table(&mut body, summary);
    let mut slos = String::new();
    if slo_table(&mut slos, summary) {
        body.push_str("<h2>SLO checks</h2>\n");
        body.push_str(&slos);
    }
    if !summary.across_nodes.is_empty() {
        body.push_str("<h2>Across nodes</h2>\n");
        across_nodes_table(&mut body, summary);
    }
    body.push_str("<h2>Plots</h2>\n");
    plots_section(&mut body, plots);
    super::answers::render(&mut body, summary, series);
    if !summary.warnings.is_empty() {
        body.push_str("<h2>Warnings</h2><ul class=\"warnings\">\n");
        for w in &summary.warnings {
            let _ = writeln!(body, "<li>{}</li>", escape(w));
        }
        body.push_str("</ul>\n");
    }
    body.push_str("<h2>Definitions</h2>\n");
    definitions_table(&mut body, summary);
    frame(&format!("multitenant: {}", summary.experiment), &body)
}

/// The verdict box and the capacity table, when the experiment searched capacity.
fn capacity_section(out: &mut String, summary: &Summary) {
    let Some(capacity) = &summary.capacity else {
        return;
    };
    out.push_str("<div class=\"verdict\" id=\"verdict\"><h2>Verdict</h2>\n");
    for node in &capacity.nodes {
        let _ = writeln!(
            out,
            "<p><b>{}</b>: {}</p>",
            escape(&node.node),
            escape(&node.verdict)
        );
    }
    for node in &capacity.nodes {
        for line in node.fit_lines() {
            let _ = writeln!(out, "<p class=\"fit\">{}</p>", escape(&line));
        }
        for line in node.cost.iter().flat_map(|c| c.lines(&node.node)) {
            let _ = writeln!(out, "<p class=\"cost\">{}</p>", escape(&line));
        }
    }
    let _ = writeln!(
        out,
        "<p class=\"definition\">{}</p></div>",
        escape(&capacity.definition)
    );
    let header = [
        "node",
        "search",
        "mode",
        "tenant",
        "passed req/s",
        "failed req/s",
        "of solo",
        "probes",
        "GPU-equivalents",
        "interval",
    ];
    let mut rows = Vec::new();
    for node in &capacity.nodes {
        for s in &node.solo {
            rows.push((
                "",
                vec![
                    Cell::Text(node.node.clone()),
                    Cell::Text(s.search.clone()),
                    Cell::Text("solo".into()),
                    Cell::Text(s.tenant.clone()),
                    Cell::Num(s.interval.passed, 3, ""),
                    Cell::Num(s.interval.failed, 3, ""),
                    Cell::Num(None, 2, ""),
                    Cell::Num(Some(f64::from(s.interval.probes)), 0, ""),
                    Cell::Num(None, 2, ""),
                    Cell::Text(s.interval.describe()),
                ],
            ));
        }
        for s in &node.shared {
            for t in &s.tenants {
                // Coloured by the decision the range makes: undecided stays plain.
                let class = match s.decision {
                    Some(SharingDecision::Wins) => "pass",
                    Some(SharingDecision::Loses) => "fail",
                    Some(SharingDecision::Undecided) => "",
                    None if s.gpu_equivalents.is_some_and(|g| g >= 1.0) => "pass",
                    None => "fail",
                };
                let figure = match s.gpu_equivalents_range {
                    Some(range) => format!(
                        "{} ({})",
                        range.describe(),
                        s.decision.map_or("", |d| d.words())
                    ),
                    None => s
                        .gpu_equivalents
                        .map(|g| format!("{g:.2}"))
                        .unwrap_or_default(),
                };
                rows.push((
                    "",
                    vec![
                        Cell::Text(node.node.clone()),
                        Cell::Text(s.search.clone()),
                        Cell::Text(s.mode.name().into()),
                        Cell::Text(t.tenant.clone()),
                        Cell::Num(t.passed_rps, 3, ""),
                        Cell::Num(t.failed_rps, 3, ""),
                        Cell::Num(t.of_solo, 2, ""),
                        Cell::Num(Some(f64::from(s.interval.probes)), 0, ""),
                        match s.gpu_equivalents {
                            Some(g) => Cell::Figure(g, figure.clone(), class),
                            None => Cell::Num(None, 2, ""),
                        },
                        Cell::Text(s.interval.describe()),
                    ],
                ));
            }
        }
    }
    out.push_str("<h2>SLO capacity</h2>\n");
    table(out, &header, &rows);
}
