//! Request traces: when each request of a recorded workload was sent, and its prompt and
//! output lengths, read from the formats public traces come in, for replay.
//!
//! A trace is read whole, once per run (a record is a few dozen bytes). Rows that cannot be
//! used are skipped, each counted and the first [`MAX_MESSAGES`] named by `file:line`; a
//! zero output length (a failed request in BurstGPT) is skipped and counted apart. Records out
//! of time order are sorted, and the trace says so. The replay window starts `start` into the
//! trace and holds at most `limit` records; times are kept relative to the window's start,
//! unscaled.

mod formats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tokens per `hash_ids` block (Mooncake's block size): records that share a block id share
/// that block's prompt text.
pub const HASH_BLOCK_TOKENS: u32 = 512;
/// Skipped rows named one by one; the rest are only counted.
pub const MAX_MESSAGES: usize = 20;
/// Longest prompt or output a record may ask for, in tokens.
pub const MAX_RECORD_TOKENS: u64 = 1_000_000;
/// Largest time a row may give, in ns either side of zero (about 146 years): past it, a time
/// is skipped as out of range, and no arithmetic on times can overflow.
const MAX_TIME_NS: i128 = 1 << 62;

/// Which format a trace file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// Mooncake's JSONL: `timestamp` (ms), `input_length`, `output_length`, `hash_ids`.
    Mooncake,
    /// The Azure LLM inference traces (2023, 2024), CSV: `TIMESTAMP` (a date and time),
    /// `ContextTokens`, `GeneratedTokens`.
    Azure,
    /// BurstGPT's CSV: `Timestamp` (s), `Model`, `Request tokens`, `Response tokens`,
    /// `Total tokens`, `Log Type`.
    BurstGpt,
    /// Ours, JSONL: `time_ms`, `prompt_tokens`, `output_tokens`, optional `hash_ids`, and any
    /// other fields a `tenant_map` may route by.
    Jsonl,
}

impl TraceFormat {
    /// Every format, by its config name.
    pub const ALL: [(&'static str, TraceFormat); 4] = [
        ("mooncake", TraceFormat::Mooncake),
        ("azure", TraceFormat::Azure),
        ("burstgpt", TraceFormat::BurstGpt),
        ("jsonl", TraceFormat::Jsonl),
    ];

    /// The format called `name` in a config.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// Its config name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }
}

/// How the records of one trace are shared out among tenants.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantMap {
    /// The column (CSV) or field (JSONL) whose value routes a record.
    pub column: String,
    /// How a value picks its tenant.
    pub route: Route,
}

/// How a [`TenantMap`]'s column value picks a tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Each listed value to its tenant; a value not listed is replayed to no one.
    Values(BTreeMap<String, String>),
    /// A hash of the value picks one of these tenants (a conversation id keeps its turns on
    /// one tenant).
    Hash(Vec<String>),
}

impl TenantMap {
    /// The tenant a record whose column holds `value` goes to.
    pub fn tenant_of(&self, value: &str) -> Option<&str> {
        match &self.route {
            Route::Values(map) => map.get(value).map(String::as_str),
            Route::Hash(tenants) => {
                // FNV-1a, stable across runs, machines and versions (unlike std's hasher),
                // then SplitMix64's finaliser: FNV's low bits alone follow the last byte's.
                let fnv = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
                });
                let mut hash = (fnv ^ (fnv >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                hash ^= hash >> 31;
                let n = tenants.len() as u64;
                (n > 0).then(|| tenants[(hash % n) as usize].as_str())
            }
        }
    }

    /// Every tenant it can route to.
    pub fn tenants(&self) -> Vec<&str> {
        let mut names: Vec<&str> = match &self.route {
            Route::Values(map) => map.values().map(String::as_str).collect(),
            Route::Hash(tenants) => tenants.iter().map(String::as_str).collect(),
        };
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// One request of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRecord {
    /// When it was sent, from the start of the replay window, unscaled.
    pub at_ns: u64,
    /// Prompt length in tokens, ≥ 1.
    pub prompt_tokens: u32,
    /// Output length in tokens, ≥ 1.
    pub output_tokens: u32,
    /// Ids of its prompt's [`HASH_BLOCK_TOKENS`]-token blocks, in order (empty: none given).
    pub hash_ids: Vec<u64>,
    /// The value of the tenant map's column, when the trace is read with one.
    pub key: Option<String>,
    /// Its line in the file (1-based).
    pub line: u64,
}

/// What to read of a trace file.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceWindow {
    /// Skip the records of the trace's first `start` (from its first record).
    pub start: Duration,
    /// Keep at most this many records after `start`.
    pub limit: Option<u64>,
    /// The column routing records to tenants, read into [`TraceRecord::key`].
    pub column: Option<String>,
}

/// The usable records of a trace window, and what was left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Records of the window, in time order.
    pub records: Vec<TraceRecord>,
    /// Rows that could not be used.
    pub skipped_rows: u64,
    /// The first [`MAX_MESSAGES`] of them, each `file:line: why`.
    pub skipped: Vec<String>,
    /// Records with a zero output length (failed requests), skipped.
    pub zero_output: u64,
    /// Records before the window's start, or past its limit.
    pub outside_window: u64,
    /// The first line whose time is earlier than the line before it, when the file was not in
    /// time order (its records are then sorted).
    pub unsorted_at: Option<u64>,
}

/// A trace that cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("cannot read trace {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A CSV trace without a column its format needs (or the tenant map names).
    #[error("{path}: no column {column:?} (its columns: {found}); is it a {format} trace?")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column looked for.
        column: String,
        /// The header's columns.
        found: String,
        /// The format it was read as.
        format: &'static str,
    },
    /// No record is left to replay.
    #[error("{path}: no record to replay ({why})")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What left none.
        why: String,
    },
}

