//! Validation of LoRA adapter tenants (`engine: {kind: adapter, of, adapter}`): the engine
//! keys they take, and, once a node's tenants are all read, that each names a base that can
//! serve it.

use std::collections::HashMap;

use super::raw::RawEngine;
use super::validate::{join, Checker};
use super::{AdapterEngine, Engine, Node, Tenant, Workload};

/// `vllm serve` flags the agent sets for a base engine with adapters.
const AGENT_LORA_FLAGS: [&str; 2] = ["--enable-lora", "--lora-modules"];

impl Checker {
    /// An adapter engine as written: `of` and `adapter` required, `model` optional (the
    /// tenant's name, filled in by the tenant), and nothing of another kind's. Its base is
    /// checked by [`Checker::adapters`].
    pub(super) fn adapter(&mut self, raw: RawEngine, path: &str) -> Option<Engine> {
        self.refuse_served_engine_keys(&raw, path, "an adapter, which runs in its base's engine");
        let of = self.required(raw.of, &join(path, "of"));
        let adapter = self.required(raw.adapter, &join(path, "adapter"));
        match adapter.as_deref() {
            Some("") => self.problem(
                &join(path, "adapter"),
                "name the adapter's folder on the node or its hub id",
            ),
            Some(a) if a.contains("://") => self.problem(
                &join(path, "adapter"),
                format!("{a:?}: adapters are not synced from buckets; use a hub id or a folder on the node"),
            ),
            _ => {}
        }
        // vLLM reads `--lora-modules name=path` by splitting at '='; ',' or a leading '{'
        // would make it read JSON.
        for (key, value) in [
            ("adapter", adapter.as_deref()),
            ("model", raw.model.as_deref()),
        ] {
            if value.is_some_and(|v| v.contains(['=', ',']) || v.starts_with('{')) {
                self.problem(
                    &join(path, key),
                    format!("{value:?} cannot go on vLLM's command line as name=path: leave out '=' and ',' and a leading '{{'", value = value.unwrap_or_default()),
                );
            }
        }
        Some(Engine::Adapter(AdapterEngine {
            of: of?,
            adapter: adapter?,
            model: raw.model.unwrap_or_default(),
            simulated: false,
        }))
    }

    /// Refuses an adapter whose workload calls an API of the other family than its base's
    /// (embeddings against generation): one vLLM engine serves either, and the simulated
    /// engine, which answers both, must not pass what vLLM would refuse.
    pub(super) fn adapter_apis_match(
        &mut self,
        node: &Node,
        workloads: &std::collections::BTreeMap<String, Workload>,
        path: &str,
    ) {
        for (j, tenant) in node.tenants.iter().enumerate() {
            let Some(base) = tenant.engine.base() else {
                continue;
            };
            let Some(base) = node.tenants.iter().find(|t| t.name == base) else {
                continue;
            };
            let (Some(own), Some(theirs)) = (
                workloads.get(&tenant.workload),
                workloads.get(&base.workload),
            ) else {
                continue;
            };
            if own.api.generates() != theirs.api.generates() {
                self.problem(
                    &format!("{path}[{j}].workload"),
                    format!(
                        "adapter {:?} calls {} and its base {:?} calls {}: one engine serves either embeddings or generation",
                        tenant.name,
                        own.api.name(),
                        base.name,
                        theirs.api.name()
                    ),
                );
            }
        }
    }

