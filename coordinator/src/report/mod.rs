//! Turning a [`Summary`] into what people read: the terminal table, `summary.json`,
//! `summary.csv`, `report.html` with its plots (also under `plots/`), and experiments compared
//! side by side.

pub mod compare;
mod csv;
mod html;
pub mod plots;
mod table;

pub use csv::render_csv;
pub use html::{render_comparison_html, render_html};
pub use table::{render_comparison_table, render_table, render_variants};

use std::path::Path;

use anyhow::Context;
use multitenant::analysis::Summary;
use multitenant::layout::{self, ExperimentDir};
use multitenant::series::ExperimentSeries;

/// Writes `summary.json`, `summary.csv`, `report.html` and `plots/*.svg` into the experiment
/// folder `dir`, from its summary and the series made in the same pass over its streams.
pub fn write_summary_files(
    dir: &Path,
    summary: &Summary,
    series: &ExperimentSeries,
) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(summary).context("serializing the summary")? + "\n";
    let plots = plots::draw_all(summary, series)?;
    let folder = ExperimentDir::new(dir);
    let plots_dir = folder.file(layout::PLOTS_DIR);
    std::fs::create_dir_all(&plots_dir)
        .with_context(|| format!("creating {}", plots_dir.display()))?;
    for plot in &plots.drawn {
        write(&plots_dir.join(&plot.file), &plot.svg)?;
    }
    write(&folder.file(layout::SUMMARY_JSON), &json)?;
    write(&folder.file(layout::SUMMARY_CSV), &render_csv(summary))?;
    if let Some(csv) = csv::render_capacity_csv(summary) {
        write(&folder.file(layout::CAPACITY_CSV), &csv)?;
    }
    write(
        &folder.file(layout::REPORT_HTML),
        &render_html(summary, &plots, series),
    )
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
