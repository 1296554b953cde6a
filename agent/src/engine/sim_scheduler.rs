//! The simulated engine's batch scheduler: continuous batching on a simulated GPU.
//!
//! One task per engine. Each iteration admits waiting requests up to `max_batch`, takes
//! `(decode_step_us + decode_step_us_per_seq × batch + prefill_us_per_token × new prompt
//! tokens + lora_step_us_per_adapter × distinct adapters running) × gpu slowdown`, then emits
//! one token to every running sequence. A new sequence's first token comes at the end of the
//! step that prefilled it; of its prompt, only the tokens its prefix cache does not hold are
//! prefilled. A finished answer's blocks are kept in the cache, so a conversation's next turn,
//! which carries it, finds them.
//!
//! A request whose client went away is aborted, waiting or running, as vLLM aborts it when the
//! HTTP request is cancelled (`vllm/v1/engine/async_llm.py`, `generate`: on `CancelledError`
//! or `GeneratorExit` it calls `abort`, which removes the request from the engine core's queue
//! and batch; vLLM 0.34.0 lines 818-826). It costs no step: an overloaded probe's leftovers
//! never reach the next probe's batch.
//!
//! LoRA, as vLLM schedules it: at most `max_loras` distinct adapters run in one batch. A
//! waiting request for another adapter is passed over (it keeps its place at the head of the
//! queue) while requests behind it that fit are admitted, until one of the running adapters
//! has no sequence left.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The LoRA adapter it asks for (its index in the engine); `None`: the base model.
    pub adapter: Option<u32>,
    /// Receives the instant each token is generated; closing it ends the sequence.
    pub tokens: mpsc::UnboundedSender<Instant>,
}

/// How many requests run in the batch and wait for it, as vLLM's `vllm:num_requests_running`
/// and `vllm:num_requests_waiting` gauges count them; updated every step.
#[derive(Debug, Default)]
pub struct QueueGauges {
    running: AtomicU64,
    waiting: AtomicU64,
}

impl QueueGauges {
    /// (running, waiting).
    pub fn read(&self) -> (u64, u64) {
        (
            self.running.load(Ordering::Relaxed),
            self.waiting.load(Ordering::Relaxed),
        )
    }

    fn publish(&self, running: usize, waiting: usize) {
        self.running.store(running as u64, Ordering::Relaxed);
        self.waiting.store(waiting as u64, Ordering::Relaxed);
    }
}

/// What the scheduler counts for `/metrics`.
pub struct SchedulerGauges {
    /// Its prefix cache's lookups.
    pub cache: Arc<CacheCounters>,
    /// Its batch and queue.
    pub queue: Arc<QueueGauges>,
}

struct Running {
    adapter: Option<u32>,
    remaining: u32,
    tokens: mpsc::UnboundedSender<Instant>,
    answer_blocks: Vec<u64>,
}

/// The adapters of the running sequences, each once.
fn running_adapters(running: &[Running]) -> Vec<u32> {
    let mut adapters: Vec<u32> = running.iter().filter_map(|r| r.adapter).collect();
    adapters.sort_unstable();
    adapters.dedup();
    adapters
}

/// Moves waiting requests into `running`, first come first served, up to `max_batch`
/// sequences and `max_loras` distinct adapters; a request whose adapter would be one too
/// many stays waiting, in its place. Returns the prompt tokens to prefill.
fn admit(
    waiting: &mut VecDeque<Admission>,
    running: &mut Vec<Running>,
    max_batch: usize,
    max_loras: usize,
    cache: &mut PrefixCache,
    counters: &CacheCounters,
) -> u64 {
    let mut adapters = running_adapters(running);
    let mut prefill_tokens = 0u64;
    let mut passed_over = VecDeque::new();
    while running.len() < max_batch {
        let Some(a) = waiting.pop_front() else { break };
        if let Some(adapter) = a.adapter {
            if !adapters.contains(&adapter) {
                if adapters.len() >= max_loras {
                    passed_over.push_back(a);
                    continue;
                }
                adapters.push(adapter);
            }
        }
        let cached = cache.admit(&a.blocks, a.prompt_tokens, counters);
        prefill_tokens += u64::from(a.prompt_tokens - cached);
        running.push(Running {
            adapter: a.adapter,
            remaining: a.output_tokens,
            tokens: a.tokens,
            answer_blocks: a.answer_blocks,
        });
    }
    // Those passed over go back ahead of the rest, in their order.
    while let Some(a) = passed_over.pop_back() {
        waiting.push_front(a);
    }
    prefill_tokens
}