/// A row as a format reads it: its absolute time and lengths, before the window.
struct Row {
    time_ns: i128,
    prompt_tokens: u64,
    output_tokens: u64,
    hash_ids: Vec<u64>,
    key: Option<String>,
    line: u64,
}

/// Collects a format's rows and the rows it could not use.
struct Rows {
    path: PathBuf,
    rows: Vec<Row>,
    skipped_rows: u64,
    skipped: Vec<String>,
}

impl Rows {
    fn skip(&mut self, line: u64, why: impl std::fmt::Display) {
        self.skipped_rows += 1;
        if self.skipped.len() < MAX_MESSAGES {
            self.skipped
                .push(format!("{}:{line}: {why}", self.path.display()));
        }
    }
}

impl Trace {
    /// Reads `window` of the trace at `path` in `format`.
    pub fn load(
        path: &Path,
        format: TraceFormat,
        window: &TraceWindow,
    ) -> Result<Self, TraceError> {
        let file = std::fs::File::open(path).map_err(|e| TraceError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut rows = Rows {
            path: path.to_owned(),
            rows: Vec::new(),
            skipped_rows: 0,
            skipped: Vec::new(),
        };
        let reader = std::io::BufReader::new(file);
        let column = window.column.as_deref();
        match format {
            TraceFormat::Mooncake | TraceFormat::Jsonl => {
                formats::read_jsonl(reader, format, column, &mut rows)?;
            }
            TraceFormat::Azure | TraceFormat::BurstGpt => {
                formats::read_csv(reader, format, column, &mut rows)?;
            }
        }
        Self::from_rows(rows, window)
    }

    fn from_rows(mut rows: Rows, window: &TraceWindow) -> Result<Self, TraceError> {
        let seen = rows.rows.len() as u64 + rows.skipped_rows;
        let unsorted_at = rows
            .rows
            .windows(2)
            .find(|w| w[1].time_ns < w[0].time_ns)
            .map(|w| w[1].line);
        // Stable: records sent at the same instant keep their file order.
        rows.rows.sort_by_key(|r| r.time_ns);
        let before = rows.rows.len();
        rows.rows.retain(|r| r.output_tokens > 0);
        let zero_output = (before - rows.rows.len()) as u64;
        let Some(first) = rows.rows.first().map(|r| r.time_ns) else {
            return Err(TraceError::Empty {
                path: rows.path,
                why: format!(
                    "{seen} rows: {} unusable, {zero_output} with a zero output length",
                    rows.skipped_rows
                ),
            });
        };
        let origin = first + i128::try_from(window.start.as_nanos()).unwrap_or(i128::MAX);
        let limit = window.limit.unwrap_or(u64::MAX);
        let mut records = Vec::new();
        let mut outside_window = 0u64;
        for row in rows.rows {
            if row.time_ns < origin || records.len() as u64 >= limit {
                outside_window += 1;
                continue;
            }
            records.push(TraceRecord {
                at_ns: u64::try_from(row.time_ns - origin).unwrap_or(u64::MAX),
                // Rows are checked to be in 1..=MAX_RECORD_TOKENS.
                prompt_tokens: u32::try_from(row.prompt_tokens).unwrap_or(u32::MAX),
                output_tokens: u32::try_from(row.output_tokens).unwrap_or(u32::MAX),
                hash_ids: row.hash_ids,
                key: row.key,
                line: row.line,
            });
        }
        if records.is_empty() {
            return Err(TraceError::Empty {
                path: rows.path,
                why: format!(
                    "all {outside_window} usable records are before start {}",
                    humantime::format_duration(window.start)
                ),
            });
        }
        Ok(Self {
            records,
            skipped_rows: rows.skipped_rows,
            skipped: rows.skipped,
            zero_output,
            outside_window,
            unsorted_at,
        })
    }

    /// The time from the window's start to its last record, unscaled.
    pub fn span(&self) -> Duration {
        Duration::from_nanos(self.records.last().map_or(0, |r| r.at_ns))
    }

    /// The records `tenant` replays: those `map` routes to it, or all without a map.
    pub fn records_of(&self, tenant: &str, map: Option<&TenantMap>) -> Vec<TraceRecord> {
        self.records
            .iter()
            .filter(|r| match map {
                None => true,
                Some(map) => r.key.as_deref().and_then(|k| map.tenant_of(k)) == Some(tenant),
            })
            .cloned()
            .collect()
    }

    /// One line per thing left out or changed, for the terminal: skipped rows (the first
    /// named), zero outputs, a file out of time order.
    pub fn notes(&self, path: &Path) -> Vec<String> {
        let name = path.display();
        let mut notes = Vec::new();
        if self.skipped_rows > 0 {
            notes.push(format!(
                "trace {name}: {} rows skipped: {}{}",
                self.skipped_rows,
                self.skipped.join("; "),
                if self.skipped_rows > self.skipped.len() as u64 {
                    "; …"
                } else {
                    ""
                }
            ));
        }
        if self.zero_output > 0 {
            notes.push(format!(
                "trace {name}: {} records with a zero output length (failed requests) skipped",
                self.zero_output
            ));
        }
        if let Some(line) = self.unsorted_at {
            notes.push(format!(
                "trace {name}: timestamps are not in order (line {line} is earlier than the line before it); replayed sorted by time"
            ));
        }
        notes
    }
}

#[cfg(test)]
mod tests;
