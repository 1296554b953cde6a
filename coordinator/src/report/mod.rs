//! Turning a [`Summary`] into what people read: the terminal table, `summary.json` and
//! `summary.csv`, and experiments compared side by side.

pub mod compare;
mod csv;
mod table;

pub use csv::render_csv;
pub use table::{render_table, render_variants, slo_failures};

use std::path::Path;

use anyhow::Context;
use multitenant::analysis::Summary;

/// Writes `summary.json` and `summary.csv` into the experiment folder.
pub fn write_summary_files(dir: &Path, summary: &Summary) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(summary).context("serializing the summary")? + "\n";
    for (name, text) in [("summary.json", json), ("summary.csv", render_csv(summary))] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
