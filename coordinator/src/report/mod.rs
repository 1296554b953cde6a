//! Turning a [`Summary`] into what people read: the terminal table and `summary.json`.

mod table;

pub use table::render_table;

use std::path::Path;

use anyhow::Context;
use multitenant::analysis::Summary;

/// Writes `summary.json` into the experiment folder.
pub fn write_summary_json(dir: &Path, summary: &Summary) -> anyhow::Result<()> {
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(summary).context("serializing the summary")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