    /// Resolves every adapter tenant of a node against its base: the base must be another
    /// tenant of the node with a vllm or simulated engine (which the agent starts, and so can
    /// load adapters into); the names requests carry must differ within one engine; a vllm
    /// base must leave the LoRA flags to the agent. `places[i]` is where `tenants[i]` is in
    /// the node's list as written.
    pub(super) fn adapters(&mut self, tenants: &mut [Tenant], places: &[usize], path: &str) {
        let bases: HashMap<String, (usize, Engine)> = tenants
            .iter()
            .zip(places)
            .map(|(t, &place)| (t.name.clone(), (place, t.engine.clone())))
            .collect();
        let mut served: HashMap<String, Vec<(usize, String)>> = HashMap::new();
        for (tenant, &place) in tenants.iter_mut().zip(places) {
            let Engine::Adapter(adapter) = &mut tenant.engine else {
                continue;
            };
            let at = format!("{path}.tenants[{place}].engine.of");
            let Some((_, base)) = bases.get(&adapter.of) else {
                let mut names: Vec<&str> = bases.keys().map(String::as_str).collect();
                names.sort_unstable();
                self.problem(
                    &at,
                    format!(
                        "no tenant {:?} on this node to serve the adapter; its tenants: {}",
                        adapter.of,
                        names.join(", ")
                    ),
                );
                continue;
            };
            if adapter.of == tenant.name {
                self.problem(&at, "an adapter cannot be its own base");
                continue;
            }
            match base {
                Engine::Vllm(_) | Engine::Simulated { .. } => {}
                Engine::Adapter(_) => {
                    self.problem(
                        &at,
                        format!(
                            "{:?} is itself an adapter: name the tenant whose engine serves it",
                            adapter.of
                        ),
                    );
                    continue;
                }
                Engine::External { .. } => {
                    self.problem(&at, format!("{:?} is an external engine, which the agent does not start and so cannot load adapters into; its base must be a vllm (or simulated) tenant", adapter.of));
                    continue;
                }
            }
            adapter.simulated = base.is_simulated();
            served
                .entry(adapter.of.clone())
                .or_default()
                .push((place, adapter.model.clone()));
        }
        for (base_name, adapters) in &served {
            let Some((base_place, base)) = bases.get(base_name) else {
                continue;
            };
            let mut names: HashMap<&str, usize> = HashMap::new();
            names.insert(base.model(), *base_place);
            for (place, model) in adapters {
                if let Some(first) = names.insert(model, *place) {
                    self.problem(
                        &format!("{path}.tenants[{place}].engine.model"),
                        format!("{model:?} is already the name {path}.tenants[{first}] is served by in {base_name:?}'s engine; give the adapter another name"),
                    );
                }
            }
            if let Engine::Vllm(vllm) = base {
                for (i, arg) in vllm.args.iter().enumerate() {
                    let flag = arg.split('=').next().unwrap_or_default();
                    if AGENT_LORA_FLAGS.contains(&flag) {
                        self.problem(
                            &format!("{path}.tenants[{base_place}].engine.args[{i}]"),
                            format!("{flag} is set by the agent from the node's adapter tenants; leave it out"),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Engine, Experiment, Trial};

    fn config(tenants: &str) -> String {
        format!(
            r#"
name: lora
workloads:
  w: {{arrival: {{kind: poisson, rate: 4}}, data: {{prompt_tokens: 32, output_tokens: 16}}, duration: 5s}}
nodes:
  - name: n
    trials: [solo, mps]
    tenants:
{tenants}
"#
        )
    }

    fn refusal(tenants: &str) -> String {
        Experiment::from_yaml(&config(tenants), "lora.yaml")
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn an_adapter_runs_in_its_base_engine_in_every_trial() {
        let e = Experiment::from_yaml(
            &config(
                "      - {name: base, engine: {kind: simulated, model: llama}, workload: w}
      - {name: sql, engine: {kind: adapter, of: base, adapter: ./sql-lora}, workload: w}
      - {name: chat, engine: {kind: adapter, of: base, adapter: hub/chat, model: chat-v2}, workload: w}
      - {name: other, engine: {kind: simulated}, workload: w}",
            ),
            "lora.yaml",
        )
        .expect("valid");
        let node = e.node("n").expect("node");
        let Engine::Adapter(sql) = &node.tenants[1].engine else {
            panic!("sql is an adapter: {:?}", node.tenants[1].engine)
        };
        assert_eq!((sql.model.as_str(), sql.simulated), ("sql", true));
        assert_eq!(node.tenants[2].engine.model(), "chat-v2");
        assert_eq!(node.tenants[2].engine.kind(), "adapter");
        let names: Vec<&str> = node
            .adapters_of(0)
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["sql", "chat"]);
        assert!(node.adapters_of(3).is_empty());
        assert_eq!((node.host_of(1), node.host_of(3)), (0, 3));
        let trials: Vec<Trial> = node.trials(&e.workloads);
        let engines: Vec<(String, Vec<usize>)> = trials
            .iter()
            .map(|t| (t.name.clone(), node.trial_engines(t)))
            .collect();
        assert_eq!(
            engines,
            [
                ("solo-base".to_owned(), vec![0]),
                ("solo-sql".to_owned(), vec![0]),
                ("solo-chat".to_owned(), vec![0]),
                ("solo-other".to_owned(), vec![3]),
                ("mps".to_owned(), vec![0, 3]),
            ]
        );
    }

    #[test]
    fn an_adapter_without_a_base_that_can_serve_it_is_refused() {
        let err = refusal(
            "      - {name: a, engine: {kind: adapter, of: nobody, adapter: x}, workload: w}
      - {name: b, engine: {kind: simulated}, workload: w}",
        );
        assert!(err.contains("no tenant \"nobody\" on this node"), "{err}");
        let err = refusal(
            "      - {name: ext, engine: {kind: external, url: 'http://127.0.0.1:9', model: m}, workload: w}
      - {name: a, engine: {kind: adapter, of: ext, adapter: x}, workload: w}",
        );
        assert!(err.contains("\"ext\" is an external engine"), "{err}");
        let err = refusal(
            "      - {name: b, engine: {kind: simulated}, workload: w}
      - {name: a, engine: {kind: adapter, of: b, adapter: x}, workload: w}
      - {name: c, engine: {kind: adapter, of: a, adapter: y}, workload: w}",
        );
        assert!(err.contains("\"a\" is itself an adapter"), "{err}");
        let err =
            refusal("      - {name: a, engine: {kind: adapter, of: a, adapter: x}, workload: w}");
        assert!(err.contains("cannot be its own base"), "{err}");
    }

    #[test]
    fn an_adapter_calls_the_same_family_of_api_as_its_base() {
        let text = config(
            "      - {name: b, engine: {kind: simulated}, workload: w}
      - {name: a, engine: {kind: adapter, of: b, adapter: x}, workload: e}",
        )
        .replace(
            "workloads:\n",
            "workloads:\n  e: {api: embeddings, arrival: {kind: poisson, rate: 4}, data: {prompt_tokens: 32}, duration: 5s}\n",
        );
        let err = Experiment::from_yaml(&text, "lora.yaml")
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("nodes[0].tenants[1].workload: adapter \"a\" calls embeddings and its base \"b\" calls chat"),
            "{err}"
        );
    }

    #[test]
    fn an_adapter_takes_no_engine_keys_of_its_own() {
        let err = refusal(
            "      - {name: b, engine: {kind: simulated, model: m}, workload: w}
      - {name: a, engine: {kind: adapter, of: b, adapter: x, model: m, timing: {max_batch: 2}}, workload: w, port: 18123, mps_thread_percentage: 50}
      - {name: c, engine: {kind: simulated, of: b}, workload: w}
      - {name: d, engine: {kind: adapter, of: b}, workload: w}
      - {name: e, engine: {kind: adapter, of: b, adapter: 's3://bucket/lora', model: 'x=y'}, workload: w}",
        );
        for expected in [
            "nodes[0].tenants[1].engine.model: \"m\" is already the name nodes[0].tenants[0] is served by",
            "`timing` does not apply to an adapter",
            "an adapter is served on its base's port",
            "its MPS limits are \"b\"'s",
            "`of` applies only to an adapter engine",
            "nodes[0].tenants[3].engine.adapter",
            "adapters are not synced from buckets",
            "nodes[0].tenants[4].engine.model: \"x=y\" cannot go on vLLM's command line",
        ] {
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
        let err = refusal(
            "      - {name: b, engine: {kind: vllm, model: m, args: [--enable-lora, '--lora-modules=x=y']}, workload: w}
      - {name: a, engine: {kind: adapter, of: b, adapter: x}, workload: w}",
        );
        assert!(
            err.contains("--enable-lora is set by the agent")
                && err.contains("--lora-modules is set by the agent"),
            "{err}"
        );
    }
}
