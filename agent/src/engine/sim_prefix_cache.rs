//! The simulated engine's prefix cache, modelled on vLLM's automatic prefix caching: a prompt
//! is cut into full blocks of [`SIM_BLOCK_TOKENS`] words, each block keyed by a hash of the
//! whole prompt up to its end (so a block is shared only by prompts that agree on everything
//! before it), and a new prompt is served from cache for its longest run of leading blocks
//! held. The last token of a prompt is always computed, as in vLLM. Blocks are evicted least
//! recently used first. Queries and hits are counted in tokens, as vLLM's
//! `vllm:prefix_cache_queries` and `vllm:prefix_cache_hits` counters are. As in vLLM, whose
//! block hashes include the LoRA adapter, a block is shared only among requests to the same
//! adapter (or among requests to the base model).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use multitenant::config::SIM_BLOCK_TOKENS;

/// The block keys of `text`: one per full block of words, each a hash of every word up to
/// the block's end.
#[cfg(test)]
pub fn block_keys(text: &str) -> Vec<u64> {
    sequence_keys(text, 0, None).0
}

/// The block keys of `text` followed by an answer of `answer_tokens` tokens as the engine
/// writes them (`tok1 tok2 …`): those of the prompt, and those that the answer completes.
/// A conversation's next turn begins with the prompt and the answer, so an engine that keeps
/// the blocks of what it generated, as vLLM does, serves them from cache. Requests to LoRA
/// `adapter` (its index in the engine) get keys of their own.
pub fn sequence_keys(text: &str, answer_tokens: u32, adapter: Option<u32>) -> (Vec<u64>, Vec<u64>) {
    let mut hasher = BlockHasher::for_adapter(adapter);
    let prompt: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| hasher.push(w))
        .collect();
    let mut answer = Vec::new();
    // One buffer for every word: this runs for each request the engine admits.
    let mut word = String::with_capacity(16);
    for i in 1..=answer_tokens {
        word.clear();
        let _ = write!(word, "tok{i}");
        answer.extend(hasher.push(&word));
    }
    (prompt, answer)
}

/// FNV-1a over the words and the spaces between them, carried from block to block.
struct BlockHasher {
    hash: u64,
    words: usize,
}

impl Default for BlockHasher {
    fn default() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            words: 0,
        }
    }
}

