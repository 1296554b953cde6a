//! What a node can run, judged before a trial's engines start: the facts `agent doctor`
//! reports (the MPS control program, the GPUs NVML sees and their free memory) against what
//! each trial asks for. A trial the node cannot run is refused with the reason, and nothing of
//! it starts. Only real engines are judged: simulated ones share a simulated GPU.

use std::path::{Path, PathBuf};

use multitenant::config::{Engine, Node, SharingMode, Tenant, Trial, VllmMemory};

use crate::engine::find_executable;
use crate::gpu::NodeGpus;

/// GPU memory as NVML reports it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    /// NVML index.
    pub index: u32,
    /// All of it, bytes.
    pub total: u64,
    /// What no process holds, bytes.
    pub free: u64,
}

/// What the node has, as the preflight needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// How many GPUs NVML counts (0 without NVML).
    pub gpu_count: usize,
    /// The memory of each GPU whose figures NVML gives; empty without NVML.
    pub gpus: Vec<GpuMemory>,
    /// Why there are no GPU figures, when there are none.
    pub gpus_unknown: Option<String>,
    /// The MPS control program, or what was looked for.
    pub mps_control: Result<PathBuf, String>,
}

impl NodeFacts {
    /// The facts now: NVML's memory figures and whether `mps_control` is there.
    pub fn probe(gpus: &NodeGpus, mps_control: &Path) -> Self {
        let (gpu_count, gpus_now, gpus_unknown) = match &gpus.nvml {
            None => (0, Vec::new(), Some(gpus.status.describe())),
            Some(nvml) => {
                let count = nvml.device_count().unwrap_or(0);
                let memory = (0..count)
                    .filter_map(|index| {
                        let info = nvml.device_by_index(index).ok()?.memory_info().ok()?;
                        Some(GpuMemory {
                            index,
                            total: info.total,
                            free: info.free,
                        })
                    })
                    .collect();
                (count as usize, memory, None)
            }
        };
        Self {
            gpu_count,
            gpus: gpus_now,
            gpus_unknown,
            mps_control: find_executable(&mps_control.display().to_string())
                .ok_or_else(|| mps_control.display().to_string()),
        }
    }
}

/// One reason a node cannot run a trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, in words.
    pub reason: String,
    /// Whether it is GPU memory that is short now (which the previous trial's engines may
    /// still be giving back), rather than something the node lacks.
    pub memory: bool,
}

/// Why `node` cannot run `trial`, one reason per problem; empty when it can.
pub fn refusals(trial: &Trial, node: &Node, facts: &NodeFacts) -> Vec<Refusal> {
    let mut found: Vec<Refusal> = lacks(trial, node, facts)
        .into_iter()
        .map(|reason| Refusal {
            reason,
            memory: false,
        })
        .collect();
    let gpu0 = facts.gpus.iter().find(|g| g.index == 0);
    if let (true, Some(gpu)) = (facts.gpus_unknown.is_none(), gpu0) {
        let tenants: Vec<&Tenant> = engine_owners(trial, node)
            .filter(|t| matches!(t.engine, Engine::Vllm(_)) && !picks_its_gpus(t))
            .collect();
        found.extend(memory_refusal(&tenants, gpu).map(|reason| Refusal {
            reason,
            memory: true,
        }));
    }
    found
}

/// Whether a tenant chooses its GPUs itself (`CUDA_VISIBLE_DEVICES` in its environment): the
/// preflight cannot tell which GPU's memory it will use.
fn picks_its_gpus(tenant: &Tenant) -> bool {
    matches!(&tenant.engine, Engine::Vllm(v) if v.env.contains_key("CUDA_VISIBLE_DEVICES"))
}

/// The tenants whose engines `trial` runs (an adapter's base among them).
fn engine_owners<'n>(trial: &Trial, node: &'n Node) -> impl Iterator<Item = &'n Tenant> {
    node.trial_engines(trial)
        .into_iter()
        .map(|i| &node.tenants[i])
}

