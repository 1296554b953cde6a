//! A tenant's part of a trace: its records' send times and their prompts.
//!
//! A record's prompt is built from its `hash_ids`: block `b` is always the same
//! [`HASH_BLOCK_TOKENS`] words, made from `b` alone, so records that share a block share its
//! text and an engine's prefix cache sees the reuse the trace had. The last block is cut to
//! the record's length. Tokens past the blocks, and whole prompts of records without
//! `hash_ids`, are words unique to the request, so no cache can serve them. A prompt is in
//! words; an engine that tokenizes differently reports its count in `usage`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use multitenant::config::TraceData;
use multitenant::trace::{Trace, TraceError, TraceRecord, HASH_BLOCK_TOKENS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::prompts::WORDS;

/// The records one tenant replays.
pub struct TenantReplay {
    path: PathBuf,
    records: Vec<TraceRecord>,
    times: Arc<[u64]>,
}

/// Why a tenant has nothing to replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The trace cannot be read.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// Its tenant map routes no record of the window to this tenant.
    #[error("{path}: its tenant map routes none of the window's {records} records to {tenant}")]
    NoRecords {
        /// The trace.
        path: PathBuf,
        /// The window's records.
        records: usize,
        /// The tenant.
        tenant: String,
    },
}

impl TenantReplay {
    /// Reads `data`'s trace and keeps `tenant`'s records; also gives the trace's notes
    /// (skipped rows, zero outputs, a file out of order).
    pub fn load(data: &TraceData, tenant: &str) -> Result<(Self, Vec<String>), ReplayError> {
        let trace = Trace::load(&data.path, data.format, &data.window)?;
        let records = trace.records_of(tenant, data.tenant_map.as_ref());
        if records.is_empty() {
            return Err(ReplayError::NoRecords {
                path: data.path.clone(),
                records: trace.records.len(),
                tenant: tenant.to_owned(),
            });
        }
        let times = records.iter().map(|r| r.at_ns).collect();
        Ok((
            Self {
                path: data.path.clone(),
                records,
                times,
            },
            trace.notes(&data.path),
        ))
    }

    /// Each record's time from the window's start, unscaled, in order.
    pub fn times(&self) -> Arc<[u64]> {
        self.times.clone()
    }

    /// The record request `index` sends (the k-th arrival sends the k-th record), its text,
    /// and where it came from (`file:line`).
    pub fn prompt(&self, index: u64, seed: u64) -> (&TraceRecord, String, String) {
        let record = &self.records[(index % self.records.len() as u64) as usize];
        let text = prompt_text(record, index, seed);
        let origin = format!("{}:{}", display(&self.path), record.line);
        (record, text, origin)
    }
}

fn display(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// The prompt of `record` sent as request `index`: its shared blocks, then words of its own.
fn prompt_text(record: &TraceRecord, index: u64, seed: u64) -> String {
    let mut words: Vec<&str> = Vec::with_capacity(record.prompt_tokens as usize);
    let mut left = record.prompt_tokens;
    for &block in &record.hash_ids {
        if left == 0 {
            break;
        }
        let take = left.min(HASH_BLOCK_TOKENS);
        let mut rng = StdRng::seed_from_u64(block ^ 0x6a09_e667_f3bc_c908);
        words.extend((0..take).map(|_| WORDS[rng.random_range(0..WORDS.len())]));
        left -= take;
    }
    let mut text = words.join(" ");
    if left > 0 {
        let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // The first word of its own is unique to the request.
        let own = format!("r{index:x}{:08x}", rng.random::<u32>());
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&own);
        for _ in 1..left {
            text.push(' ');
            text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prompt_tokens: u32, hash_ids: Vec<u64>) -> TraceRecord {
        TraceRecord {
            at_ns: 0,
            prompt_tokens,
            output_tokens: 1,
            hash_ids,
            key: None,
            line: 1,
        }
    }

    #[test]
    fn records_that_share_blocks_share_their_text_and_nothing_else() {
        let a = prompt_text(&record(1100, vec![7, 8, 9]), 0, 1);
        let b = prompt_text(&record(600, vec![7, 8]), 1, 1);
        let c = prompt_text(&record(700, vec![7, 3]), 2, 1);
        let words = |t: &str| t.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let (a, b, c) = (words(&a), words(&b), words(&c));
        assert_eq!((a.len(), b.len(), c.len()), (1100, 600, 700));
        // Blocks 7 and 8 (b's first 600 words: all of 7, 88 of 8) are a's too.
        assert_eq!(a[..600], b[..]);
        assert_eq!(a[..512], c[..512], "block 7 is shared");
        assert_ne!(a[512..700], c[512..700], "block 8 is not block 3");
    }

    #[test]
    fn prompts_past_their_blocks_or_without_any_are_unique_to_the_request() {
        let plain = record(40, Vec::new());
        let (x, y) = (prompt_text(&plain, 0, 5), prompt_text(&plain, 1, 5));
        assert_eq!(x.split(' ').count(), 40);
        assert_ne!(x.split(' ').next(), y.split(' ').next());
        // Two records with one block and more tokens than it holds: the same first 512 words,
        // then a word of each request's own.
        let long = record(520, vec![1]);
        let (p, q) = (prompt_text(&long, 3, 5), prompt_text(&long, 4, 5));
        let (p, q): (Vec<&str>, Vec<&str>) = (p.split(' ').collect(), q.split(' ').collect());
        assert_eq!(p.len(), 520);
        assert_eq!(p[..512], q[..512]);
        assert_ne!(p[512], q[512]);
    }
}