impl BlockHasher {
    /// A hasher whose keys belong to `adapter` alone (none: the base model's keys).
    fn for_adapter(adapter: Option<u32>) -> Self {
        let mut hasher = Self::default();
        if let Some(adapter) = adapter {
            for b in format!("\u{0}lora{adapter}\u{0}").bytes() {
                hasher.hash = (hasher.hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        hasher
    }

    /// Takes the next word; returns the key of the block it completes, if it completes one.
    fn push(&mut self, word: &str) -> Option<u64> {
        for b in word.bytes().chain(std::iter::once(b' ')) {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.words += 1;
        self.words
            .is_multiple_of(SIM_BLOCK_TOKENS as usize)
            .then_some(self.hash)
    }
}

/// Queries and hits so far, in tokens, read by `/metrics`.
#[derive(Debug, Default)]
pub struct CacheCounters {
    queries: AtomicU64,
    hits: AtomicU64,
}

impl CacheCounters {
    /// (prompt tokens looked up, of those served from cache).
    pub fn read(&self) -> (u64, u64) {
        (
            self.queries.load(Ordering::Relaxed),
            self.hits.load(Ordering::Relaxed),
        )
    }
}

/// Blocks held, most recently used last.
pub struct PrefixCache {
    capacity_blocks: usize,
    tick: u64,
    used_at: HashMap<u64, u64>,
    by_use: BTreeMap<u64, u64>,
}

impl PrefixCache {
    /// A cache of `capacity_tokens` (whole blocks; 0: no cache).
    pub fn new(capacity_tokens: u64) -> Self {
        Self {
            capacity_blocks: usize::try_from(capacity_tokens / u64::from(SIM_BLOCK_TOKENS))
                .unwrap_or(usize::MAX),
            tick: 0,
            used_at: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    /// Admits a prompt of `prompt_tokens` whose full blocks are `keys`: returns how many of
    /// its tokens are served from cache, counts the lookup into `counters`, and keeps its
    /// blocks as the most recently used. Without a cache nothing is looked up or counted.
    pub fn admit(&mut self, keys: &[u64], prompt_tokens: u32, counters: &CacheCounters) -> u32 {
        let held = keys
            .iter()
            .take_while(|k| self.used_at.contains_key(k))
            .count();
        if self.capacity_blocks == 0 {
            return 0;
        }
        let cached = (held as u64 * u64::from(SIM_BLOCK_TOKENS))
            .min(u64::from(prompt_tokens.saturating_sub(1))) as u32;
        counters
            .queries
            .fetch_add(u64::from(prompt_tokens), Ordering::Relaxed);
        counters
            .hits
            .fetch_add(u64::from(cached), Ordering::Relaxed);
        // Last block first, so a prompt's first block is its most recently used and goes last:
        // only a leading run of blocks can hit, and a prompt larger than the cache keeps its
        // head (vLLM evicts from the tail of a prompt too).
        self.keep(keys);
        cached
    }

    /// Keeps the blocks an answer completed (`keys`, in order) once it is written, as the most
    /// recently used; nothing without a cache.
    pub fn keep_answer(&mut self, keys: &[u64]) {
        if self.capacity_blocks > 0 {
            self.keep(keys);
        }
    }

    /// Marks `keys` used now, the first of them last, and evicts past capacity.
    fn keep(&mut self, keys: &[u64]) {
        for &key in keys.iter().rev() {
            self.tick += 1;
            if let Some(old) = self.used_at.insert(key, self.tick) {
                self.by_use.remove(&old);
            }
            self.by_use.insert(self.tick, key);
        }
        while self.used_at.len() > self.capacity_blocks {
            let Some((_, key)) = self.by_use.pop_first() else {
                break;
            };
            self.used_at.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, tag: &str) -> String {
        (0..n)
            .map(|i| format!("{tag}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_prompt_is_served_its_longest_cached_run_of_leading_blocks() {
        let counters = CacheCounters::default();
        let mut cache = PrefixCache::new(1_000);
        let base = words(40, "w");
        // 40 words: two full blocks, nothing cached yet.
        assert_eq!(cache.admit(&block_keys(&base), 40, &counters), 0);
        // The same 40 words and 10 more: both blocks are held (32 tokens).
        let longer = format!("{base} {}", words(10, "x"));
        assert_eq!(cache.admit(&block_keys(&longer), 50, &counters), 32);
        // The whole prompt cached but its last token.
        let exact = words(32, "w");
        assert_eq!(cache.admit(&block_keys(&exact), 32, &counters), 31);
        // A different first word shares nothing after it either.
        let other = format!("z {}", &base[3..]);
        assert_eq!(cache.admit(&block_keys(&other), 40, &counters), 0);
        assert_eq!(counters.read(), (40 + 50 + 32 + 40, 32 + 31));
    }

    #[test]
    fn the_least_recently_used_blocks_go_first_and_a_zero_cache_holds_none() {
        let counters = CacheCounters::default();
        // Room for two blocks.
        let mut cache = PrefixCache::new(32);
        let (a, b, c) = (words(16, "a"), words(16, "b"), words(16, "c"));
        for p in [&a, &b] {
            cache.admit(&block_keys(p), 17, &counters);
        }
        assert_eq!(cache.admit(&block_keys(&a), 17, &counters), 16, "a is held");
        // c evicts b, used longer ago than a.
        cache.admit(&block_keys(&c), 17, &counters);
        assert_eq!(
            cache.admit(&block_keys(&b), 17, &counters),
            0,
            "b was evicted"
        );
        let before = counters.read();
        let mut none = PrefixCache::new(0);
        none.admit(&block_keys(&a), 17, &counters);
        assert_eq!(none.admit(&block_keys(&a), 17, &counters), 0);
        assert_eq!(counters.read(), before, "no cache: no lookups to count");
    }

    #[test]
    fn a_kept_answer_serves_the_next_turn_that_carries_it() {
        let counters = CacheCounters::default();
        let mut cache = PrefixCache::new(10_000);
        let question = words(20, "q");
        let (prompt, answer) = sequence_keys(&question, 28, None);
        // 20 + 28 words: three full blocks, the first of the prompt alone.
        assert_eq!((prompt.len(), answer.len()), (1, 2));
        cache.admit(&prompt, 20, &counters);
        let answered: Vec<String> = (1..=28).map(|i| format!("tok{i}")).collect();
        let next = format!("{question} {} {}", answered.join(" "), words(10, "n"));
        assert_eq!(
            cache.admit(&block_keys(&next), 58, &counters),
            16,
            "before the answer is kept, only the prompt's block"
        );
        cache.keep_answer(&answer);
        assert_eq!(cache.admit(&block_keys(&next), 58, &counters), 48);
        assert_eq!(block_keys(&next)[..3], [prompt, answer].concat()[..]);
    }

    #[test]
    fn an_adapter_shares_blocks_only_with_its_own_requests() {
        let counters = CacheCounters::default();
        let mut cache = PrefixCache::new(10_000);
        let prompt = words(40, "p");
        let keys = |adapter| sequence_keys(&prompt, 0, adapter).0;
        assert_eq!(cache.admit(&keys(Some(0)), 40, &counters), 0);
        assert_eq!(cache.admit(&keys(Some(0)), 40, &counters), 32);
        assert_eq!(
            cache.admit(&keys(Some(1)), 40, &counters),
            0,
            "another adapter"
        );
        assert_eq!(cache.admit(&keys(None), 40, &counters), 0, "the base model");
        assert_eq!(cache.admit(&keys(None), 40, &counters), 32);
    }

    #[test]
    fn a_prompt_larger_than_the_cache_keeps_its_head() {
        let counters = CacheCounters::default();
        // Room for two blocks; the prompt has four.
        let mut cache = PrefixCache::new(32);
        let long = words(64, "w");
        cache.admit(&block_keys(&long), 64, &counters);
        assert_eq!(cache.admit(&block_keys(&long), 64, &counters), 32);
    }
}
