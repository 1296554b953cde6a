//! HTML: the pieces every page shares (frame, style, sort script, escaping, sortable tables,
//! the one spelling of a missing figure) and the pages built from them: the experiment's
//! `report.html` ([`page`]), its side-by-side answers ([`answers`]) and `compare --html`
//! ([`compare`]).
//!
//! A figure without data is shown as "no data" and sorts last; it is never a 0 or a NaN.

mod answers;
mod compare;
mod page;

pub use compare::render_comparison_html;
pub use page::render_html;

use std::fmt::Write;

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d1d1f; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
.simulated { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; display: inline-block; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; }
th { background: #f3f3f3; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " \25B2"; }
th[aria-sort=descending]::after { content: " \25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.na { color: #888; font-style: italic; text-align: center; }
td.pass, td.better { background: #d4edda; }
td.fail, td.worse { background: #f8d7da; font-weight: 600; }
td.same { color: #555; }
tr.not-finished td { background: #fafafa; color: #777; }
tr.missing td { background: #fff3f3; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
figure { margin: 0; }
figure svg { width: 100%; height: auto; }
figure.wide { grid-column: 1 / -1; }
figcaption { font-weight: 600; margin-bottom: 4px; }
ul.warnings li, ul.gaps li { margin: 2px 0; }
tr.answer td { white-space: pre-wrap; vertical-align: top; max-width: 48ch; }
.verdict { background: #eef5ff; border: 2px solid #4a78c2; padding: 4px 14px; margin: 12px 0; }
#script-errors:empty { display: none; }
#script-errors { color: #a00; border: 1px solid #a00; padding: 6px; }
"#;

/// Click a header to sort by it; again to reverse. "no data" cells stay last either way.
const SCRIPT: &str = r#"
function cellKey(cell) {
  if (!cell || cell.classList.contains('na')) return null;
  var v = cell.getAttribute('data-v');
  return v !== null ? parseFloat(v) : cell.textContent.toLowerCase();
}
function sortTable(table, column, th) {
  var ascending = th.getAttribute('aria-sort') !== 'ascending';
  table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
  th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = cellKey(a.cells[column]), y = cellKey(b.cells[column]);
    if (x === null || y === null) return (x === null) - (y === null);
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, column) {
    th.setAttribute('role', 'button');
    th.tabIndex = 0;
    th.addEventListener('click', function () { sortTable(table, column, th); });
    th.addEventListener('keydown', function (e) { if (e.key === 'Enter') sortTable(table, column, th); });
  });
});
"#;

/// How HTML shows a figure that has no data: one cell, sorted last by the script.
pub(crate) const NO_DATA_CELL: &str = "<td class=\"na\" title=\"no data\">no data</td>";

/// Escapes text for HTML content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One table cell.
pub(crate) enum Cell {
    /// Text, sorted as text.
    Text(String),
    /// A number shown with `decimals` and a suffix, sorted by value; no value shows "no data".
    Num(Option<f64>, usize, &'static str),
    /// Text with a CSS class (pass, fail).
    Marked(String, &'static str),
    /// A number sorted by value but shown as `text`, with a CSS class (better, worse, same).
    Figure(f64, String, &'static str),
}

impl Cell {
    fn render(&self, out: &mut String) {
        match self {
            Cell::Text(t) => {
                let _ = write!(out, "<td>{}</td>", escape(t));
            }
            Cell::Num(Some(v), decimals, suffix) if v.is_finite() => {
                let _ = write!(
                    out,
                    "<td class=\"num\" data-v=\"{v}\">{v:.decimals$}{suffix}</td>"
                );
            }
            Cell::Num(..) => out.push_str(NO_DATA_CELL),
            Cell::Marked(t, class) => {
                let _ = write!(out, "<td class=\"{class}\">{}</td>", escape(t));
            }
            Cell::Figure(v, text, class) => {
                let _ = write!(
                    out,
                    "<td class=\"num {class}\" data-v=\"{v}\">{}</td>",
                    escape(text)
                );
            }
        }
    }
}

/// A sortable table; `rows` pairs a row's CSS class (may be empty) with its cells.
pub(crate) fn table(out: &mut String, header: &[&str], rows: &[(&str, Vec<Cell>)]) {
    out.push_str("<table class=\"sortable\"><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for (class, cells) in rows {
        if class.is_empty() {
            out.push_str("<tr>");
        } else {
            let _ = write!(out, "<tr class=\"{class}\">");
        }
        for cell in cells {
            cell.render(out);
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// The page's frame around `body`: title, style, the error catcher and the sort script.
pub(crate) fn frame(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body>\n\
         <div id=\"script-errors\" role=\"alert\"></div>\n\
         <script>window.addEventListener('error', function (e) {{\
         document.getElementById('script-errors').textContent += 'Report script error: ' + e.message + '\\n'; }});</script>\n\
         {body}\n<script>{SCRIPT}</script>\n</body></html>\n",
        title = escape(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_shows_missing_numbers_as_no_data() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let mut out = String::new();
        for cell in [
            Cell::Num(None, 2, ""),
            Cell::Num(Some(f64::NAN), 2, ""),
            Cell::Num(Some(1.5), 2, "×"),
        ] {
            cell.render(&mut out);
        }
        assert_eq!(
            out,
            "<td class=\"na\" title=\"no data\">no data</td>\
             <td class=\"na\" title=\"no data\">no data</td>\
             <td class=\"num\" data-v=\"1.5\">1.50×</td>"
        );
    }
}
