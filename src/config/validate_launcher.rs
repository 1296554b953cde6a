//! Validation of the `launcher:` section, against the nodes it must bring up.

use std::collections::BTreeSet;
use std::time::Duration;

use super::raw::{RawLauncher, RawSkyPilot, RawStaticAgent};
use super::validate::Checker;
use super::{
    AgentAddress, AgentInstall, Engine, Launcher, LauncherKind, Node, OnNodeFailure, Platform,
    SkyPilotSettings, StaticAgent, UserCa, DEFAULT_LEASE, DEFAULT_VLLM_VERSION, NODE_VLLM_VENV,
};

/// Shortest `launcher.lease`: an event stream is seen at least once a second.
const MIN_LEASE: Duration = Duration::from_secs(2);
/// Longest `launcher.lease`.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The platform of SkyPilot nodes unless `launcher.skypilot.node_platform` says otherwise.
const DEFAULT_NODE_PLATFORM: &str = "linux-x86_64";

/// Sets `variant` to the vLLM wheel variant the node's driver and GPU can run: vLLM's default
/// wheels are built for CUDA 13 from 0.20 on (vLLM PR #39878), which needs a 13.x driver and a
/// GPU of compute capability 7.5 or more; elsewhere the `cu129` variant (docs/gpu-first-contact.md,
/// items 7-8). Empty where nvidia-smi cannot say (the default wheels).
const VLLM_WHEEL_VARIANT: &str = r#"driver_cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1)
  capability=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ')
  variant=
  if [ -n "$driver_cuda" ] && { [ "$driver_cuda" -lt 13 ] || [ "${capability:-75}" -lt 75 ]; }; then variant=cu129; fi"#;

/// Engine set-up of a SkyPilot node unless the config gives its own: vLLM `version` in its own
/// virtualenv, kept when a relaunch finds it there.
fn default_engine_setup(version: &str) -> String {
    format!(
        r#"venv="$HOME/{NODE_VLLM_VENV}"
if [ "$("$venv/bin/vllm" --version 2>/dev/null | tail -n 1)" = "{version}" ]; then
  echo "multitenant: setup: vLLM {version} is installed already ($venv)"
else
  echo "multitenant: setup: installing vLLM {version} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || {{ python3 -m pip install --user --quiet virtualenv && python3 -m virtualenv "$venv"; }}
  "$venv/bin/pip" install --quiet --upgrade pip
  {VLLM_WHEEL_VARIANT}
  if [ -n "$variant" ]; then
    echo "multitenant: setup: the driver runs CUDA $driver_cuda (GPU compute capability $capability): vLLM's $variant wheels"
    "$venv/bin/pip" install --quiet "vllm=={version}" --extra-index-url "https://wheels.vllm.ai/{version}/$variant" --extra-index-url "https://download.pytorch.org/whl/$variant"
  else
    "$venv/bin/pip" install --quiet "vllm=={version}"
  fi
fi"#
    )
}

