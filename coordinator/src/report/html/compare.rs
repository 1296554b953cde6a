//! `coordinator compare --html`: the comparison as a page of its own.

use super::{escape, frame, table, Cell};
use crate::report::compare::{ComparedFigure, Direction};

/// The comparison as a page of its own: one sortable table, each later value coloured by
/// whether it is better or worse than the first experiment's.
pub fn render_comparison_html(
    labels: &[String],
    figures: &[ComparedFigure],
    simulated: bool,
) -> String {
    let mut header = vec!["tenant", "figure"];
    header.extend(labels.iter().map(String::as_str));
    let rows: Vec<(&str, Vec<Cell>)> = figures
        .iter()
        .map(|f| {
            let mut cells = vec![Cell::Text(f.tenant.clone()), Cell::Text(f.figure.clone())];
            for (i, v) in f.values.iter().enumerate() {
                let later = i.checked_sub(1).map(|j| (f.change[j], f.direction[j]));
                cells.push(match (v, later) {
                    (Some(v), Some((Some(c), d))) => {
                        let class = match d {
                            Direction::Better => "better",
                            Direction::Worse => "worse",
                            Direction::Same | Direction::NoData => "same",
                        };
                        let text = format!("{v:.2} ({:+.1}%, {})", c * 100.0, d.name());
                        Cell::Figure(*v, text, class)
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
    frame("multitenant comparison", &body)
}