/// What the node lacks for `trial`: MPS for an mps trial, the GPUs it asks for.
fn lacks(trial: &Trial, node: &Node, facts: &NodeFacts) -> Vec<String> {
    let vllm: Vec<&Tenant> = engine_owners(trial, node)
        .filter(|t| matches!(t.engine, Engine::Vllm(_)))
        .collect();
    if vllm.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    if trial.mode == SharingMode::Mps {
        if let Err(looked_for) = &facts.mps_control {
            found.push(format!("an mps trial needs the MPS control daemon, and {looked_for} was not found on this node (agent doctor: mps missing); install the CUDA toolkit's nvidia-cuda-mps-control, or leave mps out of this node's trials"));
        }
    }
    if facts.gpus_unknown.is_some() {
        // Without NVML the GPU cannot be judged (a CPU vLLM, or a GPU NVML cannot see):
        // the engines themselves will say what they lack.
        return found;
    }
    let asked = node.accelerators.as_deref().and_then(gpu_count);
    if let Some(asked) = asked {
        if asked > facts.gpu_count {
            found.push(format!(
                "the node asks for {asked} GPUs ({}) and NVML sees {} here",
                node.accelerators.as_deref().unwrap_or_default(),
                facts.gpu_count
            ));
        }
    }
    for tenant in &vllm {
        for device in pinned_devices(tenant) {
            if device as usize >= facts.gpu_count {
                found.push(format!(
                    "{}: mps_pinned_memory_limit names GPU {device}, and NVML sees {} GPU(s) here",
                    tenant.name, facts.gpu_count
                ));
            }
        }
    }
    found
}

/// The trial's vLLM servers all live on GPU 0 at once (each alone in a solo trial): what they
/// reserve together must be free there now. vLLM itself refuses to start when its fraction of
/// the total is more than is free; an engine on vLLM's default asks for 0.92 of it (validate
/// refuses that default in shared trials, where the second engine could never start).
fn memory_refusal(vllm: &[&Tenant], gpu: &GpuMemory) -> Option<String> {
    let gib = |b: f64| format!("{:.1} GiB", b / f64::from(1u32 << 30));
    let mut parts = Vec::new();
    let mut bytes = 0.0;
    for tenant in vllm {
        let Engine::Vllm(v) = &tenant.engine else {
            continue;
        };
        let asked = match v.memory {
            VllmMemory::Fraction(f) => f * gpu.total as f64,
            VllmMemory::KvCacheBytes { bytes, .. } => bytes as f64,
            VllmMemory::Default => VllmMemory::VLLM_DEFAULT_FRACTION * gpu.total as f64,
        };
        parts.push(format!("{} {}", tenant.name, gib(asked)));
        bytes += asked;
    }
    (bytes > gpu.free as f64).then(|| {
        format!(
            "the trial's vLLM servers ask for {} of GPU {} ({}), and only {} of its {} is free now (other processes hold the rest: nvidia-smi shows them)",
            gib(bytes),
            gpu.index,
            parts.join(" + "),
            gib(gpu.free as f64),
            gib(gpu.total as f64)
        )
    })
}

/// The GPU count of an accelerator spec (`H100:2` → 2, `H100` → 1, a fraction → 1).
fn gpu_count(spec: &str) -> Option<usize> {
    let count = spec.split_once(':').map_or("1", |(_, c)| c);
    let count: f64 = count.parse().ok()?;
    Some(count.ceil().max(1.0) as usize)
}

