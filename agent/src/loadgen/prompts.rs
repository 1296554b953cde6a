//! Synthetic prompts: seeded, unique per request, with drawn prompt and output lengths.
//!
//! Without a tokenizer, a prompt of `n` tokens is `n` words; engines that tokenize differently
//! report the true count in `usage`, which is what the events record.

use std::path::Path;

use multitenant::config::{DataSource, LengthDist, SyntheticData};
use multitenant::dataset::{Dataset, DatasetEntry, DatasetError};
use multitenant::tokens::{PromptTokenizer, TokenizerError};

use super::conversation::{Conversations, TurnOf};
use super::replay::{ReplayError, TenantReplay};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// The words synthetic prompts are made of.
pub(super) const WORDS: &[&str] = &[
    "the",
    "model",
    "serves",
    "tokens",
    "while",
    "another",
    "shares",
    "its",
    "gpu",
    "under",
    "load",
    "measure",
    "latency",
    "throughput",
    "batch",
    "prefill",
    "decode",
    "cache",
    "memory",
    "kernel",
];

/// One request's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The prompt text.
    pub text: String,
    /// Words in it.
    pub words: u32,
    /// Its tokens, when a tokenizer counted them.
    pub tokens: Option<u32>,
    /// `max_tokens` to ask for.
    pub max_tokens: u32,
    /// Where it came from: `synthetic`, or the dataset entry's `file:line` / `file[index]`.
    pub origin: String,
    /// The dataset entry's reference answer, when it has one.
    pub expected: Option<String>,
}

/// Makes the prompt of request `index` of a tenant.
pub struct PromptFactory {
    source: Source,
    tokenizer: Option<PromptTokenizer>,
    seed: u64,
}

/// Why a workload's prompts cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The dataset cannot be used.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The tokenizer cannot be used.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The trace gives this tenant nothing to replay.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

enum Source {
    Synthetic(SyntheticData),
    Dataset {
        entries: Vec<DatasetEntry>,
        /// Entry indices in the seeded order requests take them.
        order: Vec<usize>,
        output_tokens: Option<LengthDist>,
    },
    Trace(TenantReplay),
    Conversation(Box<Conversations>),
}

impl PromptFactory {
    /// The prompts of `tenant` from `data`, exact in length with `tokenizer`, from `seed`. A
    /// dataset, a trace and a tokenizer are read now; the messages say what of the file was
    /// skipped (a dataset's entries, a trace's rows), each with its place in the file.
    pub fn new(
        data: &DataSource,
        tokenizer: Option<&Path>,
        seed: u64,
        tenant: &str,
    ) -> Result<(Self, Vec<String>), PromptError> {
        let mut tokenizer = match tokenizer {
            Some(path) => Some(PromptTokenizer::load(path)?),
            None => None,
        };
        let (source, skipped) = match data {
            DataSource::Synthetic(s) => (Source::Synthetic(*s), Vec::new()),
            DataSource::Dataset(d) => {
                let dataset = Dataset::load(&d.path, d.format)?;
                let mut order: Vec<usize> = (0..dataset.entries.len()).collect();
                order.shuffle(&mut StdRng::seed_from_u64(seed));
                let source = Source::Dataset {
                    entries: dataset.entries,
                    order,
                    output_tokens: d.output_tokens,
                };
                let notes = if dataset.skipped.is_empty() {
                    Vec::new()
                } else {
                    vec![format!(
                        "{} dataset entries skipped: {}",
                        dataset.skipped.len(),
                        dataset.skipped.join("; ")
                    )]
                };
                (source, notes)
            }
            DataSource::Trace(trace) => {
                let (replay, notes) = TenantReplay::load(trace, tenant)?;
                (Source::Trace(replay), notes)
            }
            DataSource::Conversation(c) => (
                Source::Conversation(Box::new(Conversations::new(*c, tokenizer.take(), seed))),
                Vec::new(),
            ),
        };
        Ok((
            Self {
                source,
                tokenizer,
                seed,
            },
            skipped,
        ))
    }

    /// Whether request `index` keeps its response text when `keep` responses are asked for:
    /// its prompt is one of the dataset's first `keep` entries in file order (so every tenant
    /// keeps the answers to the same prompts), or, for synthetic prompts, `index < keep`.
    pub fn keeps_response(&self, index: u64, keep: u32) -> bool {
        match &self.source {
            Source::Synthetic(_) | Source::Trace(_) | Source::Conversation(_) => {
                index < u64::from(keep)
            }
            Source::Dataset { order, .. } => {
                order[(index % order.len() as u64) as usize] < keep as usize
            }
        }
    }

    /// The send times of a trace's records (unscaled, from the window's start), when the
    /// prompts replay one.
    pub fn trace_times(&self) -> Option<std::sync::Arc<[u64]>> {
        match &self.source {
            Source::Trace(replay) => Some(replay.times()),
            _ => None,
        }
    }

    /// The conversations the prompts are, when they are.
    pub fn conversations(&self) -> Option<&Conversations> {
        match &self.source {
            Source::Conversation(c) => Some(c),
            _ => None,
        }
    }

