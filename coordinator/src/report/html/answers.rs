//! The report's answers section: per trial, each kept prompt with every tenant's answer side by
//! side, scored against the dataset's expected output when it has one, above a table of each
//! tenant's scores.

use std::collections::BTreeMap;
use std::fmt::Write;

use multitenant::analysis::Summary;
use multitenant::events::PromptEvent;
use multitenant::metrics::quality::{exact_match, rouge_l};
use multitenant::series::ExperimentSeries;

use super::{escape, table, Cell};

/// Most prompts shown per trial; the scores cover every kept answer.
const MAX_ROWS: usize = 50;
/// Longest text shown in a cell, in characters.
const MAX_CHARS: usize = 600;

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// What lines answers up across tenants: the dataset entry (its file name and line or index),
/// or for synthetic prompts the request's number.
fn key(p: &PromptEvent) -> String {
    if p.origin == "synthetic" {
        let number = p.id.rsplit('-').next().unwrap_or(&p.id);
        format!("request {number}")
    } else {
        p.origin.rsplit('/').next().unwrap_or(&p.origin).to_owned()
    }
}

/// Appends the section, or nothing when no tenant kept an answer.
pub(super) fn render(out: &mut String, summary: &Summary, series: &ExperimentSeries) {
    let mut section = String::new();
    for node in &series.nodes {
        for trial in &node.trials {
            let tenants: Vec<_> = trial
                .tenants
                .iter()
                .filter(|t| !t.answers.is_empty())
                .collect();
            if tenants.is_empty() {
                continue;
            }
            let _ = writeln!(
                section,
                "<h3>{} / {}</h3>",
                escape(&node.node),
                escape(&trial.trial)
            );
            scores_table(&mut section, summary, &node.node, &trial.trial);
            // Per key, in first-seen order: the prompt, the expected output and each tenant's
            // answer.
            let mut rows: Vec<(String, &PromptEvent, BTreeMap<&str, &PromptEvent>)> = Vec::new();
            for t in &tenants {
                for p in &t.answers {
                    let k = key(p);
                    match rows.iter_mut().find(|(key, ..)| *key == k) {
                        Some((_, _, answers)) => {
                            answers.entry(&t.tenant).or_insert(p);
                        }
                        None => rows.push((k, p, BTreeMap::from([(t.tenant.as_str(), p)]))),
                    }
                }
            }
            let shown = rows.len().min(MAX_ROWS);
            let kept = kept_answers(summary, &node.node, &trial.trial);
            if kept > shown as u64 {
                let _ = writeln!(
                    section,
                    "<p>The first {shown} kept prompts by request number (a tenant kept {kept}); the scores above cover every kept answer.</p>"
                );
            }
            let mut header = vec!["prompt", "expected"];
            header.extend(tenants.iter().map(|t| t.tenant.as_str()));
            let body: Vec<(&str, Vec<Cell>)> = rows
                .iter()
                .take(shown)
                .map(|(k, first, answers)| {
                    let mut cells = vec![
                        Cell::Text(format!("[{k}] {}", clip(&first.text))),
                        match &first.expected {
                            Some(e) => Cell::Text(clip(e)),
                            None => Cell::Marked("none in the dataset".into(), "na"),
                        },
                    ];
                    for t in &tenants {
                        cells.push(answer_cell(answers.get(t.tenant.as_str()).copied()));
                    }
                    ("answer", cells)
                })
                .collect();
            table(&mut section, &header, &body);
        }
    }
    if !section.is_empty() {
        out.push_str("<h2>Answers side by side</h2>\n");
        out.push_str(&section);
    }
}

/// The most answers one tenant of the trial kept, as the summary counted them.
fn kept_answers(summary: &Summary, node: &str, trial: &str) -> u64 {
    summary
        .trials()
        .filter(|(n, t)| *n == node && t.trial == trial)
        .flat_map(|(_, t)| &t.tenants)
        .filter_map(|t| Some(t.quality.as_ref()?.kept))
        .max()
        .unwrap_or(0)
}

fn answer_cell(prompt: Option<&PromptEvent>) -> Cell {
    let Some(p) = prompt else {
        return Cell::Marked("not kept for this tenant".into(), "na");
    };
    let answer = p.response.as_deref().unwrap_or_default();
    match p.expected.as_deref() {
        Some(expected) => {
            let exact = exact_match(answer, expected);
            let score = rouge_l(answer, expected);
            let verdict = if exact { "exact match" } else { "differs" };
            Cell::Figure(
                score,
                format!("{}\n[{verdict}; ROUGE-L {score:.3}]", clip(answer)),
                if exact { "pass" } else { "same" },
            )
        }
        None => Cell::Text(clip(answer)),
    }
}

fn scores_table(out: &mut String, summary: &Summary, node: &str, trial: &str) {
    let rows: Vec<(&str, Vec<Cell>)> = summary
        .trials()
        .filter(|(n, t)| *n == node && t.trial == trial)
        .flat_map(|(_, t)| &t.tenants)
        .filter_map(|t| {
            let q = t.quality.as_ref()?;
            Some((
                "",
                vec![
                    Cell::Text(t.tenant.clone()),
                    Cell::Num(Some(q.kept as f64), 0, ""),
                    Cell::Num(Some(q.scored as f64), 0, ""),
                    Cell::Num(q.exact_match.map(|e| e * 100.0), 1, "%"),
                    Cell::Num(q.rouge_l, 3, ""),
                ],
            ))
        })
        .collect();
    table(
        out,
        &[
            "tenant",
            "answers kept",
            "scored",
            "exact match",
            "ROUGE-L (mean F1)",
        ],
        &rows,
    );
}