/// The GPU indices a tenant's `mps_pinned_memory_limit` (`0=16G,1=8G`) names.
fn pinned_devices(tenant: &Tenant) -> Vec<u32> {
    tenant
        .mps_pinned_memory_limit
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter_map(|part| part.split_once('=')?.0.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitenant::config::Experiment;

    const GIB: u64 = 1 << 30;

    fn reasons(trial: &Trial, node: &Node, facts: &NodeFacts) -> Vec<String> {
        refusals(trial, node, facts)
            .into_iter()
            .map(|r| r.reason)
            .collect()
    }

    fn node_of(tenants: &str, accelerators: &str) -> (Node, Vec<Trial>) {
        let text = format!(
            "name: p\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 1}}, data: {{prompt_tokens: 4, output_tokens: 4}}, duration: 1s}}\nnodes:\n  - name: n\n    accelerators: \"{accelerators}\"\n    trials: [solo, mps]\n    tenants:\n{tenants}"
        );
        let e = Experiment::from_yaml(&text, "p.yaml").expect("valid");
        let node = e.nodes[0].clone();
        let trials = node.trials(&e.workloads);
        (node, trials)
    }

    fn facts(gpus: &[(u64, u64)], mps: bool) -> NodeFacts {
        NodeFacts {
            gpu_count: gpus.len(),
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, &(total, free))| GpuMemory {
                    index: i as u32,
                    total,
                    free,
                })
                .collect(),
            gpus_unknown: None,
            mps_control: if mps {
                Ok(PathBuf::from("/usr/bin/nvidia-cuda-mps-control"))
            } else {
                Err("nvidia-cuda-mps-control".into())
            },
        }
    }

    const TWO_VLLM: &str = "      - {name: a, workload: w, engine: {kind: vllm, model: m1, gpu_memory_fraction: 0.4}}\n      - {name: b, workload: w, engine: {kind: vllm, model: m2, gpu_memory_fraction: 0.4}}\n";

    #[test]
    fn an_mps_trial_without_mps_is_refused_and_solo_trials_are_not() {
        let (node, trials) = node_of(TWO_VLLM, "H100:1");
        let facts = facts(&[(80 * GIB, 79 * GIB)], false);
        let by_name: Vec<(String, Vec<String>)> = trials
            .iter()
            .map(|t| (t.name.clone(), reasons(t, &node, &facts)))
            .collect();
        assert!(
            by_name[0].1.is_empty() && by_name[1].1.is_empty(),
            "{by_name:?}"
        );
        assert_eq!(by_name[2].0, "mps");
        assert_eq!(by_name[2].1.len(), 1, "{by_name:?}");
        assert!(by_name[2].1[0].contains("nvidia-cuda-mps-control was not found"));
    }

    #[test]
    fn memory_the_gpu_does_not_have_free_is_refused_before_vllm_tries() {
        let (node, trials) = node_of(TWO_VLLM, "H100:1");
        let mps = trials.iter().find(|t| t.name == "mps").expect("mps");
        // 0.8 of 80 GiB asked, 50 GiB free: another process holds 30 GiB.
        let all = refusals(mps, &node, &facts(&[(80 * GIB, 50 * GIB)], true));
        assert!(all.iter().all(|r| r.memory), "{all:?}");
        let refused = reasons(mps, &node, &facts(&[(80 * GIB, 50 * GIB)], true));
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].contains("ask for 64.0 GiB of GPU 0 (a 32.0 GiB + b 32.0 GiB), and only 50.0 GiB of its 80.0 GiB is free"),
            "{}",
            refused[0]
        );
        // Alone, each fits.
        let solo = &trials[0];
        assert!(refusals(solo, &node, &facts(&[(80 * GIB, 50 * GIB)], true)).is_empty());
        assert!(refusals(mps, &node, &facts(&[(80 * GIB, 79 * GIB)], true)).is_empty());
    }

    #[test]
    fn fewer_gpus_than_the_node_asks_for_are_refused() {
        let tenants = "      - {name: a, workload: w, mps_pinned_memory_limit: \"0=8G,2=8G\", engine: {kind: vllm, model: m1, gpu_memory_fraction: 0.4}}\n";
        let (node, trials) = node_of(tenants, "A100:2");
        let refused = reasons(&trials[0], &node, &facts(&[(40 * GIB, 40 * GIB)], true));
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].contains("asks for 2 GPUs (A100:2) and NVML sees 1 here"));
        assert!(refused[1].contains("a: mps_pinned_memory_limit names GPU 2"));
    }

    #[test]
    fn simulated_tenants_and_nodes_without_nvml_are_not_judged_on_gpus() {
        let (node, trials) = node_of(
            "      - {name: s, workload: w, engine: {kind: simulated}}\n",
            "H100:8",
        );
        assert!(trials
            .iter()
            .all(|t| refusals(t, &node, &facts(&[], false)).is_empty()));
        let (node, trials) = node_of(TWO_VLLM, "H100:8");
        let mut unknown = facts(&[], true);
        unknown.gpus_unknown = Some("GPU sampling is off: NVML could not be loaded".into());
        assert!(trials
            .iter()
            .all(|t| refusals(t, &node, &unknown).is_empty()));
    }
}