    /// The prompt of request `index`; the same index always gives the same prompt. For
    /// conversations, whose turns are asked through [`Self::conversations`], it is the first
    /// question of conversation `index`.
    pub fn prompt(&self, index: u64) -> Prompt {
        let mut rng = StdRng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match &self.source {
            Source::Conversation(c) => c.question(TurnOf {
                conversation: index,
                turn: 1,
            }),
            Source::Synthetic(data) => synthetic(data, self.tokenizer.as_ref(), index, &mut rng),
            Source::Trace(replay) => {
                let (record, text, origin) = replay.prompt(index, self.seed);
                Prompt {
                    words: record.prompt_tokens,
                    tokens: self.tokenizer.as_ref().and_then(|t| t.count(&text)),
                    text,
                    max_tokens: record.output_tokens,
                    origin,
                    expected: None,
                }
            }
            Source::Dataset {
                entries,
                order,
                output_tokens,
            } => {
                let n = order.len() as u64;
                let entry = &entries[order[(index % n) as usize]];
                // A prompt used a second time gets a tag unique to the request in front, so no
                // engine's prefix cache can serve it.
                let text = if index < n {
                    entry.prompt.clone()
                } else {
                    format!("[r{index:x}] {}", entry.prompt)
                };
                let max_tokens = entry
                    .output_tokens
                    .or_else(|| output_tokens.as_ref().map(|d| draw(d, &mut rng)))
                    .or_else(|| {
                        let answer = entry.expected.as_deref()?;
                        let length = match &self.tokenizer {
                            Some(t) => t.count(answer)?,
                            None => {
                                u32::try_from(answer.split_whitespace().count()).unwrap_or(u32::MAX)
                            }
                        };
                        Some(length.max(1))
                    })
                    .unwrap_or(1);
                Prompt {
                    words: u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX),
                    tokens: self.tokenizer.as_ref().and_then(|t| t.count(&text)),
                    text,
                    max_tokens,
                    origin: entry.origin.clone(),
                    expected: entry.expected.clone(),
                }
            }
        }
    }
}

fn synthetic(
    data: &SyntheticData,
    tokenizer: Option<&PromptTokenizer>,
    index: u64,
    rng: &mut StdRng,
) -> Prompt {
    let length = draw(&data.prompt_tokens, rng);
    let max_tokens = draw(&data.output_tokens, rng);
    // The first word is unique to the request, so no engine's prefix cache can serve it.
    let prefix = format!("r{index:x}{:08x}", rng.random::<u32>());
    let (text, words, tokens) = text_of(&prefix, length, tokenizer, rng);
    Prompt {
        text,
        words,
        tokens,
        max_tokens,
        origin: "synthetic".into(),
        expected: None,
    }
}

/// A text of `length` tokens beginning with `prefix` (the prefix's own, when longer): with a
/// tokenizer exactly, else `length` words. Returns the text, its words and its counted tokens.
pub(super) fn text_of(
    prefix: &str,
    length: u32,
    tokenizer: Option<&PromptTokenizer>,
    rng: &mut StdRng,
) -> (String, u32, Option<u32>) {
    if let Some(tokenizer) = tokenizer {
        let (text, tokens) = tokenizer.prompt(prefix, length, rng);
        let words = u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX);
        return (text, words, Some(tokens));
    }
    let mut text = prefix.to_owned();
    for _ in 1..length {
        text.push(' ');
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    (text, length.max(1), None)
}

pub(super) fn draw(dist: &LengthDist, rng: &mut StdRng) -> u32 {
    match *dist {
        LengthDist::Fixed(n) => n,
        LengthDist::Uniform { min, max } => rng.random_range(min..=max),
        LengthDist::Normal {
            mean,
            stddev,
            min,
            max,
        } => {
            let v = Normal::new(mean, stddev).map_or(mean, |n| n.sample(rng));
            (v.round().max(0.0) as u32).clamp(min, max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_have_the_drawn_lengths_and_are_unique() {
        let data = SyntheticData {
            prompt_tokens: LengthDist::Uniform { min: 5, max: 9 },
            output_tokens: LengthDist::Normal {
                mean: 20.0,
                stddev: 5.0,
                min: 10,
                max: 30,
            },
        };
        let (f, skipped) =
            PromptFactory::new(&DataSource::Synthetic(data), None, 3, "t").expect("synthetic");
        assert!(skipped.is_empty());
        let prompts: Vec<Prompt> = (0..500).map(|i| f.prompt(i)).collect();
        for p in &prompts {
            assert_eq!(p.text.split_whitespace().count() as u32, p.words);
            assert!((5..=9).contains(&p.words) && (10..=30).contains(&p.max_tokens));
        }
        let firsts: std::collections::HashSet<&str> = prompts
            .iter()
            .map(|p| p.text.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(firsts.len(), prompts.len());
        assert_eq!(f.prompt(17), prompts[17]);
    }

    #[test]
    fn dataset_prompts_are_shuffled_by_seed_and_tagged_when_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"alpha\", \"output_tokens\": 3}\n{\"prompt\": \"beta\"}\n{\"prompt\": \"gamma\"}\nbroken\n",
        )
        .expect("write");
        let data = DataSource::Dataset(multitenant::config::DatasetData {
            format: multitenant::dataset::DatasetFormat::Jsonl,
            path,
            output_tokens: Some(LengthDist::Fixed(9)),
        });
        let (f, skipped) = PromptFactory::new(&data, None, 1, "t").expect("usable");
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].contains("1 dataset entries skipped: ")
                && skipped[0].contains("p.jsonl:4: not a JSON object"),
            "{skipped:?}"
        );
        let first: Vec<Prompt> = (0..3).map(|i| f.prompt(i)).collect();
        let mut texts: Vec<&str> = first.iter().map(|p| p.text.as_str()).collect();
        texts.sort_unstable();
        assert_eq!(
            texts,
            ["alpha", "beta", "gamma"],
            "each entry once before any repeats"
        );
        for p in &first {
            let expected = if p.text == "alpha" { 3 } else { 9 };
            assert_eq!(p.max_tokens, expected, "{p:?}");
        }
        let again = f.prompt(4);
        assert!(again.text.starts_with("[r4] "), "{again:?}");
        assert_eq!(again.text[5..], f.prompt(1).text);
    }
}