impl Checker {
    pub(super) fn launcher(
        &mut self,
        raw: Option<RawLauncher>,
        nodes: &[Node],
    ) -> Option<Launcher> {
        let Some(raw) = raw else {
            return Some(Launcher {
                kind: LauncherKind::Local,
                keep: false,
                on_node_failure: OnNodeFailure::Stop,
                tls: None,
                lease: DEFAULT_LEASE,
            });
        };
        let on_node_failure = match raw.on_node_failure.as_deref() {
            None | Some("stop") => Some(OnNodeFailure::Stop),
            Some("continue") => Some(OnNodeFailure::Continue),
            Some(other) => {
                self.problem(
                    "launcher.on_node_failure",
                    format!("{other:?} is not a choice: use stop or continue"),
                );
                None
            }
        };
        let lease = self.lease(raw.lease);
        let tls = raw.tls.and_then(|t| {
            let cert = self.required(t.ca_cert, "launcher.tls.ca_cert");
            let key = self.required(t.ca_key, "launcher.tls.ca_key");
            Some(UserCa {
                cert: self.base.join(cert?),
                key: self.base.join(key?),
            })
        });
        let kind_name = raw.kind.as_deref().unwrap_or("local");
        for (key, set, owner) in [
            ("agents", raw.agents.is_some(), "static"),
            ("skypilot", raw.skypilot.is_some(), "skypilot"),
        ] {
            if set && kind_name != owner {
                self.problem(
                    &format!("launcher.{key}"),
                    format!("`{key}` belongs to the {owner} launcher, not {kind_name}"),
                );
            }
        }
        let kind = match kind_name {
            "local" => Some(LauncherKind::Local),
            "static" => {
                let agents = self
                    .required(raw.agents, "launcher.agents")
                    .unwrap_or_default();
                self.static_agents(agents, nodes, tls.is_some())
                    .map(LauncherKind::Static)
            }
            "skypilot" => self
                .skypilot(raw.skypilot, nodes)
                .map(|s| LauncherKind::SkyPilot(Box::new(s))),
            other => {
                self.problem(
                    "launcher.kind",
                    format!("{other:?} is not a launcher: use local, static or skypilot"),
                );
                None
            }
        };
        Some(Launcher {
            kind: kind?,
            keep: raw.keep.unwrap_or(false),
            on_node_failure: on_node_failure?,
            tls,
            lease: lease?,
        })
    }

