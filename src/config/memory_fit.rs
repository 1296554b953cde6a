//! Whether the vLLM servers of a shared trial can all start on one GPU.
//!
//! Each vLLM server, when it starts, checks that `gpu_memory_utilization` × the GPU's total is
//! free, and stops with "Free memory on device … is less than desired GPU memory utilization"
//! when it is not (`request_memory` in `vllm/v1/worker/utils.py`, called from `init_device` in
//! `vllm/v1/worker/gpu_worker.py`). The check runs whatever the KV cache size, and the default
//! fraction is 0.92 (`vllm/config/cache.py`). The agent starts the engines of a trial one after
//! another, so the k-th one sees the GPU less what the first k − 1 hold. Each also holds a CUDA
//! context and CUDA graphs that its fraction does not count: [`ENGINE_RESERVE_BYTES`] each.
//! docs/gpu-first-contact.md lists these figures as assumptions for hardware to confirm.

use super::accelerators::gib;
use super::VllmMemory;

/// GPU memory held back per engine for its CUDA context and CUDA graphs, which its fraction
/// does not count (a CUDA context alone takes about 0.3–0.6 GiB on a data-centre GPU).
pub const ENGINE_RESERVE_BYTES: u64 = 1 << 30;

/// The same reserve as a share of the GPU, where the GPU's size is unknown.
pub const ENGINE_RESERVE_SHARE: f64 = 0.02;

/// Of the reserve, the CUDA context an engine has already made when vLLM takes the memory
/// snapshot its check reads (`init_device`), so the starting engine does not find it free.
const CONTEXT_PART: f64 = 0.5;

/// One vLLM server of a shared trial, in the order the agent starts them.
#[derive(Debug, Clone, Copy)]
pub struct StartingEngine<'a> {
    /// The tenant whose engine it is.
    pub tenant: &'a str,
    /// How its memory is bounded.
    pub memory: VllmMemory,
}

/// The GPU the engines share: its size, when the config gives it or its accelerator's table
/// does, and how to name it.
#[derive(Debug, Clone)]
pub struct SharedGpu {
    /// Total memory, bytes.
    pub total: Option<u64>,
    /// How to name it in a problem (`one H100`).
    pub label: String,
}

