//! Prompt datasets: a ShareGPT-format JSON file or a JSONL file of prompts.
//!
//! Both are read whole, once per run. Entries that cannot be used (a line that is not JSON, a
//! conversation without a human turn, an empty prompt) are skipped, each with a warning that
//! names its file and line (JSONL) or entry index (ShareGPT); a file with no usable entry is
//! refused.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Which format a dataset file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetFormat {
    /// A JSON array of `{"conversations": [{"from": "human"|"gpt", "value": ...}, ...]}`; the
    /// first human turn is the prompt, the turn after it the reference answer.
    ShareGpt,
    /// One JSON object per line: `{"prompt": ..., "output_tokens"?: N, "expected"?: ...}`.
    Jsonl,
}

/// One usable prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetEntry {
    /// The prompt text.
    pub prompt: String,
    /// Output length the entry asks for, when it gives one (JSONL `output_tokens`).
    pub output_tokens: Option<u32>,
    /// A reference answer, when the file has one (ShareGPT's answer turn, JSONL `expected`).
    pub expected: Option<String>,
    /// Where it came from: `file:line` or `file[index]`.
    pub origin: String,
}

/// The usable entries of a file, and what was skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Usable entries, in file order.
    pub entries: Vec<DatasetEntry>,
    /// One message per skipped entry, with its place in the file.
    pub skipped: Vec<String>,
}

/// A dataset that cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("cannot read dataset {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A ShareGPT file that is not a JSON array.
    #[error("{path} is not a ShareGPT file (a JSON array of conversations): {message}")]
    NotShareGpt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Nothing in the file can be sent.
    #[error("{path}: none of its {total} entries is usable ({first})")]
    NoUsableEntry {
        /// The file.
        path: PathBuf,
        /// Entries seen.
        total: usize,
        /// Why the first one was skipped.
        first: String,
    },
}

#[derive(Deserialize)]
struct JsonlLine {
    prompt: Option<String>,
    output_tokens: Option<i64>,
    expected: Option<String>,
}

#[derive(Deserialize)]
struct Conversation {
    #[serde(default)]
    conversations: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    from: Option<String>,
    value: Option<String>,
}

impl Dataset {
    /// Reads `path` in `format`.
    pub fn load(path: &Path, format: DatasetFormat) -> Result<Self, DatasetError> {
        let text = std::fs::read_to_string(path).map_err(|e| DatasetError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let (dataset, total) = match format {
            DatasetFormat::Jsonl => Self::from_jsonl(&text, &path.display().to_string()),
            DatasetFormat::ShareGpt => Self::from_sharegpt(&text, path)?,
        };
        if dataset.entries.is_empty() {
            return Err(DatasetError::NoUsableEntry {
                path: path.to_owned(),
                total,
                first: dataset
                    .skipped
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "the file is empty".into()),
            });
        }
        Ok(dataset)
    }