    fn lease(&mut self, raw: Option<String>) -> Option<Duration> {
        const PATH: &str = "launcher.lease";
        let Some(text) = raw else {
            return Some(DEFAULT_LEASE);
        };
        let lease = self.duration(Some(text), PATH)?;
        if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
            self.problem(
                PATH,
                format!(
                    "{} is outside {}–{}: shorter, a busy network stops runs; longer, a lost node keeps its GPU",
                    humantime::format_duration(lease),
                    humantime::format_duration(MIN_LEASE),
                    humantime::format_duration(MAX_LEASE)
                ),
            );
            return None;
        }
        Some(lease)
    }

    fn static_agents(
        &mut self,
        raw: Vec<RawStaticAgent>,
        nodes: &[Node],
        have_ca: bool,
    ) -> Option<Vec<StaticAgent>> {
        let mut agents = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, a) in raw.into_iter().enumerate() {
            let path = format!("launcher.agents[{i}]");
            let Some(node) = self.required(a.node, &format!("{path}.node")) else {
                continue;
            };
            if !nodes.iter().any(|n| n.name == node) {
                self.problem(&format!("{path}.node"), format!("no node named {node:?}"));
            }
            if !seen.insert(node.clone()) {
                self.problem(
                    &format!("{path}.node"),
                    format!("node {node:?} has two agents"),
                );
            }
            let address = match (a.url, a.token_env) {
                (None, None) => AgentAddress::Paired,
                (Some(url), Some(token_env)) => {
                    self.agent_url(&path, &url, have_ca);
                    AgentAddress::Given { url, token_env }
                }
                (Some(_), None) | (None, Some(_)) => {
                    self.problem(
                        &path,
                        "give both url and token_env, or neither to reach the agent paired as this node (`coordinator pair`)",
                    );
                    continue;
                }
            };
            agents.push(StaticAgent { node, address });
        }
        for node in nodes.iter().filter(|n| !seen.contains(&n.name)) {
            self.problem(
                "launcher.agents",
                format!("node {:?} has no agent", node.name),
            );
        }
        Some(agents)
    }

    fn agent_url(&mut self, path: &str, url: &str, have_ca: bool) {
        if let Some(rest) = url.strip_prefix("http://") {
            let host = rest.split([':', '/']).next().unwrap_or_default();
            if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
                self.problem(
                    &format!("{path}.url"),
                    format!("{url} is plain text off loopback; use https:// with launcher.tls (the agent runs with --tls)"),
                );
            }
        } else if url.starts_with("https://") {
            if !have_ca {
                self.problem(
                    &format!("{path}.url"),
                    "an https agent needs launcher.tls {ca_cert, ca_key}: the CA that signed its certificate (or pair with it: `coordinator pair`, then give only its node)",
                );
            }
        } else {
            self.problem(
                &format!("{path}.url"),
                format!("{url:?} is not an http:// or https:// address"),
            );
        }
    }

    fn skypilot(&mut self, raw: Option<RawSkyPilot>, nodes: &[Node]) -> Option<SkyPilotSettings> {
        let raw = raw.unwrap_or(RawSkyPilot {
            cluster_prefix: None,
            infra: None,
            use_spot: None,
            disk_size: None,
            image_id: None,
            idle_minutes_to_autostop: None,
            agent_port: None,
            engine_setup: None,
            agent_install: None,
            agent_url: None,
            agent_sha256: None,
            node_platform: None,
            vllm_version: None,
        });
        let agent_install = self.agent_install(&raw);
        let prefix = raw.cluster_prefix.unwrap_or_else(|| "mt".into());
        let prefix_ok = prefix.len() <= 12
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !prefix_ok {
            self.problem(
                "launcher.skypilot.cluster_prefix",
                format!("{prefix:?}: SkyPilot cluster names take a lowercase letter first, then lowercase letters, digits and '-'; 12 characters at most here"),
            );
        }
        if let Some(infra) = &raw.infra {
            let ok = !infra.is_empty()
                && infra.split('/').count() <= 3
                && infra
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '*'));
            if !ok {
                self.problem(
                    "launcher.skypilot.infra",
                    format!("{infra:?} is not a SkyPilot infra: write e.g. aws, aws/us-east-1, gcp/us-central1/us-central1-a or k8s"),
                );
            }
        }
        if raw.agent_port == Some(0) {
            self.problem(
                "launcher.skypilot.agent_port",
                "the agent needs a fixed port to declare in resources.ports",
            );
        }
        if raw.disk_size == Some(0) {
            self.problem(
                "launcher.skypilot.disk_size",
                "a disk of 0 GB cannot hold an engine",
            );
        }
        for (i, node) in nodes.iter().enumerate() {
            let path = format!("nodes[{i}]");
            let has_vllm = node
                .tenants
                .iter()
                .any(|t| matches!(t.engine, Engine::Vllm(_)));
            match &node.accelerators {
                None if has_vllm => self.problem(
                    &format!("{path}.accelerators"),
                    "a node with vllm tenants needs accelerators (e.g. H100:1) for SkyPilot to pick a GPU",
                ),
                Some(acc) if !is_accelerator_spec(acc) => self.problem(
                    &format!("{path}.accelerators"),
                    format!("{acc:?} is not a SkyPilot accelerator spec: write NAME or NAME:COUNT, e.g. H100:1"),
                ),
                _ => {}
            }
            for (j, tenant) in node.tenants.iter().enumerate() {
                let at = format!("{path}.tenants[{j}].engine");
                match &tenant.engine {
                    Engine::Vllm(v) if !v.model.contains("://") && (v.model.starts_with('/') || v.model.starts_with('.')) => {
                        self.problem(
                            &format!("{at}.model"),
                            format!("{} is a path on this machine, which a SkyPilot node does not have; use a hub id, s3:// or gs://", v.model),
                        );
                    }
                    Engine::Adapter(a) if !a.simulated && (a.adapter.starts_with('/') || a.adapter.starts_with('.')) => {
                        self.problem(
                            &format!("{at}.adapter"),
                            format!("{} is a path on this machine, which a SkyPilot node does not have; use a hub id, which vLLM downloads on the node", a.adapter),
                        );
                    }
                    Engine::External { url, .. } => self.problem(
                        &format!("{at}.url"),
                        format!("an external engine at {url} is reached from the node, not from here; run it on the node as a vllm tenant or use the static launcher"),
                    ),
                    _ => {}
                }
            }
        }
        let platform_text = raw
            .node_platform
            .clone()
            .unwrap_or_else(|| DEFAULT_NODE_PLATFORM.into());
        let node_platform = Platform::parse(&platform_text);
        if node_platform.is_none() {
            self.problem(
                "launcher.skypilot.node_platform",
                format!("{platform_text:?} is not a platform: write OS-ARCH as Rust names them, e.g. linux-x86_64 or linux-aarch64"),
            );
        }
        let vllm_version = raw
            .vllm_version
            .clone()
            .unwrap_or_else(|| DEFAULT_VLLM_VERSION.into());
        let version_ok = !vllm_version.is_empty()
            && vllm_version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
        if !version_ok {
            self.problem(
                "launcher.skypilot.vllm_version",
                format!(
                    "{vllm_version:?} is not a vLLM version: write e.g. {DEFAULT_VLLM_VERSION}"
                ),
            );
        }
        if raw.vllm_version.is_some() && raw.engine_setup.is_some() {
            self.problem(
                "launcher.skypilot.vllm_version",
                "vllm_version picks what the default engine_setup installs, and engine_setup replaces that default: give one of them",
            );
        }
        Some(SkyPilotSettings {
            cluster_prefix: prefix,
            infra: raw.infra,
            use_spot: raw.use_spot.unwrap_or(false),
            disk_size: raw.disk_size,
            image_id: raw.image_id,
            idle_minutes_to_autostop: raw.idle_minutes_to_autostop.unwrap_or(30).max(1),
            agent_port: raw.agent_port.unwrap_or(7777),
            engine_setup: raw
                .engine_setup
                .unwrap_or_else(|| default_engine_setup(&vllm_version)),
            vllm_version,
            agent_install: agent_install?,
            node_platform: node_platform?,
        })
    }

    /// `agent_install` (`source`, `binary` or `url`) with `agent_url` and `agent_sha256`.
    fn agent_install(&mut self, raw: &RawSkyPilot) -> Option<AgentInstall> {
        let at = "launcher.skypilot.agent_install";
        let install = match raw.agent_install.as_deref().unwrap_or("source") {
            "source" => AgentInstall::Source,
            "binary" => AgentInstall::Binary,
            "url" => {
                let Some(url) = raw.agent_url.clone() else {
                    self.problem(
                        "launcher.skypilot.agent_url",
                        "agent_install: url needs agent_url, the https:// address of a prebuilt agent binary",
                    );
                    return None;
                };
                if !url.starts_with("https://") || url.contains(char::is_whitespace) {
                    self.problem(
                        "launcher.skypilot.agent_url",
                        format!("{url:?} is not an https:// address (the node runs what it downloads: plain http could be anybody's)"),
                    );
                }
                let sha256 = raw.agent_sha256.clone().map(|s| s.to_ascii_lowercase());
                if let Some(sha) = &sha256 {
                    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                        self.problem(
                            "launcher.skypilot.agent_sha256",
                            format!("{sha:?} is not a SHA-256: 64 hex digits, as `sha256sum` prints them"),
                        );
                    }
                }
                AgentInstall::Url { url, sha256 }
            }
            other => {
                self.problem(
                    at,
                    format!("{other:?} is not a way to install the agent: write source (built on the node, the default), binary (this machine's, same platform only) or url (with agent_url)"),
                );
                return None;
            }
        };
        let url_fields = raw.agent_url.is_some() || raw.agent_sha256.is_some();
        if url_fields && !matches!(install, AgentInstall::Url { .. }) {
            self.problem(
                "launcher.skypilot.agent_url",
                "agent_url and agent_sha256 are for agent_install: url",
            );
        }
        Some(install)
    }
}