/// Runs the scheduler until `cancel` fires or every admission sender is gone, counting its
/// prefix cache's lookups and its batch and queue into `gauges`. `max_loras` is the number of
/// distinct adapters a batch may hold.
pub async fn run(
    timing: SimTiming,
    max_loras: usize,
    gpu: Arc<SimGpu>,
    mut admissions: mpsc::UnboundedReceiver<Admission>,
    gauges: SchedulerGauges,
    cancel: CancellationToken,
) {
    let cache_counters = gauges.cache;
    let mut cache = PrefixCache::new(timing.prefix_cache_tokens);
    let mut waiting: VecDeque<Admission> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut busy = false;
    loop {
        if running.is_empty() && waiting.is_empty() {
            gauges.queue.publish(0, 0);
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
        waiting.retain(|a| !a.tokens.is_closed());
        running.retain(|seq| !seq.tokens.is_closed());
        if running.is_empty() && waiting.is_empty() {
            continue;
        }
        let prefill_tokens = admit(
            &mut waiting,
            &mut running,
            timing.max_batch as usize,
            max_loras,
            &mut cache,
            &cache_counters,
        );
        gauges.queue.publish(running.len(), waiting.len());
        if !busy {
            gpu.enter_busy();
            busy = true;
        }
        let step_us = (timing.decode_step_us
            + timing.decode_step_us_per_seq * running.len() as f64
            + timing.prefill_us_per_token * prefill_tokens as f64
            + timing.lora_step_us_per_adapter * running_adapters(&running).len() as f64)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(adapter: Option<u32>) -> Admission {
        Admission {
            prompt_tokens: 8,
            blocks: Vec::new(),
            answer_blocks: Vec::new(),
            output_tokens: 4,
            adapter,
            // The receiver is dropped: admission never sends.
            tokens: mpsc::unbounded_channel().0,
        }
    }

    fn adapters(queue: &VecDeque<Admission>) -> Vec<Option<u32>> {
        queue.iter().map(|a| a.adapter).collect()
    }

    #[test]
    fn a_batch_holds_at_most_max_loras_adapters_and_those_passed_over_keep_their_place() {
        let counters = CacheCounters::default();
        let mut cache = PrefixCache::new(0);
        let mut waiting: VecDeque<Admission> = [Some(0), Some(1), Some(0), None, Some(2)]
            .into_iter()
            .map(request)
            .collect();
        let mut running = Vec::new();
        let prefill = admit(&mut waiting, &mut running, 64, 1, &mut cache, &counters);
        let admitted: Vec<Option<u32>> = running.iter().map(|r| r.adapter).collect();
        assert_eq!(
            admitted,
            [Some(0), Some(0), None],
            "adapter 0 and the base model"
        );
        assert_eq!(prefill, 24);
        assert_eq!(adapters(&waiting), [Some(1), Some(2)], "in their order");
        assert_eq!(running_adapters(&running), [0]);

        // Once adapter 0 has no sequence left, the next adapter in line runs.
        running.retain(|r| r.adapter.is_none());
        admit(&mut waiting, &mut running, 64, 1, &mut cache, &counters);
        assert_eq!(running_adapters(&running), [1]);
        assert_eq!(adapters(&waiting), [Some(2)]);

        // With room for every adapter, nothing waits but for the batch size.
        let mut waiting: VecDeque<Admission> = [Some(0), Some(1), Some(2)]
            .into_iter()
            .map(request)
            .collect();
        let mut running = Vec::new();
        admit(&mut waiting, &mut running, 2, 3, &mut cache, &counters);
        assert_eq!(running_adapters(&running), [0, 1]);
        assert_eq!(adapters(&waiting), [Some(2)], "the batch is full");
    }
}