    /// Parses JSONL text; returns the dataset and the number of non-blank lines.
    fn from_jsonl(text: &str, origin: &str) -> (Self, usize) {
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        let mut total = 0;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            total += 1;
            let at = format!("{origin}:{}", i + 1);
            let parsed: JsonlLine = match serde_json::from_str(line) {
                Ok(p) => p,
                Err(e) => {
                    skipped.push(format!("{at}: not a JSON object with a prompt ({e})"));
                    continue;
                }
            };
            let Some(prompt) = parsed.prompt.filter(|p| !p.trim().is_empty()) else {
                skipped.push(format!("{at}: no \"prompt\" text"));
                continue;
            };
            let output_tokens = match parsed.output_tokens {
                None => None,
                Some(n) => match u32::try_from(n) {
                    Ok(n) if n >= 1 => Some(n),
                    _ => {
                        skipped.push(format!("{at}: output_tokens must be ≥ 1, got {n}"));
                        continue;
                    }
                },
            };
            entries.push(DatasetEntry {
                prompt,
                output_tokens,
                expected: parsed.expected,
                origin: at,
            });
        }
        (Self { entries, skipped }, total)
    }

    /// Parses a ShareGPT JSON array; returns the dataset and the number of conversations.
    fn from_sharegpt(text: &str, path: &Path) -> Result<(Self, usize), DatasetError> {
        let items: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| DatasetError::NotShareGpt {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let origin = path.display().to_string();
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{origin}[{i}]");
            let conversation: Conversation = match serde_json::from_value(item.clone()) {
                Ok(c) => c,
                Err(e) => {
                    skipped.push(format!("{at}: not a conversation ({e})"));
                    continue;
                }
            };
            let turns = &conversation.conversations;
            let human = turns.iter().position(|t| {
                t.from.as_deref() == Some("human")
                    && t.value.as_deref().is_some_and(|v| !v.trim().is_empty())
            });
            let Some(human) = human else {
                skipped.push(format!("{at}: no human turn with text"));
                continue;
            };
            let answer = turns
                .get(human + 1)
                .filter(|t| t.from.as_deref() == Some("gpt"))
                .and_then(|t| t.value.clone())
                .filter(|v| !v.trim().is_empty());
            entries.push(DatasetEntry {
                prompt: turns[human].value.clone().unwrap_or_default(),
                output_tokens: None,
                expected: answer,
                origin: at,
            });
        }
        Ok((Self { entries, skipped }, items.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_jsonl_lines_are_skipped_with_their_line_numbers() {
        let text = "{\"prompt\": \"hello there\", \"output_tokens\": 12}\n\nnot json\n{\"prompt\": \"\"}\n{\"prompt\": \"why\", \"output_tokens\": 0}\n{\"prompt\": \"ok\", \"expected\": \"fine\"}\n{\"prompt\": \"cut";
        let (d, total) = Dataset::from_jsonl(text, "p.jsonl");
        assert_eq!(total, 6);
        assert_eq!(d.entries.len(), 2);
        assert_eq!(d.entries[0].output_tokens, Some(12));
        assert_eq!(d.entries[1].expected.as_deref(), Some("fine"));
        assert_eq!(d.entries[1].origin, "p.jsonl:6");
        let places: Vec<&str> = d
            .skipped
            .iter()
            .map(|s| s.split(": ").next().unwrap_or_default())
            .collect();
        assert_eq!(places, ["p.jsonl:3", "p.jsonl:4", "p.jsonl:5", "p.jsonl:7"]);
    }

    #[test]
    fn sharegpt_takes_the_first_human_turn_and_the_answer_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sg.json");
        std::fs::write(
            &path,
            r#"[
              {"id": "a", "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]},
              {"id": "b", "conversations": [{"from": "gpt", "value": "orphan answer"}]},
              {"id": "c", "conversations": "oops"},
              {"id": "d", "conversations": [{"from": "system", "value": "x"}, {"from": "human", "value": "Hi"}]}
            ]"#,
        )
        .expect("write");
        let d = Dataset::load(&path, DatasetFormat::ShareGpt).expect("usable");
        assert_eq!(d.entries.len(), 2);
        assert_eq!(d.entries[0].prompt, "Name a colour.");
        assert_eq!(d.entries[0].expected.as_deref(), Some("Blue."));
        assert_eq!(d.entries[1].prompt, "Hi");
        assert_eq!(d.entries[1].expected, None);
        assert_eq!(d.skipped.len(), 2);
        assert!(
            d.skipped[0].contains("sg.json[1]: no human turn"),
            "{:?}",
            d.skipped
        );
    }

    #[test]
    fn a_file_without_a_usable_entry_or_that_is_not_sharegpt_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "nope\n{\"text\": 1}\n").expect("write");
        let err = Dataset::load(&path, DatasetFormat::Jsonl).expect_err("nothing usable");
        assert!(
            err.to_string().contains("none of its 2 entries is usable"),
            "{err}"
        );
        assert!(err.to_string().contains("bad.jsonl:1"), "{err}");
        let err = Dataset::load(&path, DatasetFormat::ShareGpt).expect_err("not an array");
        assert!(err.to_string().contains("is not a ShareGPT file"), "{err}");
        let err = Dataset::load(&dir.path().join("missing.json"), DatasetFormat::Jsonl)
            .expect_err("missing");
        assert!(err.to_string().contains("cannot read dataset"), "{err}");
    }
}
