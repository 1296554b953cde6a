//! The summary as a terminal table: one row per tenant and trial, then each trial's node total.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use multitenant::analysis::Summary;
use multitenant::metrics::Percentiles;

fn ms(p: Option<&Percentiles>, pick: fn(&Percentiles) -> f64) -> String {
    p.map_or("-".into(), |p| format!("{:.2}", pick(p)))
}

fn rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// Renders the summary; every missing figure shows as `-`, never as 0.
pub fn render_table(summary: &Summary) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
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
    ]);
    for node in &summary.nodes {
        for trial in &node.trials {
            let trial_label = if trial.state == "finished" {
                trial.trial.clone()
            } else {
                format!("{} ({})", trial.trial, trial.state)
            };
            for t in &trial.tenants {
                let m = &t.metrics;
                table.add_row([
                    node.node.clone(),
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
                ]);
            }
            let mut total: Vec<Cell> = vec![
                Cell::new(&node.node),
                Cell::new(&trial_label),
                Cell::new("= node aggregate"),
            ];
            total.extend((0..6).map(|_| Cell::new("")));
            total.push(Cell::new(rate(trial.aggregate_output_tokens_per_s)));
            total.extend((0..2).map(|_| Cell::new("")));
            table.add_row(total);
        }
    }
    for column in table.column_iter_mut().skip(3) {
        column.set_cell_alignment(CellAlignment::Right);
    }
    let mut out = String::new();
    let label = if summary.simulated {
        " [SIMULATED engine: latencies come from the timing model, not a GPU]"
    } else {
        ""
    };
    out.push_str(&format!("experiment {}{label}\n", summary.experiment));
    out.push_str(&table.to_string());
    out.push('\n');
    for warning in &summary.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}