/// What the walk through the engines' starts found wrong, in words; `None` when every engine
/// passes vLLM's check and all of them, with their reserves, fit on the GPU.
pub fn start_problem(engines: &[StartingEngine<'_>], gpu: &SharedGpu) -> Option<String> {
    let reserve = gpu.total.map_or(ENGINE_RESERVE_SHARE, |t| {
        ENGINE_RESERVE_BYTES as f64 / t as f64
    });
    let mut held = 0.0;
    let mut before: Vec<String> = Vec::new();
    for engine in engines {
        let free = 1.0 - held - reserve * CONTEXT_PART;
        if let Some(asked) = engine.memory.startup_share(gpu.total) {
            if asked > free + 1e-9 {
                return Some(refusal(engine, asked, free, &before, gpu));
            }
        }
        held += held_share(engine.memory, gpu.total) + reserve;
        before.push(engine.tenant.to_owned());
    }
    (held > 1.0 + 1e-9).then(|| {
        format!(
            "the vLLM servers of the shared trials ({}) hold {} of {} together with {} per engine for its CUDA context and graphs, which their fractions do not count; lower the fractions so that they sum to at most {:.2}{}",
            before.join(", "),
            share_text(held, gpu.total),
            gpu.label,
            reserve_text(gpu.total),
            1.0 - reserve * engines.len() as f64,
            size_note(gpu.total)
        )
    })
}

/// The share the engine holds once it runs, not counting its reserve: its fraction, or its KV
/// cache (a lower bound: the model's weights come on top).
fn held_share(memory: VllmMemory, total: Option<u64>) -> f64 {
    match memory {
        VllmMemory::Default => VllmMemory::VLLM_DEFAULT_FRACTION,
        VllmMemory::Fraction(f) => f,
        VllmMemory::KvCacheBytes { bytes, .. } => total.map_or(0.0, |t| bytes as f64 / t as f64),
    }
}

fn refusal(
    engine: &StartingEngine<'_>,
    asked: f64,
    free: f64,
    before: &[String],
    gpu: &SharedGpu,
) -> String {
    let what = match engine.memory {
        VllmMemory::Default => format!(
            "vLLM's default gpu_memory_utilization ({})",
            VllmMemory::VLLM_DEFAULT_FRACTION
        ),
        _ => format!("gpu_memory_fraction {asked:.2}"),
    };
    format!(
        "{tenant} would not start in this node's shared trials: the agent starts their vLLM servers one after another, and {tenant}'s checks at start that {what} of {label} is free ({asked_text}), while after {before} ({reserve} each for a CUDA context and graphs) and its own CUDA context only {free_text} is; vLLM would stop with \"Free memory on device … is less than desired GPU memory utilization\". Set engine.gpu_memory_fraction (or engine.kv_cache_memory_bytes) on every vLLM tenant so that the fractions and {reserve} per engine fit in one GPU{note}",
        tenant = engine.tenant,
        label = gpu.label,
        asked_text = share_text(asked, gpu.total),
        before = before.join(", "),
        reserve = reserve_text(gpu.total),
        free_text = share_text(free.max(0.0), gpu.total),
        note = size_note(gpu.total),
    )
}

fn share_text(share: f64, total: Option<u64>) -> String {
    match total {
        Some(t) => format!("{share:.2}, {}", gib((share * t as f64) as u64)),
        None => format!("{share:.2}"),
    }
}

fn reserve_text(total: Option<u64>) -> String {
    match total {
        Some(_) => gib(ENGINE_RESERVE_BYTES),
        None => format!("{ENGINE_RESERVE_SHARE:.2} of the GPU"),
    }
}

/// What a problem adds where the GPU's size is unknown.
fn size_note(total: Option<u64>) -> &'static str {
    match total {
        Some(_) => "",
        None => " (the GPU's size is unknown: set the node's gpu_memory or accelerators for the exact check)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn h100() -> SharedGpu {
        SharedGpu {
            total: Some(80 * GIB),
            label: "one H100:1".into(),
        }
    }

    fn engines(memories: &[(&'static str, VllmMemory)]) -> Vec<StartingEngine<'static>> {
        memories
            .iter()
            .map(|&(tenant, memory)| StartingEngine { tenant, memory })
            .collect()
    }

    #[test]
    fn a_second_engine_on_vllms_default_fails_its_start_up_check() {
        let found = start_problem(
            &engines(&[("a", VllmMemory::Fraction(0.5)), ("b", VllmMemory::Default)]),
            &h100(),
        )
        .expect("refused");
        assert!(
            found.starts_with("b would not start")
                && found.contains("vLLM's default gpu_memory_utilization (0.92) of one H100:1 is free (0.92, 73.6 GiB), while after a (1.0 GiB each for a CUDA context and graphs) and its own CUDA context only 0.48, 38.5 GiB is"),
            "{found}"
        );
    }

    #[test]
    fn fractions_that_sum_to_one_leave_no_room_for_contexts() {
        let found = start_problem(
            &engines(&[
                ("a", VllmMemory::Fraction(0.5)),
                ("b", VllmMemory::Fraction(0.5)),
            ]),
            &h100(),
        )
        .expect("refused");
        assert!(found.starts_with("b would not start"), "{found}");
        // Without the GPU's size, 2% a engine is held back.
        let unknown = SharedGpu {
            total: None,
            label: "the GPU".into(),
        };
        let fits = engines(&[
            ("a", VllmMemory::Fraction(0.48)),
            ("b", VllmMemory::Fraction(0.48)),
        ]);
        assert_eq!(start_problem(&fits, &unknown), None);
        let over = engines(&[
            ("a", VllmMemory::Fraction(0.49)),
            ("b", VllmMemory::Fraction(0.49)),
        ]);
        let found = start_problem(&over, &unknown).expect("refused");
        assert!(found.starts_with("b would not start"), "{found}");
        assert!(found.contains("size is unknown"), "{found}");
    }

    #[test]
    fn fixed_kv_caches_pass_with_the_agents_small_fraction() {
        let kv = |bytes| VllmMemory::KvCacheBytes {
            bytes,
            startup_fraction: None,
        };
        let both = engines(&[("a", kv(20 * GIB)), ("b", kv(20 * GIB))]);
        assert_eq!(start_problem(&both, &h100()), None);
        assert_eq!(VllmMemory::kv_startup_fraction(20 * GIB, 80 * GIB), 0.25);
        assert_eq!(VllmMemory::kv_startup_fraction(1, 80 * GIB), 0.01);
        // A stated fraction beside the KV bytes is the one checked.
        let stated = engines(&[
            ("a", kv(40 * GIB)),
            (
                "b",
                VllmMemory::KvCacheBytes {
                    bytes: 10 * GIB,
                    startup_fraction: Some(0.6),
                },
            ),
        ]);
        let found = start_problem(&stated, &h100()).expect("refused");
        assert!(found.contains("gpu_memory_fraction 0.60"), "{found}");
    }
}
