//! The simulated engine's batch scheduler: continuous batching on a simulated GPU.
//!
//! One task per engine. Each iteration admits waiting requests up to `max_batch`, takes
//! `(decode_step_us + decode_step_us_per_seq × batch + prefill_us_per_token × new prompt tokens)
//! × gpu slowdown`, then emits one token to every running sequence. A new sequence's first
//! token comes at the end of the step that prefilled it; of its prompt, only the tokens its
//! prefix cache does not hold are prefilled. A finished answer's blocks are kept in the
//! cache, so a conversation's next turn, which carries it, finds them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use multitenant::config::SimTiming;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sim_gpu::SimGpu;
use super::sim_prefix_cache::{CacheCounters, PrefixCache};

/// A request handed to the scheduler.
pub struct Admission {
    /// Prompt length in (simulated) tokens.
    pub prompt_tokens: u32,
    /// Its prompt's prefix-cache block keys ([`super::sim_prefix_cache::block_keys`]).
    pub blocks: Vec<u64>,
    /// The blocks its answer completes ([`super::sim_prefix_cache::sequence_keys`]), kept in
    /// the prefix cache once the answer is written.
    pub answer_blocks: Vec<u64>,
    /// Tokens to generate.
    pub output_tokens: u32,
    /// Receives the instant each token is generated; closing it ends the sequence.
    pub tokens: mpsc::UnboundedSender<Instant>,
}

struct Running {
    remaining: u32,
    tokens: mpsc::UnboundedSender<Instant>,
    answer_blocks: Vec<u64>,
}

/// Runs the scheduler until `cancel` fires or every admission sender is gone, counting its
/// prefix cache's lookups into `cache_counters`.
pub async fn run(
    timing: SimTiming,
    gpu: Arc<SimGpu>,
    mut admissions: mpsc::UnboundedReceiver<Admission>,
    cache_counters: Arc<CacheCounters>,
    cancel: CancellationToken,
) {
    let mut cache = PrefixCache::new(timing.prefix_cache_tokens);
    let mut waiting: VecDeque<Admission> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut busy = false;
    loop {
        if running.is_empty() && waiting.is_empty() {
            if busy {
                gpu.leave_busy();
                busy = false;
            }
            tokio::select! {
                next = admissions.recv() => match next {
                    Some(a) => waiting.push_back(a),
                    None => return,
                },
                () = cancel.cancelled() => return,
            }
        }
        while let Ok(a) = admissions.try_recv() {
            waiting.push_back(a);
        }
        let mut prefill_tokens = 0u64;
        while running.len() < timing.max_batch as usize {
            let Some(a) = waiting.pop_front() else { break };
            let cached = cache.admit(&a.blocks, a.prompt_tokens, &cache_counters);
            prefill_tokens += u64::from(a.prompt_tokens - cached);
            running.push(Running {
                remaining: a.output_tokens,
                tokens: a.tokens,
                answer_blocks: a.answer_blocks,
            });
        }
        if !busy {
            gpu.enter_busy();
            busy = true;
        }
        let step_us = (timing.decode_step_us
            + timing.decode_step_us_per_seq * running.len() as f64
            + timing.prefill_us_per_token * prefill_tokens as f64)
            * gpu.slowdown_factor();
        let step_end = tokio::time::Instant::now() + Duration::from_secs_f64(step_us / 1e6);
        tokio::select! {
            () = tokio::time::sleep_until(step_end) => {}
            () = cancel.cancelled() => break,
        }
        let now = Instant::now();
        running.retain_mut(|seq| {
            // A closed receiver means the client went away: free the slot, as an engine would.
            if seq.tokens.send(now).is_err() {
                return false;
            }
            seq.remaining -= 1;
            if seq.remaining == 0 {
                cache.keep_answer(&seq.answer_blocks);
            }
            seq.remaining > 0
        });
    }
    if busy {
        gpu.leave_busy();
    }
}