/// `NAME` or `NAME:COUNT` with COUNT a positive number (SkyPilot also takes fractions).
fn is_accelerator_spec(spec: &str) -> bool {
    let (name, count) = spec.split_once(':').unwrap_or((spec, "1"));
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        && count.parse::<f64>().is_ok_and(|c| c > 0.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{
        AgentInstall, Experiment, LauncherKind, DEFAULT_LEASE, DEFAULT_VLLM_VERSION,
    };

    const NODES: &str = "workloads:\n  w: {arrival: {kind: constant, rate: 1}, data: {prompt_tokens: 4, output_tokens: 4}, duration: 1s}\nnodes:\n  - {name: a, accelerators: \"H100:1\", tenants: [{name: t, workload: w, engine: {kind: vllm, model: org/model}}]}\n  - {name: b, tenants: [{name: t, workload: w, engine: {kind: simulated}}]}\n";

    fn problems(launcher: &str, nodes: &str) -> Vec<(String, String)> {
        let text = format!("name: l\nlauncher:\n{launcher}{nodes}");
        match Experiment::from_yaml(&text, "l.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems()
                .iter()
                .map(|p| (p.path.clone(), p.message.clone()))
                .collect(),
        }
    }

    fn has(found: &[(String, String)], path: &str, words: &str) -> bool {
        found.iter().any(|(p, m)| p == path && m.contains(words))
    }

    #[test]
    fn static_agents_must_cover_every_node_and_speak_tls_off_loopback() {
        let found = problems(
            "  kind: static\n  agents:\n    - {node: a, url: \"http://10.0.0.5:7777\", token_env: A}\n    - {node: a, url: \"https://gpu:7777\", token_env: B}\n    - {node: c, url: \"ftp://x\", token_env: C}\n",
            NODES,
        );
        assert!(
            has(&found, "launcher.agents[0].url", "plain text off loopback"),
            "{found:?}"
        );
        assert!(
            has(&found, "launcher.agents[1].node", "has two agents"),
            "{found:?}"
        );
        assert!(
            has(&found, "launcher.agents[1].url", "needs launcher.tls"),
            "{found:?}"
        );
        assert!(
            has(&found, "launcher.agents[2].node", "no node named \"c\""),
            "{found:?}"
        );
        assert!(
            has(
                &found,
                "launcher.agents[2].url",
                "not an http:// or https://"
            ),
            "{found:?}"
        );
        assert!(
            has(&found, "launcher.agents", "node \"b\" has no agent"),
            "{found:?}"
        );
        let ok = problems(
            "  kind: static\n  agents:\n    - {node: a, url: \"http://127.0.0.1:7777\", token_env: A}\n    - {node: b, url: \"http://127.0.0.1:7778\", token_env: B}\n",
            NODES,
        );
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn a_lease_is_a_duration_within_its_bounds_and_defaults_to_three_minutes() {
        for (lease, words) in [
            ("1s", "outside 2s–1day"),
            ("2days", "outside 2s–1day"),
            ("soon", "not a duration"),
        ] {
            let found = problems(&format!("  lease: {lease}\n"), NODES);
            assert!(has(&found, "launcher.lease", words), "{lease}: {found:?}");
        }
        let text = format!("name: l\nlauncher:\n  lease: 10m\n{NODES}");
        let e = Experiment::from_yaml(&text, "l.yaml").expect("valid");
        assert_eq!(e.launcher.lease, Duration::from_secs(600));
        let e = Experiment::from_yaml(&format!("name: l\n{NODES}"), "l.yaml").expect("valid");
        assert_eq!(e.launcher.lease, DEFAULT_LEASE);
    }

    #[test]
    fn skypilot_refuses_what_it_cannot_express() {
        let nodes = NODES
            .replace("engine: {kind: simulated}", "engine: {kind: vllm, model: /home/me/model}")
            .replace("\"H100:1\"", "\"H100:many\"")
            + "  - {name: c, accelerators: L4, tenants: [{name: t, workload: w, engine: {kind: external, url: \"http://x:1\", model: m}}]}\n"
            + "  - {name: d, accelerators: L4, tenants: [{name: t, workload: w, engine: {kind: vllm, model: org/m}}, {name: l, workload: w, engine: {kind: adapter, of: t, adapter: ./my-lora}}]}\n";
        let found = problems(
            "  kind: skypilot\n  skypilot: {cluster_prefix: Bad_Prefix, infra: \"aws us-east\", agent_port: 0}\n",
            &nodes,
        );
        for (path, words) in [
            ("launcher.skypilot.cluster_prefix", "lowercase letter first"),
            ("launcher.skypilot.infra", "is not a SkyPilot infra"),
            ("launcher.skypilot.agent_port", "fixed port"),
            ("nodes[0].accelerators", "not a SkyPilot accelerator spec"),
            ("nodes[1].accelerators", "needs accelerators"),
            ("nodes[1].tenants[0].engine.model", "a path on this machine"),
            ("nodes[2].tenants[0].engine.url", "reached from the node"),
            (
                "nodes[3].tenants[1].engine.adapter",
                "a path on this machine",
            ),
        ] {
            assert!(has(&found, path, words), "{path}: {found:?}");
        }
        let e = Experiment::from_yaml(
            &format!("name: l\nlauncher:\n  kind: skypilot\n  keep: true\n  on_node_failure: continue\n{NODES}"),
            "ok.yaml",
        )
        .expect("valid");
        let LauncherKind::SkyPilot(settings) = &e.launcher.kind else {
            panic!("skypilot");
        };
        assert_eq!(
            (settings.agent_port, settings.idle_minutes_to_autostop),
            (7777, 30)
        );
        assert!(e.launcher.keep);
    }

    #[test]
    fn the_agent_install_and_the_node_platform_are_checked() {
        let settings = |skypilot: &str| {
            let text =
                format!("name: l\nlauncher:\n  kind: skypilot\n  skypilot: {skypilot}\n{NODES}");
            let e = Experiment::from_yaml(&text, "l.yaml").expect("valid");
            let LauncherKind::SkyPilot(settings) = e.launcher.kind else {
                panic!("skypilot");
            };
            settings
        };
        let default = settings("{}");
        assert_eq!(default.agent_install, AgentInstall::Source);
        assert_eq!(default.node_platform.to_string(), "linux-x86_64");
        assert_eq!(default.vllm_version, DEFAULT_VLLM_VERSION);
        assert!(default.engine_setup.contains(&format!(
            "pip\" install --quiet \"vllm=={DEFAULT_VLLM_VERSION}\""
        )));
        let pinned = settings("{vllm_version: 0.11.0, node_platform: linux-aarch64}");
        assert!(pinned.engine_setup.contains("\"vllm==0.11.0\""));
        assert_eq!(pinned.node_platform.arch, "aarch64");
        let sha = "ab".repeat(32);
        let url = settings(&format!(
            "{{agent_install: url, agent_url: \"https://example.com/agent\", agent_sha256: {}}}",
            sha.to_uppercase()
        ));
        assert_eq!(
            url.agent_install,
            AgentInstall::Url {
                url: "https://example.com/agent".into(),
                sha256: Some(sha)
            }
        );

        let found = problems(
            "  kind: skypilot\n  skypilot: {agent_install: compile, node_platform: x86, vllm_version: \"0.11; rm -rf /\", engine_setup: \"pip install vllm\"}\n",
            NODES,
        );
        for (path, words) in [
            (
                "launcher.skypilot.agent_install",
                "\"compile\" is not a way to install the agent",
            ),
            (
                "launcher.skypilot.node_platform",
                "\"x86\" is not a platform",
            ),
            ("launcher.skypilot.vllm_version", "is not a vLLM version"),
            ("launcher.skypilot.vllm_version", "give one of them"),
        ] {
            assert!(has(&found, path, words), "{path}: {found:?}");
        }
        let found = problems(
            "  kind: skypilot\n  skypilot: {agent_install: url, agent_url: \"http://example.com/agent\", agent_sha256: abc}\n",
            NODES,
        );
        assert!(
            has(
                &found,
                "launcher.skypilot.agent_url",
                "not an https:// address"
            ),
            "{found:?}"
        );
        assert!(
            has(&found, "launcher.skypilot.agent_sha256", "64 hex digits"),
            "{found:?}"
        );
        let found = problems(
            "  kind: skypilot\n  skypilot: {agent_install: url}\n",
            NODES,
        );
        assert!(
            has(&found, "launcher.skypilot.agent_url", "needs agent_url"),
            "{found:?}"
        );
        let found = problems(
            "  kind: skypilot\n  skypilot: {agent_install: binary, agent_sha256: abc}\n",
            NODES,
        );
        assert!(
            has(
                &found,
                "launcher.skypilot.agent_url",
                "are for agent_install: url"
            ),
            "{found:?}"
        );
    }
}
