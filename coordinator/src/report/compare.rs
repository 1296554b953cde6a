//! `coordinator compare`: experiments side by side. Tenants are matched by node, trial and
//! tenant name; each figure of a later experiment gets its change against the first, with the
//! direction that change means (lower latency is better, higher throughput is better). A
//! figure missing on either side is `-`, never a change from zero.

use multitenant::analysis::{Summary, TenantSummary};
use serde::Serialize;

/// Whether a larger value is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Better {
    Lower,
    Higher,
}

/// Reads one figure of a tenant.
type Pick = fn(&TenantSummary) -> Option<f64>;

/// The figures compared, with how to read each.
const FIGURES: [(&str, Better, Pick); 7] = [
    ("ttft_p50_ms", Better::Lower, |t| {
        t.metrics.ttft_ms.map(|p| p.p50)
    }),
    ("ttft_p99_ms", Better::Lower, |t| {
        t.metrics.ttft_ms.map(|p| p.p99)
    }),
    ("tpot_p50_ms", Better::Lower, |t| {
        t.metrics.tpot_ms.map(|p| p.p50)
    }),
    ("tpot_p99_ms", Better::Lower, |t| {
        t.metrics.tpot_ms.map(|p| p.p99)
    }),
    ("output_tokens_per_s", Better::Higher, |t| {
        t.metrics.throughput.map(|x| x.output_tokens_per_s)
    }),
    ("requests_per_s", Better::Higher, |t| {
        t.metrics.throughput.map(|x| x.requests_per_s)
    }),
    ("error_rate", Better::Lower, |t| t.metrics.error_rate),
];

/// One figure of one tenant across the experiments.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedFigure {
    /// `node/trial/tenant`.
    pub tenant: String,
    /// Figure name.
    pub figure: String,
    /// Its value in each experiment, in the order given.
    pub values: Vec<Option<f64>>,
    /// Per later experiment: (later − first) / first, when both exist and first ≠ 0.
    pub change: Vec<Option<f64>>,
    /// Per later experiment: `better`, `worse`, `same` (within 1%) or `-`.
    pub direction: Vec<String>,
}

/// Compares `summaries` figure by figure against the first.
pub fn compare(summaries: &[Summary]) -> Vec<ComparedFigure> {
    if summaries.is_empty() {
        return Vec::new();
    }
    let mut keys: Vec<String> = Vec::new();
    for s in summaries {
        for (key, _) in tenants(s) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let mut out = Vec::new();
    for key in keys {
        for (figure, better, pick) in FIGURES {
            let values: Vec<Option<f64>> = summaries
                .iter()
                .map(|s| {
                    tenants(s)
                        .into_iter()
                        .find(|(k, _)| *k == key)
                        .and_then(|(_, t)| pick(t))
                })
                .collect();
            let base = values[0];
            let change: Vec<Option<f64>> = values[1..]
                .iter()
                .map(|v| match (base, v) {
                    (Some(b), Some(v)) if b != 0.0 => Some((v - b) / b),
                    _ => None,
                })
                .collect();
            let direction = change
                .iter()
                .map(|c| match c {
                    None => "-".to_owned(),
                    Some(c) if c.abs() < 0.01 => "same".to_owned(),
                    Some(c) => {
                        let up = *c > 0.0;
                        let good = (better == Better::Higher) == up;
                        if good { "better" } else { "worse" }.to_owned()
                    }
                })
                .collect();
            out.push(ComparedFigure {
                tenant: key.clone(),
                figure: figure.to_owned(),
                values,
                change,
                direction,
            });
        }
    }
    out
}

fn tenants(s: &Summary) -> Vec<(String, &TenantSummary)> {
    s.nodes
        .iter()
        .flat_map(|n| {
            n.trials.iter().flat_map(move |t| {
                t.tenants
                    .iter()
                    .map(move |x| (format!("{}/{}/{}", n.node, t.trial, x.tenant), x))
            })
        })
        .collect()
}

/// The comparison as a terminal table, one column per experiment.
pub fn render_comparison_table(labels: &[String], figures: &[ComparedFigure]) -> String {
    let mut header = vec!["tenant".to_owned(), "figure".to_owned()];
    header.extend(labels.iter().cloned());
    let mut table = super::table::styled(header);
    for f in figures {
        let mut row = vec![f.tenant.clone(), f.figure.clone()];
        for (i, v) in f.values.iter().enumerate() {
            let value = v.map_or("-".into(), |v| format!("{v:.2}"));
            let cell = match i.checked_sub(1).map(|j| (f.change[j], &f.direction[j])) {
                Some((Some(c), d)) => format!("{value} ({:+.1}%, {d})", c * 100.0),
                _ => value,
            };
            row.push(cell);
        }
        table.add_row(row);
    }
    super::table::align_numbers(&mut table, 2);
    table.to_string()
}

/// The comparison as a page of its own: one sortable table, each later value coloured by
/// whether it is better or worse than the first experiment's.
pub fn render_comparison_html(
    labels: &[String],
    figures: &[ComparedFigure],
    simulated: bool,
) -> String {
    use super::html::{escape, page, table, Cell};
    let mut header = vec!["tenant", "figure"];
    header.extend(labels.iter().map(String::as_str));
    let rows: Vec<(&str, Vec<Cell>)> = figures
        .iter()
        .map(|f| {
            let mut cells = vec![Cell::Text(f.tenant.clone()), Cell::Text(f.figure.clone())];
            for (i, v) in f.values.iter().enumerate() {
                let later = i
                    .checked_sub(1)
                    .map(|j| (f.change[j], f.direction[j].as_str()));
                cells.push(match (v, later) {
                    (Some(v), Some((Some(c), d))) => {
                        let class = match d {
                            "better" => "better",
                            "worse" => "worse",
                            _ => "same",
                        };
                        Cell::Figure(*v, format!("{v:.2} ({:+.1}%, {d})", c * 100.0), class)
                    }
                    (v, _) => Cell::Num(*v, 2, ""),
                });
            }
            ("", cells)
        })
        .collect();
    let mut body = format!(
        "<h1>multitenant comparison</h1>\n<p>Baseline: <b>{}</b>; every later experiment's \
         change is against it (lower latency and error rate are better, higher throughput is \
         better; within 1% is the same).</p>\n",
        escape(&labels[0])
    );
    if simulated {
        body.push_str(
            "<p class=\"simulated\"><b>SIMULATED engine</b> in at least one experiment: its \
             latencies come from the timing model.</p>\n",
        );
    }
    table(&mut body, &header, &rows);
    page("multitenant comparison", &body)
}
