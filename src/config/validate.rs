//! Raw YAML → [`Experiment`]: every problem collected with its path, none fatal until the end.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::memory_fit::{self, SharedGpu, StartingEngine};
use super::raw::*;
use super::*;
use crate::dataset::{Dataset, DatasetFormat};
use crate::tokens::PromptTokenizer;

/// Default warmup when a workload gives none.
const DEFAULT_WARMUP: Duration = Duration::from_secs(2);
/// Default time in-flight requests may run on after the last send.
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Requests in flight in the throughput stage of an automatic sweep, unless set.
const DEFAULT_SWEEP_MAX_CONCURRENCY: u32 = 256;
/// Most requests a closed loop may keep in flight: the load generator's own cap.
const MAX_CONCURRENCY: u32 = MAX_IN_FLIGHT;
/// Highest request rate a tenant may be offered. One agent's load generator keeps its schedule
/// within 1 ms up to about 400 streamed requests/s per tenant on two cores (`agent bench`), and
/// no engine on one GPU serves 10,000 requests/s; a higher rate is a typo, and would only fill
/// the agent's memory and disk with requests it cannot send on time.
pub(super) const MAX_RATE: f64 = 10_000.0;
/// Longest config text: one gRPC message carries it to each agent, with room to spare for
/// its paths made absolute.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Longest name, so that `<name>.engine.jsonl` and the run folder stay file names everywhere.
const MAX_NAME_LEN: usize = 64;
/// Largest token count a length may ask for.
pub(super) const MAX_TOKENS_PER_LENGTH: i64 = 1_000_000;
/// Characters allowed in names that become file and folder names.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

pub(super) fn parse_and_validate(
    text: &str,
    origin: &str,
    base: &Path,
) -> Result<Experiment, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        // Refused here, so `validate` says what `run` would find: the config travels to every
        // agent in one gRPC message (tonic's 4 MiB default), its paths made absolute.
        return Err(ConfigError::Invalid {
            origin: origin.to_owned(),
            problems: vec![Problem {
                path: String::new(),
                message: format!(
                    "the config is {} bytes, over the {MAX_CONFIG_BYTES}-byte bound (it travels to each agent in one gRPC message of at most 4 MiB); put long prompt lists in a dataset file",
                    text.len()
                ),
            }],
        });
    }
    let mut problems = Vec::new();
    let mut unknown = Vec::new();
    let raw: Option<RawExperiment> = {
        let de = serde_yaml::Deserializer::from_str(text);
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(yaml_path(&path));
        let de = serde_ignored::Deserializer::new(de, &mut on_unknown);
        match serde_path_to_error::deserialize(de) {
            Ok(raw) => Some(raw),
            Err(e) => {
                let path = e.path().to_string();
                problems.push(Problem {
                    path: if path == "." { String::new() } else { path },
                    message: e.into_inner().to_string(),
                });
                None
            }
        }
    };
    for path in unknown {
        problems.push(Problem {
            message: "unknown key (check its spelling and place in the file)".into(),
            path,
        });
    }
    let mut checker = Checker {
        problems,
        base: base.to_owned(),
    };
    let experiment = raw.and_then(|raw| checker.experiment(raw));
    match experiment {
        Some(e) if checker.problems.is_empty() => Ok(e),
        _ => Err(ConfigError::Invalid {
            origin: origin.to_owned(),
            problems: checker.problems,
        }),
    }
}

/// Whether `limit` has the `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` form `dev=size[,dev=size…]`,
/// size a whole number with an optional K, M or G.
fn is_pinned_limit(limit: &str) -> bool {
    limit.split(',').all(|part| {
        let Some((device, size)) = part.split_once('=') else {
            return false;
        };
        let digits = size.trim_end_matches(['K', 'M', 'G']);
        let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        is_number(device) && is_number(digits) && size.len() - digits.len() <= 1
    })
}

/// The keys only a vllm engine takes, among those set.
fn vllm_only_keys(raw: &RawEngine) -> impl Iterator<Item = &'static str> {
    [
        (raw.served_model_name.is_some(), "served_model_name"),
        (raw.executable.is_some(), "executable"),
        (raw.args.is_some(), "args"),
        (raw.env.is_some(), "env"),
        (raw.env_from.is_some(), "env_from"),
        (raw.env_file.is_some(), "env_file"),
        (raw.gpu_memory_fraction.is_some(), "gpu_memory_fraction"),
        (raw.kv_cache_memory_bytes.is_some(), "kv_cache_memory_bytes"),
        (raw.startup_timeout.is_some(), "startup_timeout"),
    ]
    .into_iter()
    .filter_map(|(set, key)| set.then_some(key))
}

/// Writes a serde_ignored path as `a.b[0].c`.
fn yaml_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", yaml_path(parent)),
        P::Map { parent, key } => join(&yaml_path(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            yaml_path(parent)
        }
    }
}

pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The keys of the rate-driven arrival kinds (every kind but `trace`), each with whether
/// `raw` sets it.
pub(super) fn rate_keys(raw: &RawArrival) -> [(&'static str, bool); 10] {
    [
        ("rate", raw.rate.is_some()),
        ("cv", raw.cv.is_some()),
        ("n", raw.n.is_some()),
        ("from", raw.from.is_some()),
        ("to", raw.to.is_some()),
        ("spacing", raw.spacing.is_some()),
        ("rates", raw.rates.is_some()),
        ("concurrencies", raw.concurrencies.is_some()),
        ("steps", raw.steps.is_some()),
        ("max_concurrency", raw.max_concurrency.is_some()),
    ]
}

/// Collects problems while building typed values; a builder returns `None` when its part is
/// unusable, after recording why.
pub(super) struct Checker {
    problems: Vec<Problem>,
    /// Folder that relative file paths are taken from.
    pub(super) base: PathBuf,
}

impl Checker {
    pub(super) fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn required<T>(&mut self, value: Option<T>, path: &str) -> Option<T> {
        if value.is_none() {
            self.problem(path, "required key is missing");
        }
        value
    }

    fn name(&mut self, value: Option<String>, path: &str) -> Option<String> {
        let name = self.required(value, path)?;
        if name.is_empty() || !name.chars().all(is_name_char) {
            self.problem(
                path,
                format!("{name:?} is not a valid name: use letters, digits, '-', '_' or '.'"),
            );
            return None;
        }
        if name.len() > MAX_NAME_LEN || name.starts_with('.') {
            self.problem(
                path,
                format!("{name:?} cannot name files and folders: at most {MAX_NAME_LEN} characters, not starting with '.'"),
            );
            return None;
        }
        Some(name)
    }

    pub(super) fn duration(&mut self, value: Option<String>, path: &str) -> Option<Duration> {
        let text = value?;
        match humantime::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    path,
                    format!("{text:?} is not a duration ({e}); write e.g. 30s, 500ms or 2m"),
                );
                None
            }
        }
    }

    fn experiment(&mut self, raw: RawExperiment) -> Option<Experiment> {
        let name = self.name(raw.name, "name");
        let raw_workloads = self
            .required(raw.workloads, "workloads")
            .unwrap_or_default();
        // Tenants are checked against every defined name, so a workload with its own problems
        // does not also make each tenant that uses it look wrong.
        let workload_names: Vec<String> = raw_workloads.keys().cloned().collect();
        let mut workloads = BTreeMap::new();
        let default_slo = raw.slo.map(|s| self.slo(s, "slo")).unwrap_or_default();
        for (key, w) in raw_workloads {
            let path = format!("workloads.{key}");
            if !key.chars().all(is_name_char) {
                self.problem(&path, "workload names use letters, digits, '-', '_' or '.'");
            }
            if let Some(w) = self.workload(w, &path, &default_slo) {
                workloads.insert(key, w);
            }
        }
        let raw_nodes = self.required(raw.nodes, "nodes").unwrap_or_default();
        if raw_nodes.is_empty() {
            self.problem("nodes", "at least one node is needed");
        }
        let mut nodes = Vec::new();
        let mut node_names = HashMap::new();
        for (i, n) in raw_nodes.into_iter().enumerate() {
            let path = format!("nodes[{i}]");
            if let Some(node) = self.node(n, &path, &workload_names) {
                if let Some(first) = node_names.insert(node.name.clone(), i) {
                    self.problem(
                        &format!("{path}.name"),
                        format!(
                            "node name {:?} is already used by nodes[{first}]",
                            node.name
                        ),
                    );
                }
                nodes.push(node);
            }
        }
        for (i, node) in nodes.iter().enumerate() {
            self.stage_counts_agree(node, &workloads, &format!("nodes[{i}].tenants"));
            self.adapter_apis_match(node, &workloads, &format!("nodes[{i}].tenants"));
        }
        self.tenant_maps_match(&nodes, &workloads);
        let launcher = self.launcher(raw.launcher, &nodes);
        let searched = raw.capacity.is_some();
        let capacity = raw
            .capacity
            .and_then(|c| self.capacity(c, &nodes, &workloads));
        let cost = raw.cost.and_then(|c| self.cost(c, searched));
        Some(Experiment {
            name: name?,
            output_dir: PathBuf::from(raw.output_dir.unwrap_or_else(|| "runs".into())),
            seed: raw.seed.unwrap_or(0),
            launcher: launcher?,
            workloads,
            nodes,
            capacity,
            cost,
        })
    }

    /// Every trial of a sweep runs one stage of each tenant's workload at once, so the
    /// tenants' sweeps must have as many stages.
    fn stage_counts_agree(
        &mut self,
        node: &Node,
        workloads: &BTreeMap<String, Workload>,
        path: &str,
    ) {
        let counts: Vec<(String, usize)> = node
            .tenants
            .iter()
            .filter_map(|t| {
                let count = workloads.get(&t.workload)?.arrival.stage_count()?;
                Some((format!("{} ({} stages)", t.name, count), count))
            })
            .collect();
        if counts.windows(2).any(|w| w[0].1 != w[1].1) {
            let parts: Vec<String> = counts.into_iter().map(|(n, _)| n).collect();
            self.problem(
                path,
                format!("the tenants' sweeps run side by side, one stage per trial, so they need as many stages: {}", parts.join(", ")),
            );
        }
    }

    fn slo(&mut self, raw: RawSlo, path: &str) -> crate::slo::Slo {
        let mut slo = crate::slo::Slo::default();
        for (name, bounds, into) in [
            ("ttft_ms", raw.ttft_ms, &mut slo.ttft_ms),
            ("tpot_ms", raw.tpot_ms, &mut slo.tpot_ms),
            ("itl_ms", raw.itl_ms, &mut slo.itl_ms),
            ("e2e_ms", raw.e2e_ms, &mut slo.e2e_ms),
        ] {
            for (q, limit) in bounds.unwrap_or_default() {
                let at = format!("{path}.{name}.{q}");
                let Some(quantile) = crate::slo::Quantile::parse(&q) else {
                    let names: Vec<&str> =
                        crate::slo::Quantile::ALL.iter().map(|q| q.name()).collect();
                    self.problem(
                        &at,
                        format!("{q:?} is not a percentile: use {}", names.join(", ")),
                    );
                    continue;
                };
                if !(limit.is_finite() && limit > 0.0) {
                    self.problem(&at, format!("a bound must be > 0 ms, got {limit}"));
                    continue;
                }
                into.insert(quantile, limit);
            }
        }
        if let Some(rate) = raw.error_rate {
            if (0.0..=1.0).contains(&rate) {
                slo.error_rate = Some(rate);
            } else {
                self.problem(
                    &format!("{path}.error_rate"),
                    format!("an error rate is a share in 0..=1, got {rate}"),
                );
            }
        }
        slo
    }

    fn workload(
        &mut self,
        mut raw: RawWorkload,
        path: &str,
        default_slo: &crate::slo::Slo,
    ) -> Option<Workload> {
        let api = match raw.api.as_deref() {
            None | Some("chat") => Some(Api::Chat),
            Some("completions") => Some(Api::Completions),
            Some("embeddings") => Some(Api::Embeddings),
            Some(other) => {
                self.problem(
                    &join(path, "api"),
                    format!("{other:?} is not an API: use chat, completions or embeddings"),
                );
                None
            }
        };
        let replays = raw.arrival.as_ref().and_then(|a| a.kind.as_deref()) == Some("trace");
        let embeds = api == Some(Api::Embeddings);
        if embeds {
            self.embeddings_only(&raw, path);
            // Synthetic prompts are drawn with an output length; an embedding asks for none.
            let synthetic = |d: &RawData| {
                matches!(d.kind.as_deref(), None | Some("synthetic")) && d.profile.is_none()
            };
            if let Some(d) = raw.data.as_mut().filter(|d| !replays && synthetic(d)) {
                d.output_tokens.get_or_insert(serde_yaml::Value::from(1));
            }
        }
        let arrival_path = join(path, "arrival");
        let raw_arrival = self.required(raw.arrival, &arrival_path);
        let (arrival, trace) = match raw_arrival {
            Some(a) if replays => match self.trace(a, &arrival_path) {
                Some(t) => (
                    Some(ArrivalPlan::Single(Arrival::Trace {
                        time_scale: t.time_scale,
                    })),
                    Some(t),
                ),
                None => (None, None),
            },
            Some(a) => (self.arrival(a, &arrival_path), None),
            None => (None, None),
        };
        let data_path = join(path, "data");
        let tokenizer = raw
            .data
            .as_ref()
            .and_then(|d| d.tokenizer.clone())
            .and_then(|t| self.tokenizer(&t, &join(&data_path, "tokenizer")));
        let data = if replays {
            if let Some(d) = &raw.data {
                self.trace_data(d, &data_path);
            }
            trace.as_ref().map(|t| DataSource::Trace(t.data.clone()))
        } else {
            self.required(raw.data, &data_path)
                .and_then(|d| self.data(d, &data_path))
        };
        // A replay starts measuring at once and lasts as long as its trace, unless told.
        let warmup = self
            .duration(raw.warmup, &join(path, "warmup"))
            .unwrap_or(if replays {
                Duration::ZERO
            } else {
                DEFAULT_WARMUP
            });
        let duration_path = join(path, "duration");
        let duration = match (&trace, raw.duration) {
            (Some(t), None) => Some(
                (t.replay_span + Duration::from_millis(1))
                    .saturating_sub(warmup)
                    .max(Duration::from_millis(1)),
            ),
            // A trace that could not be read has its problem already; no duration is due.
            (None, None) if replays => None,
            (_, raw_duration) => self
                .required(raw_duration, &duration_path)
                .and_then(|d| self.duration(Some(d), &duration_path)),
        };
        if duration == Some(Duration::ZERO) {
            self.problem(
                &duration_path,
                "the measured phase must last longer than 0s",
            );
        }
        let drain_timeout = self
            .duration(raw.drain_timeout, &join(path, "drain_timeout"))
            .unwrap_or(DEFAULT_DRAIN);
        if raw.max_requests == Some(0) {
            self.problem(&join(path, "max_requests"), "must be at least 1");
        }
        let slo = match raw.slo {
            Some(own) => self.slo(own, &join(path, "slo")),
            // An embedding has no tokens streamed: the experiment's token bounds do not apply.
            None if embeds => crate::slo::Slo {
                ttft_ms: Default::default(),
                tpot_ms: Default::default(),
                itl_ms: Default::default(),
                ..default_slo.clone()
            },
            None => default_slo.clone(),
        };
        let mut request_fields = serde_json::Map::new();
        for (key, value) in raw.request_fields.unwrap_or_default() {
            let at = format!("{path}.request_fields.{key}");
            match key.as_str() {
                "model"
                | "prompt"
                | "messages"
                | "max_tokens"
                | "max_completion_tokens"
                | "stream"
                | "stream_options" => {
                    self.problem(&at, format!("`{key}` is set by the load generator from the tenant and the workload's data; it cannot be overridden"));
                }
                "ignore_eos" => self.problem(&at, "use the workload's `ignore_eos: true|false`"),
                "input" if embeds => self.problem(&at, "`input` is set by the load generator from the workload's data; it cannot be overridden"),
                _ => {
                    request_fields.insert(key, value);
                }
            }
        }
        Some(Workload {
            api: api?,
            stream: raw.stream.unwrap_or(!embeds),
            arrival: arrival?,
            data: data?,
            tokenizer,
            warmup,
            duration: duration?,
            max_requests: raw.max_requests,
            drain_timeout,
            ignore_eos: raw.ignore_eos.unwrap_or(true),
            request_fields,
            slo,
            keep_responses: raw.keep_responses.unwrap_or(0),
        })
    }

    fn arrival(&mut self, raw: RawArrival, path: &str) -> Option<ArrivalPlan> {
        let kind_path = join(path, "kind");
        let kind = self.required(raw.kind.clone(), &kind_path)?;
        let allowed: &[&str] = match kind.as_str() {
            "constant" | "poisson" => &["rate"],
            "gamma" => &["rate", "cv"],
            "concurrency" => &["n"],
            "ramp" => &["from", "to", "spacing"],
            "sweep" => &[
                "rates",
                "concurrencies",
                "steps",
                "spacing",
                "max_concurrency",
            ],
            other => {
                self.problem(
                    &kind_path,
                    format!(
                        "{other:?} is not an arrival kind: use constant, poisson, gamma, concurrency, ramp, sweep or trace"
                    ),
                );
                return None;
            }
        };
        let trace_keys = [
            ("path", raw.path.is_some()),
            ("format", raw.format.is_some()),
            ("time_scale", raw.time_scale.is_some()),
            ("start", raw.start.is_some()),
            ("limit", raw.limit.is_some()),
            ("tenant_map", raw.tenant_map.is_some()),
        ];
        for (key, _) in trace_keys.iter().filter(|(_, set)| *set) {
            self.problem(
                &join(path, key),
                format!("`{key}` applies to trace arrivals (kind: trace), not {kind}"),
            );
        }
        let given = rate_keys(&raw);
        for (key, _) in given.iter().filter(|(k, set)| *set && !allowed.contains(k)) {
            self.problem(
                &join(path, key),
                format!(
                    "`{key}` does not apply to {kind} arrivals, which take {}",
                    allowed.join(", ")
                ),
            );
        }
        match kind.as_str() {
            "constant" => {
                let rate = self.rate(raw.rate, &join(path, "rate"))?;
                Some(ArrivalPlan::Single(Arrival::Constant { rate }))
            }
            "poisson" => {
                let rate = self.rate(raw.rate, &join(path, "rate"))?;
                Some(ArrivalPlan::Single(Arrival::Poisson { rate }))
            }
            "gamma" => {
                let rate = self.rate(raw.rate, &join(path, "rate"));
                let cv_path = join(path, "cv");
                let cv = self.required(raw.cv, &cv_path)?;
                if !(cv.is_finite() && (0.01..=100.0).contains(&cv)) {
                    self.problem(&cv_path, format!("cv (the gaps' coefficient of variation) must be in 0.01..=100, got {cv}"));
                    return None;
                }
                Some(ArrivalPlan::Single(Arrival::Gamma { rate: rate?, cv }))
            }
            "concurrency" => {
                let n = self.required(raw.n, &join(path, "n"))?;
                let n = self.concurrency(n, &join(path, "n"))?;
                Some(ArrivalPlan::Single(Arrival::Concurrency { n }))
            }
            "ramp" => {
                let from = self.rate(raw.from, &join(path, "from"));
                let to = self.rate(raw.to, &join(path, "to"));
                let spacing = self.spacing(raw.spacing.as_deref(), &join(path, "spacing"));
                Some(ArrivalPlan::Single(Arrival::Ramp {
                    from: from?,
                    to: to?,
                    spacing: spacing?,
                }))
            }
            _ => self.sweep(raw, path),
        }
    }

    fn sweep(&mut self, raw: RawArrival, path: &str) -> Option<ArrivalPlan> {
        let spacing = self.spacing(raw.spacing.as_deref(), &join(path, "spacing"))?;
        match (raw.rates, raw.concurrencies, raw.steps) {
            (Some(rates), None, None) => {
                let stages: Option<Vec<Arrival>> = rates
                    .iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        let rate = self.rate(Some(r), &format!("{path}.rates[{i}]"))?;
                        Some(match spacing {
                            Spacing::Constant => Arrival::Constant { rate },
                            Spacing::Poisson => Arrival::Poisson { rate },
                        })
                    })
                    .collect();
                self.stages(stages?, &join(path, "rates"))
            }
            (None, Some(ns), None) => {
                if raw.spacing.is_some() {
                    self.problem(
                        &join(path, "spacing"),
                        "`spacing` applies to rates, not concurrencies",
                    );
                }
                let stages: Option<Vec<Arrival>> = ns
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        let n = self.concurrency(n, &format!("{path}.concurrencies[{i}]"))?;
                        Some(Arrival::Concurrency { n })
                    })
                    .collect();
                self.stages(stages?, &join(path, "concurrencies"))
            }
            (None, None, Some(steps)) => {
                let steps_path = join(path, "steps");
                let steps = match u32::try_from(steps) {
                    Ok(s) if (1..=100).contains(&s) => s,
                    _ => {
                        self.problem(
                            &steps_path,
                            format!("steps must be in 1..=100 rate stages, got {steps}"),
                        );
                        return None;
                    }
                };
                let max_concurrency = match raw.max_concurrency {
                    Some(n) => self.concurrency(n, &join(path, "max_concurrency"))?,
                    None => DEFAULT_SWEEP_MAX_CONCURRENCY,
                };
                Some(ArrivalPlan::Auto(AutoSweep {
                    steps,
                    spacing,
                    max_concurrency,
                }))
            }
            _ => {
                self.problem(
                    path,
                    "a sweep takes exactly one of: rates: [..] (one stage per rate), concurrencies: [..] (one stage per concurrency) or steps: N (synchronous, throughput, then N rates between)",
                );
                None
            }
        }
    }

    fn stages(&mut self, stages: Vec<Arrival>, path: &str) -> Option<ArrivalPlan> {
        if stages.len() < 2 {
            self.problem(path, "a sweep needs at least two stages");
            return None;
        }
        if stages.len() > 100 {
            self.problem(path, format!("{} stages is more than 100", stages.len()));
            return None;
        }
        Some(ArrivalPlan::Stages(stages))
    }

    fn rate(&mut self, value: Option<f64>, path: &str) -> Option<f64> {
        let rate = self.required(value, path)?;
        if !(rate.is_finite() && rate > 0.0) {
            self.problem(path, format!("rate must be > 0 requests/s, got {rate}"));
            return None;
        }
        if rate > MAX_RATE {
            self.problem(
                path,
                format!("{rate} requests/s is beyond what one node's load generator can send on schedule (at most {MAX_RATE}/s; about 400/s per tenant keep a 1 ms schedule on two cores)"),
            );
            return None;
        }
        Some(rate)
    }

    fn concurrency(&mut self, n: i64, path: &str) -> Option<u32> {
        match u32::try_from(n) {
            Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Some(n),
            _ => {
                self.problem(
                    path,
                    format!(
                        "n must be ≥ 1 concurrent requests (at most {MAX_CONCURRENCY}), got {n}"
                    ),
                );
                None
            }
        }
    }

    fn spacing(&mut self, value: Option<&str>, path: &str) -> Option<Spacing> {
        match value {
            None | Some("constant") => Some(Spacing::Constant),
            Some("poisson") => Some(Spacing::Poisson),
            Some(other) => {
                self.problem(
                    path,
                    format!("{other:?} is not a spacing: use constant or poisson"),
                );
                None
            }
        }
    }

    fn data(&mut self, raw: RawData, path: &str) -> Option<DataSource> {
        if raw.kind.as_deref() == Some("conversation") {
            return self.conversation(raw, path).map(DataSource::Conversation);
        }
        self.no_conversation_keys(&raw, path);
        let format = match raw.kind.as_deref() {
            None | Some("synthetic") => {
                return self.synthetic(raw, path).map(DataSource::Synthetic)
            }
            Some("sharegpt") => DatasetFormat::ShareGpt,
            Some("jsonl") => DatasetFormat::Jsonl,
            Some(other) => {
                self.problem(
                    &join(path, "kind"),
                    format!("{other:?} is not a data kind: use synthetic, sharegpt, jsonl or conversation"),
                );
                return None;
            }
        };
        for (key, set) in [
            ("prompt_tokens", raw.prompt_tokens.is_some()),
            ("profile", raw.profile.is_some()),
        ] {
            if set {
                self.problem(
                    &join(path, key),
                    format!("`{key}` applies to synthetic data; a dataset's prompts are its own"),
                );
            }
        }
        let output_path = join(path, "output_tokens");
        let output_tokens = match raw.output_tokens {
            Some(v) => Some(self.length(&v, &output_path)?),
            None => None,
        };
        let file_path = join(path, "path");
        let file = self.required(raw.path, &file_path)?;
        let file = self.base.join(file);
        let dataset = match Dataset::load(&file, format) {
            Ok(d) => d,
            Err(e) => {
                self.problem(&file_path, e.to_string());
                return None;
            }
        };
        if output_tokens.is_none() {
            let lengthless = dataset.entries.iter().find(|e| {
                e.output_tokens.is_none()
                    && !(format == DatasetFormat::ShareGpt && e.expected.is_some())
            });
            if let Some(entry) = lengthless {
                self.problem(
                    &output_path,
                    format!("{} gives no output length (no output_tokens, no reference answer); set output_tokens for such entries", entry.origin),
                );
                return None;
            }
        }
        Some(DataSource::Dataset(DatasetData {
            format,
            path: file,
            output_tokens,
        }))
    }

    fn tokenizer(&mut self, file: &str, path: &str) -> Option<PathBuf> {
        let file = self.base.join(file);
        match PromptTokenizer::load(&file) {
            Ok(_) => Some(file),
            Err(e) => {
                self.problem(path, e.to_string());
                None
            }
        }
    }

    fn synthetic(&mut self, raw: RawData, path: &str) -> Option<SyntheticData> {
        if raw.path.is_some() {
            self.problem(
                &join(path, "path"),
                "synthetic data has no file; use kind: sharegpt or jsonl",
            );
        }
        let prompt_path = join(path, "prompt_tokens");
        let output_path = join(path, "output_tokens");
        if let Some(profile) = raw.profile {
            let Some(&(_, prompt, output)) = PROFILES.iter().find(|(name, ..)| *name == profile)
            else {
                let names: Vec<&str> = PROFILES.iter().map(|(n, ..)| *n).collect();
                self.problem(
                    &join(path, "profile"),
                    format!("{profile:?} is not a profile: use {}", names.join(", ")),
                );
                return None;
            };
            if raw.prompt_tokens.is_some() || raw.output_tokens.is_some() {
                self.problem(
                    path,
                    format!("profile {profile} sets the lengths ({prompt}/{output}); drop prompt_tokens and output_tokens, or the profile"),
                );
                return None;
            }
            return Some(SyntheticData {
                prompt_tokens: LengthDist::Fixed(prompt),
                output_tokens: LengthDist::Fixed(output),
            });
        }
        let prompt = self
            .required(raw.prompt_tokens, &prompt_path)
            .and_then(|v| self.length(&v, &prompt_path));
        let output = self
            .required(raw.output_tokens, &output_path)
            .and_then(|v| self.length(&v, &output_path));
        Some(SyntheticData {
            prompt_tokens: prompt?,
            output_tokens: output?,
        })
    }

    pub(super) fn length(&mut self, value: &serde_yaml::Value, path: &str) -> Option<LengthDist> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Dist {
            mean: Option<f64>,
            stddev: Option<f64>,
            min: Option<i64>,
            max: Option<i64>,
        }
        let in_range = |c: &mut Self, v: i64, at: &str| -> Option<u32> {
            if (1..=MAX_TOKENS_PER_LENGTH).contains(&v) {
                u32::try_from(v).ok()
            } else {
                c.problem(
                    at,
                    format!("token count must be in 1..={MAX_TOKENS_PER_LENGTH}, got {v}"),
                );
                None
            }
        };
        if let Some(n) = value.as_i64() {
            return in_range(self, n, path).map(LengthDist::Fixed);
        }
        let dist: Dist = match serde_yaml::from_value(value.clone()) {
            Ok(d) => d,
            Err(e) => {
                self.problem(
                    path,
                    format!("{e}; write a number, {{mean, stddev, min, max}} or {{min, max}}"),
                );
                return None;
            }
        };
        let min = dist.min.map(|v| in_range(self, v, &join(path, "min")));
        let max = dist.max.map(|v| in_range(self, v, &join(path, "max")));
        let (min, max) = (
            min.unwrap_or(Some(1))?,
            max.unwrap_or(Some(MAX_TOKENS_PER_LENGTH as u32))?,
        );
        if min > max {
            self.problem(path, format!("min {min} is larger than max {max}"));
            return None;
        }
        match (dist.mean, dist.stddev) {
            (Some(mean), stddev) => {
                let stddev = stddev.unwrap_or(0.0);
                if !(mean.is_finite() && mean >= 1.0 && stddev.is_finite() && stddev >= 0.0) {
                    self.problem(
                        path,
                        format!("need mean ≥ 1 and stddev ≥ 0, got mean {mean}, stddev {stddev}"),
                    );
                    return None;
                }
                Some(LengthDist::Normal {
                    mean,
                    stddev,
                    min,
                    max,
                })
            }
            (None, Some(_)) => {
                self.problem(path, "stddev needs a mean");
                None
            }
            (None, None) if dist.min.is_some() && dist.max.is_some() => {
                Some(LengthDist::Uniform { min, max })
            }
            (None, None) => {
                self.problem(
                    path,
                    "give a number, {mean, stddev, min, max} or {min, max}",
                );
                None
            }
        }
    }

    fn node(&mut self, raw: RawNode, path: &str, workloads: &[String]) -> Option<Node> {
        let name = self.name(raw.name, &join(path, "name"));
        let trials = self.trials(raw.trials, &join(path, "trials"));
        let sim_gpu = SimGpu {
            mps_interference: raw.sim_gpu.and_then(|g| g.mps_interference).unwrap_or(0.35),
        };
        if !(sim_gpu.mps_interference.is_finite() && sim_gpu.mps_interference >= 0.0) {
            self.problem(
                &join(path, "sim_gpu.mps_interference"),
                "must be a number ≥ 0",
            );
        }
        let raw_tenants = self
            .required(raw.tenants, &join(path, "tenants"))
            .unwrap_or_default();
        if raw_tenants.is_empty() {
            self.problem(&join(path, "tenants"), "a node needs at least one tenant");
        }
        let mut tenants: Vec<Tenant> = Vec::new();
        // Each valid tenant's place in the file, for the paths of problems found later.
        let mut places: Vec<usize> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut ports: HashMap<u16, usize> = HashMap::new();
        for (i, t) in raw_tenants.into_iter().enumerate() {
            let tpath = format!("{path}.tenants[{i}]");
            let Some(tenant) = self.tenant(t, &tpath, workloads) else {
                continue;
            };
            if let Some(first) = names.insert(tenant.name.clone(), i) {
                self.problem(
                    &join(&tpath, "name"),
                    format!(
                        "tenant name {:?} is already used by {path}.tenants[{first}]",
                        tenant.name
                    ),
                );
            }
            if let Some(port) = tenant.port {
                if let Some(first) = ports.insert(port, i) {
                    self.problem(
                        &join(&tpath, "port"),
                        format!("port {port} is already used by {path}.tenants[{first}]; give each engine its own port"),
                    );
                }
            }
            tenants.push(tenant);
            places.push(i);
        }
        self.adapters(&mut tenants, &places, path);
        let gpu = self.shared_gpu(raw.gpu_memory.as_deref(), raw.accelerators.as_deref(), path);
        if let (Some(gpu), Some(trials)) = (&gpu, &trials) {
            self.engines_fit(&tenants, trials, gpu, path);
        }
        let default_pct_path = join(path, "mps.default_active_thread_percentage");
        let default_pct = raw.mps.and_then(|m| m.default_active_thread_percentage);
        let mps = MpsSettings {
            default_active_thread_percentage: self.percentage(default_pct, &default_pct_path)?,
        };
        Some(Node {
            name: name?,
            accelerators: raw.accelerators,
            gpu_memory_bytes: gpu.and_then(|g| g.total),
            trials: trials?,
            sim_gpu,
            mps,
            tenants,
        })
    }

    /// The GPU a node's engines share: its `gpu_memory`, or the table's figure for its
    /// accelerator, or of unknown size; `None` when `gpu_memory` is not a size.
    fn shared_gpu(
        &mut self,
        gpu_memory: Option<&str>,
        accelerators: Option<&str>,
        path: &str,
    ) -> Option<SharedGpu> {
        let Some(text) = gpu_memory else {
            let total = accelerators.and_then(accelerators::gpu_memory_bytes);
            let label = match (total, accelerators) {
                (Some(_), Some(name)) => {
                    format!("one {name} (set {path}.gpu_memory if yours has more)")
                }
                _ => "the GPU".to_owned(),
            };
            return Some(SharedGpu { total, label });
        };
        match accelerators::parse_memory(text) {
            Some(bytes) => Some(SharedGpu {
                total: Some(bytes),
                label: format!("{path}.gpu_memory"),
            }),
            None => {
                self.problem(
                    &join(path, "gpu_memory"),
                    format!("{text:?} is not a memory size: write e.g. 80G or 24576M"),
                );
                None
            }
        }
    }

    /// Refuses a node whose vLLM servers, started one after another for a shared trial, would
    /// not all pass vLLM's start-up memory check, or whose fixed KV caches alone exceed the GPU.
    fn engines_fit(
        &mut self,
        tenants: &[Tenant],
        trials: &[TrialKind],
        gpu: &SharedGpu,
        path: &str,
    ) {
        let engines: Vec<StartingEngine<'_>> = tenants
            .iter()
            .filter_map(|t| match &t.engine {
                Engine::Vllm(v) if !v.env.contains_key("CUDA_VISIBLE_DEVICES") => {
                    Some(StartingEngine {
                        tenant: &t.name,
                        memory: v.memory,
                    })
                }
                _ => None,
            })
            .collect();
        let caches: Vec<(&str, u64)> = engines
            .iter()
            .filter_map(|e| match e.memory {
                VllmMemory::KvCacheBytes { bytes, .. } => Some((e.tenant, bytes)),
                _ => None,
            })
            .collect();
        let asked: u64 = caches.iter().map(|(_, b)| b).sum();
        if let Some(total) = gpu.total.filter(|t| asked > *t) {
            let parts: Vec<String> = caches
                .iter()
                .map(|(n, b)| format!("{n} {}", accelerators::gib(*b)))
                .collect();
            self.problem(
                &join(path, "tenants"),
                format!(
                    "kv_cache_memory_bytes of the tenants sums to {} ({}), more than the {} of {}, before any model weights",
                    accelerators::gib(asked),
                    parts.join(" + "),
                    accelerators::gib(total),
                    gpu.label
                ),
            );
            return;
        }
        let shared = trials.iter().any(|k| *k != TrialKind::Solo);
        if shared && engines.len() > 1 {
            if let Some(problem) = memory_fit::start_problem(&engines, gpu) {
                self.problem(&join(path, "tenants"), problem);
            }
        }
    }

    fn trials(&mut self, raw: Option<Vec<String>>, path: &str) -> Option<Vec<TrialKind>> {
        let Some(raw) = raw else {
            return Some(vec![TrialKind::Mps]);
        };
        if raw.is_empty() {
            self.problem(
                path,
                "list at least one trial: solo, mps, timeslice or exclusive",
            );
            return None;
        }
        let mut out = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let kind = match t.as_str() {
                "solo" => TrialKind::Solo,
                "mps" => TrialKind::Mps,
                "timeslice" => TrialKind::Timeslice,
                "exclusive" => TrialKind::Exclusive,
                other => {
                    self.problem(
                        &format!("{path}[{i}]"),
                        format!("{other:?} is not a trial: use solo, mps, timeslice or exclusive"),
                    );
                    continue;
                }
            };
            if out.contains(&kind) {
                self.problem(
                    &format!("{path}[{i}]"),
                    format!("trial {t:?} is listed twice"),
                );
            }
            out.push(kind);
        }
        Some(out)
    }

    fn tenant(&mut self, raw: RawTenant, path: &str, workloads: &[String]) -> Option<Tenant> {
        let name = self.name(raw.name, &join(path, "name"));
        let workload_path = join(path, "workload");
        let workload = self.required(raw.workload, &workload_path);
        if let Some(w) = &workload {
            if !workloads.contains(w) {
                self.problem(
                    &workload_path,
                    format!("no workload named {w:?}; defined: {}", workloads.join(", ")),
                );
            }
        }
        let port = match raw.port {
            None => Some(None),
            Some(p) => match u16::try_from(p) {
                Ok(p) if p >= 1024 => Some(Some(p)),
                _ => {
                    self.problem(
                        &join(path, "port"),
                        format!("port must be in 1024..=65535, got {p}"),
                    );
                    None
                }
            },
        };
        let mut engine = self
            .required(raw.engine, &join(path, "engine"))
            .and_then(|e| self.engine(e, &join(path, "engine")));
        if let (Some(Engine::Adapter(adapter)), Some(name)) = (&mut engine, &name) {
            if adapter.model.is_empty() {
                adapter.model.clone_from(name);
            }
        }
        match (&engine, port) {
            (Some(Engine::External { .. }), Some(Some(_))) => self.problem(
                &join(path, "port"),
                "an external engine's port is part of its url",
            ),
            (Some(Engine::Adapter(a)), Some(Some(_))) => self.problem(
                &join(path, "port"),
                format!(
                    "an adapter is served on its base's port: set the port on {:?}",
                    a.of
                ),
            ),
            _ => {}
        }
        let pct_path = join(path, "mps_thread_percentage");
        let mps_thread_percentage = self.percentage(raw.mps_thread_percentage, &pct_path);
        let limit_path = join(path, "mps_pinned_memory_limit");
        let mps_pinned_memory_limit = match raw.mps_pinned_memory_limit {
            Some(limit) if !is_pinned_limit(&limit) => {
                self.problem(&limit_path, format!("{limit:?} is not a device memory limit: write e.g. \"0=16G\" or \"0=16G,1=8G\""));
                None
            }
            other => Some(other),
        };
        let is_vllm = matches!(engine, Some(Engine::Vllm(_)));
        let mps_set = matches!(mps_thread_percentage, Some(Some(_)))
            || matches!(mps_pinned_memory_limit, Some(Some(_)));
        if let (true, Some(Engine::Adapter(a))) = (mps_set, &engine) {
            self.problem(
                path,
                format!(
                    "an adapter runs inside its base's engine, so its MPS limits are {:?}'s",
                    a.of
                ),
            );
        } else if mps_set && !is_vllm && engine.is_some() {
            self.problem(path, "MPS limits apply only to vllm tenants (other engines do not use the GPU through CUDA)");
        }
        Some(Tenant {
            name: name?,
            engine: engine?,
            workload: workload?,
            port: port?,
            mps_thread_percentage: mps_thread_percentage?,
            mps_pinned_memory_limit: mps_pinned_memory_limit?,
        })
    }

    fn engine(&mut self, raw: RawEngine, path: &str) -> Option<Engine> {
        let kind = self.required(raw.kind.clone(), &join(path, "kind"))?;
        if kind != "adapter" {
            for (set, key) in [(raw.of.is_some(), "of"), (raw.adapter.is_some(), "adapter")] {
                if set {
                    self.problem(
                        &join(path, key),
                        format!("`{key}` applies only to an adapter engine"),
                    );
                }
            }
        }
        match kind.as_str() {
            "simulated" | "external" | "adapter" if vllm_only_keys(&raw).next().is_some() => {
                for key in vllm_only_keys(&raw) {
                    self.problem(
                        &join(path, key),
                        format!("`{key}` applies only to a vllm engine"),
                    );
                }
                None
            }
            "simulated" => {
                for (set, key) in [
                    (raw.url.is_some(), "url"),
                    (raw.api_key_env.is_some(), "api_key_env"),
                ] {
                    if set {
                        self.problem(
                            &join(path, key),
                            format!("`{key}` does not apply to a simulated engine"),
                        );
                    }
                }
                let timing = raw.timing.map_or(Some(SimTiming::default()), |t| {
                    self.timing(t, &join(path, "timing"))
                });
                let faults = raw.faults.map_or(Some(SimFaults::default()), |f| {
                    self.faults(f, &join(path, "faults"))
                });
                Some(Engine::Simulated {
                    model: raw.model.unwrap_or_else(|| "sim-model".into()),
                    timing: timing?,
                    faults: faults?,
                })
            }
            "external" => {
                for (set, key) in [
                    (raw.timing.is_some(), "timing"),
                    (raw.faults.is_some(), "faults"),
                ] {
                    if set {
                        self.problem(
                            &join(path, key),
                            format!("`{key}` applies only to a simulated engine"),
                        );
                    }
                }
                let url = self.required(raw.url, &join(path, "url"))?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.problem(
                        &join(path, "url"),
                        format!("{url:?} must start with http:// or https://"),
                    );
                    return None;
                }
                let model = self.required(raw.model, &join(path, "model"))?;
                Some(Engine::External {
                    url: url.trim_end_matches('/').to_owned(),
                    model,
                    api_key_env: raw.api_key_env,
                })
            }
            "vllm" => self.vllm(raw, path),
            "adapter" => self.adapter(raw, path),
            other => {
                self.problem(
                    &join(path, "kind"),
                    format!(
                        "{other:?} is not an engine kind: use simulated, vllm, external or adapter"
                    ),
                );
                None
            }
        }
    }

    /// An optional whole percentage in 1..=100: `Some(None)` when absent, `None` when invalid.
    fn percentage(&mut self, value: Option<f64>, path: &str) -> Option<Option<u32>> {
        match value {
            None => Some(None),
            Some(v) if v.fract() == 0.0 && (1.0..=100.0).contains(&v) => Some(Some(v as u32)),
            Some(v) => {
                self.problem(
                    path,
                    format!("a thread percentage is a whole number in 1..=100, got {v}"),
                );
                None
            }
        }
    }

    /// Refuses the keys of external and simulated engines (`url`, `api_key_env`, `timing`,
    /// `faults`) on an engine the agent starts from a model: `engine` says which, in words.
    pub(super) fn refuse_served_engine_keys(&mut self, raw: &RawEngine, path: &str, engine: &str) {
        for (set, key) in [
            (raw.url.is_some(), "url"),
            (raw.api_key_env.is_some(), "api_key_env"),
            (raw.timing.is_some(), "timing"),
            (raw.faults.is_some(), "faults"),
        ] {
            if set {
                self.problem(
                    &join(path, key),
                    format!("`{key}` does not apply to {engine}"),
                );
            }
        }
    }

    /// How a vLLM server's memory is bounded: a fraction, a fixed KV cache (with the fraction
    /// vLLM's start-up check asks to be free, when one is stated), or vLLM's default.
    fn vllm_memory(
        &mut self,
        fraction: Option<f64>,
        kv_bytes: Option<u64>,
        path: &str,
    ) -> Option<VllmMemory> {
        if let Some(f) = fraction.filter(|f| !(*f > 0.0 && *f <= 1.0)) {
            self.problem(
                &join(path, "gpu_memory_fraction"),
                format!("must be in (0, 1], got {f}"),
            );
            return None;
        }
        match kv_bytes {
            Some(0) => {
                self.problem(
                    &join(path, "kv_cache_memory_bytes"),
                    "must be more than 0 bytes",
                );
                None
            }
            Some(bytes) => Some(VllmMemory::KvCacheBytes {
                bytes,
                startup_fraction: fraction,
            }),
            None => Some(fraction.map_or(VllmMemory::Default, VllmMemory::Fraction)),
        }
    }

    fn vllm(&mut self, raw: RawEngine, path: &str) -> Option<Engine> {
        self.refuse_served_engine_keys(&raw, path, "a vllm engine");
        let model = self.required(raw.model, &join(path, "model"));
        let args = raw.args.unwrap_or_default();
        for (i, arg) in args.iter().enumerate() {
            let flag = arg.split('=').next().unwrap_or_default();
            if matches!(
                flag,
                "--host"
                    | "--port"
                    | "--served-model-name"
                    | "--gpu-memory-utilization"
                    | "--kv-cache-memory-bytes"
            ) {
                self.problem(
                    &format!("{path}.args[{i}]"),
                    format!("{flag} is set by the agent; use the tenant's port, engine.served_model_name, engine.gpu_memory_fraction or engine.kv_cache_memory_bytes"),
                );
            }
        }
        let env = raw.env.unwrap_or_default();
        let env_from = raw.env_from.unwrap_or_default();
        for key in env.keys().chain(&env_from) {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                self.problem(
                    &format!("{path}.env.{key}"),
                    "environment variable names use letters, digits and '_'",
                );
            }
        }
        let memory = self.vllm_memory(raw.gpu_memory_fraction, raw.kv_cache_memory_bytes, path);
        let startup_timeout = self
            .duration(raw.startup_timeout, &join(path, "startup_timeout"))
            .unwrap_or(Duration::from_secs(600));
        if model.as_deref().is_some_and(|m| m.starts_with("volume://")) {
            self.problem(
                &join(path, "model"),
                "volume:// models are not supported yet; use a hub id, s3://, gs:// or a local path",
            );
        }
        let model = model?;
        Some(Engine::Vllm(VllmEngine {
            served_model_name: raw.served_model_name.unwrap_or_else(|| model.clone()),
            model,
            executable: raw.executable.unwrap_or_else(|| "vllm".into()),
            args,
            env,
            env_from,
            env_file: raw.env_file.map(std::path::PathBuf::from),
            memory: memory?,
            startup_timeout,
        }))
    }

    fn timing(&mut self, raw: RawSimTiming, path: &str) -> Option<SimTiming> {
        let d = SimTiming::default();
        let max_batch = match raw.max_batch {
            None => Some(d.max_batch),
            Some(b) => match u32::try_from(b) {
                Ok(b) if (1..=4096).contains(&b) => Some(b),
                _ => {
                    self.problem(
                        &join(path, "max_batch"),
                        format!("must be in 1..=4096, got {b}"),
                    );
                    None
                }
            },
        };
        let max_loras = match raw.max_loras {
            None => Some(None),
            Some(n) => match u32::try_from(n) {
                Ok(n) if (1..=1024).contains(&n) => Some(Some(n)),
                _ => {
                    self.problem(
                        &join(path, "max_loras"),
                        format!("must be in 1..=1024, got {n}"),
                    );
                    None
                }
            },
        };
        let mut micros = |value: Option<f64>, default: f64, key: &str| -> Option<f64> {
            let v = value.unwrap_or(default);
            if v.is_finite() && (0.0..=10_000_000.0).contains(&v) {
                Some(v)
            } else {
                self.problem(
                    &join(path, key),
                    format!("must be in 0..=10000000 µs, got {v}"),
                );
                None
            }
        };
        let prefill = micros(
            raw.prefill_us_per_token,
            d.prefill_us_per_token,
            "prefill_us_per_token",
        );
        let step = micros(raw.decode_step_us, d.decode_step_us, "decode_step_us");
        let per_seq = micros(
            raw.decode_step_us_per_seq,
            d.decode_step_us_per_seq,
            "decode_step_us_per_seq",
        );
        let lora = micros(
            raw.lora_step_us_per_adapter,
            d.lora_step_us_per_adapter,
            "lora_step_us_per_adapter",
        );
        let prefix_cache_tokens = raw.prefix_cache_tokens.unwrap_or(d.prefix_cache_tokens);
        if prefix_cache_tokens > MAX_PREFIX_CACHE_TOKENS {
            self.problem(
                &join(path, "prefix_cache_tokens"),
                format!("at most {MAX_PREFIX_CACHE_TOKENS} tokens (0 turns the cache off), got {prefix_cache_tokens}"),
            );
        }
        Some(SimTiming {
            max_batch: max_batch?,
            prefill_us_per_token: prefill?,
            decode_step_us: step?,
            decode_step_us_per_seq: per_seq?,
            prefix_cache_tokens: prefix_cache_tokens.min(MAX_PREFIX_CACHE_TOKENS),
            lora_step_us_per_adapter: lora?,
            max_loras: max_loras?,
        })
    }

    fn faults(&mut self, raw: RawSimFaults, path: &str) -> Option<SimFaults> {
        let mut p = |value: Option<f64>, key: &str| -> Option<f64> {
            let v = value.unwrap_or(0.0);
            if (0.0..=1.0).contains(&v) {
                Some(v)
            } else {
                self.problem(
                    &join(path, key),
                    format!("a probability must be in 0..=1, got {v}"),
                );
                None
            }
        };
        let faults = SimFaults {
            http_error: p(raw.http_error, "http_error")?,
            malformed_chunk: p(raw.malformed_chunk, "malformed_chunk")?,
            drop_connection: p(raw.drop_connection, "drop_connection")?,
        };
        if faults.http_error + faults.malformed_chunk + faults.drop_connection > 1.0 {
            self.problem(path, "fault probabilities sum over 1");
            return None;
        }
        Some(faults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: t
workloads:
  w: {arrival: {kind: poisson, rate: 4}, data: {prompt_tokens: 32, output_tokens: {mean: 16, stddev: 4, min: 2, max: 30}}, duration: 5s}
nodes:
  - name: n
    trials: [solo, mps]
    tenants:
      - {name: a, engine: {kind: simulated}, workload: w}
      - {name: b, engine: {kind: simulated}, workload: w, port: 18001}
"#;

    #[test]
    fn a_good_config_resolves_its_trials() {
        let e = Experiment::from_yaml(GOOD, "good.yaml").expect("valid");
        let node = e.node("n").expect("node n");
        let names: Vec<String> = node
            .trials(&e.workloads)
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["solo-a", "solo-b", "mps"]);
        assert_eq!(e.workloads["w"].warmup, DEFAULT_WARMUP);
        assert!(matches!(
            e.workloads["w"].data,
            DataSource::Synthetic(SyntheticData {
                output_tokens: LengthDist::Normal {
                    min: 2,
                    max: 30,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let bad = r#"
name: t
colour: blue
workloads:
  w: {arrival: {kind: poisson, rate: -1}, data: {prompt_tokens: 32, output_tokens: {mean: 3, sigma: 1}}, duration: 5s}
nodes:
  - name: n
    tenants:
      - {name: a, engine: {kind: simulated}, workload: w, port: 18001}
      - {name: b, engine: {kind: simulated}, workload: missing, port: 18001}
"#;
        let err = Experiment::from_yaml(bad, "bad.yaml").expect_err("invalid");
        let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "colour",
            "workloads.w.arrival.rate",
            "workloads.w.data.output_tokens",
            "nodes[0].tenants[1].workload",
            "nodes[0].tenants[1].port",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        assert!(
            err.to_string().starts_with("bad.yaml: 5 problem(s)"),
            "{err}"
        );
    }

    #[test]
    fn fixed_kv_caches_beyond_one_gpu_of_the_accelerator_are_refused() {
        let config = |node_extra: &str, a: u64, b: u64| {
            format!(
                "name: x\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 1}}, data: {{prompt_tokens: 4, output_tokens: 4}}, duration: 1s}}\nnodes:\n  - name: n\n    {node_extra}\n    tenants:\n      - {{name: a, workload: w, engine: {{kind: vllm, model: m1, kv_cache_memory_bytes: {a}}}}}\n      - {{name: b, workload: w, engine: {{kind: vllm, model: m2, kv_cache_memory_bytes: {b}}}}}\n"
            )
        };
        let gib = 1u64 << 30;
        let shows = |err: &crate::config::ConfigError, text: &str| err.to_string().contains(text);
        let err = Experiment::from_yaml(
            &config("accelerators: \"L4:1\"", 16 * gib, 10 * gib),
            "x.yaml",
        )
        .expect_err("26 GiB of KV cache on a 24 GiB L4");
        assert!(
            shows(&err, "nodes[0].tenants: kv_cache_memory_bytes of the tenants sums to 26.0 GiB (a 16.0 GiB + b 10.0 GiB), more than the 24.0 GiB of one L4:1 (set nodes[0].gpu_memory if yours has more)"
            ),
            "{err}"
        );
        Experiment::from_yaml(
            &config("accelerators: \"H100:1\"", 16 * gib, 10 * gib),
            "x.yaml",
        )
        .expect("fits an H100");
        Experiment::from_yaml(
            &config(
                "accelerators: \"L4:1\"\n    gpu_memory: 32G",
                16 * gib,
                10 * gib,
            ),
            "x.yaml",
        )
        .expect("the override wins over the table");
        let err = Experiment::from_yaml(&config("gpu_memory: 20G", 16 * gib, 10 * gib), "x.yaml")
            .expect_err("over the override");
        assert!(
            shows(&err, "more than the 20.0 GiB of nodes[0].gpu_memory"),
            "{err}"
        );
        let err = Experiment::from_yaml(&config("gpu_memory: lots", gib, gib), "x.yaml")
            .expect_err("not a size");
        assert!(
            shows(&err, "nodes[0].gpu_memory: \"lots\" is not a memory size"),
            "{err}"
        );
        Experiment::from_yaml(
            &config("accelerators: \"TPU-v9:1\"", 900 * gib, gib),
            "x.yaml",
        )
        .expect("an accelerator the table does not know is not judged");
    }

    #[test]
    fn vllm_engines_are_checked_for_flags_memory_and_their_sum() {
        let text = r#"
name: t
workloads:
  w: {arrival: {kind: constant, rate: 1}, data: {prompt_tokens: 4, output_tokens: 4}, duration: 1s}
nodes:
  - name: n
    trials: [solo, mps]
    tenants:
      - {name: a, workload: w, mps_thread_percentage: 50, engine: {kind: vllm, model: m1, gpu_memory_fraction: 0.6}}
      - {name: b, workload: w, engine: {kind: vllm, model: m2, gpu_memory_fraction: 0.5, args: ["--port=9"]}}
      - {name: c, workload: w, mps_thread_percentage: 150, mps_pinned_memory_limit: "0=16Q", engine: {kind: vllm, model: m3, gpu_memory_fraction: 0.1, kv_cache_memory_bytes: 8}}
      - {name: d, workload: w, engine: {kind: simulated, args: ["x"]}}
"#;
        let err = Experiment::from_yaml(text, "v.yaml").expect_err("invalid");
        let shown = err.to_string();
        for expected in [
            "nodes[0].tenants[1].engine.args[0]: --port is set by the agent",
            "nodes[0].tenants: b would not start in this node's shared trials",
            "nodes[0].tenants[3].engine.args: `args` applies only to a vllm engine",
            "nodes[0].tenants[2].mps_thread_percentage: a thread percentage is a whole number in 1..=100, got 150",
            "nodes[0].tenants[2].mps_pinned_memory_limit: \"0=16Q\" is not a device memory limit",
        ] {
            assert!(shown.contains(expected), "{expected:?} missing from:\n{shown}");
        }
        let ok = text
            .replace(
                "150, mps_pinned_memory_limit: \"0=16Q\"",
                "25, mps_pinned_memory_limit: \"0=16G,1=512M\"",
            )
            .replace("0.5, args: [\"--port=9\"]", "0.2")
            .replace(", kv_cache_memory_bytes: 8", "")
            .replace(", args: [\"x\"]", "");
        let e = Experiment::from_yaml(&ok, "v.yaml").expect("valid");
        let c = &e.nodes[0].tenants[2];
        assert_eq!(
            (
                c.mps_thread_percentage,
                c.mps_pinned_memory_limit.as_deref()
            ),
            (Some(25), Some("0=16G,1=512M"))
        );
        let Engine::Vllm(v) = &e.nodes[0].tenants[0].engine else {
            panic!("vllm engine expected")
        };
        assert_eq!(
            (
                v.served_model_name.as_str(),
                v.executable.as_str(),
                v.memory
            ),
            ("m1", "vllm", VllmMemory::Fraction(0.6))
        );
    }

    #[test]
    fn gamma_arrivals_need_a_cv_and_only_they_take_one() {
        let text = |arrival: &str| GOOD.replace("{kind: poisson, rate: 4}", arrival);
        let e =
            Experiment::from_yaml(&text("{kind: gamma, rate: 4, cv: 2}"), "g.yaml").expect("valid");
        assert_eq!(
            e.workloads["w"].arrival,
            ArrivalPlan::Single(Arrival::Gamma { rate: 4.0, cv: 2.0 })
        );
        let err =
            Experiment::from_yaml(&text("{kind: gamma, rate: 4}"), "g.yaml").expect_err("no cv");
        assert_eq!(err.problems()[0].path, "workloads.w.arrival.cv");
        let err = Experiment::from_yaml(&text("{kind: poisson, rate: 4, cv: 2}"), "g.yaml")
            .expect_err("cv on poisson");
        assert!(
            err.to_string()
                .contains("`cv` does not apply to poisson arrivals, which take rate"),
            "{err}"
        );
    }

    #[test]
    fn sweeps_expand_every_trial_into_stages() {
        let text = GOOD.replace(
            "{kind: poisson, rate: 4}",
            "{kind: sweep, rates: [2, 4, 8], spacing: poisson}",
        );
        let e = Experiment::from_yaml(&text, "s.yaml").expect("valid");
        let trials = e.node("n").expect("node").trials(&e.workloads);
        let names: Vec<&str> = trials.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "solo-a.s1",
                "solo-a.s2",
                "solo-a.s3",
                "solo-b.s1",
                "solo-b.s2",
                "solo-b.s3",
                "mps.s1",
                "mps.s2",
                "mps.s3"
            ]
        );
        let plan = &e.workloads["w"].arrival;
        assert_eq!(
            plan.stage(trials[7].stage),
            StageArrival::Fixed(Arrival::Poisson { rate: 4.0 })
        );

        let auto = GOOD.replace("{kind: poisson, rate: 4}", "{kind: sweep, steps: 3}");
        let e = Experiment::from_yaml(&auto, "a.yaml").expect("valid");
        let plan = &e.workloads["w"].arrival;
        assert_eq!(plan.stage_count(), Some(5));
        assert_eq!(
            plan.stage(Stage::new(2)),
            StageArrival::Fixed(Arrival::Concurrency { n: 256 })
        );
        let StageArrival::AutoRate { step, sweep } = plan.stage(Stage::new(5)) else {
            panic!("stage 5 is a rate stage");
        };
        assert_eq!(step, 3);
        assert!((sweep.rate(step, 1.0, 9.0) - 7.0).abs() < 1e-12);
    }

    #[test]
    fn sweeps_and_ramps_refuse_what_they_cannot_run() {
        let with = |arrival: &str| GOOD.replace("{kind: poisson, rate: 4}", arrival);
        let cases = [
            (
                "{kind: sweep, rates: [2]}",
                "workloads.w.arrival.rates",
                "at least two stages",
            ),
            (
                "{kind: sweep, rates: [2, 4], steps: 3}",
                "workloads.w.arrival",
                "exactly one of",
            ),
            (
                "{kind: sweep, concurrencies: [1, 0]}",
                "workloads.w.arrival.concurrencies[1]",
                "n must be ≥ 1",
            ),
            (
                "{kind: sweep, steps: 0}",
                "workloads.w.arrival.steps",
                "1..=100",
            ),
            (
                "{kind: ramp, from: 1, to: 0}",
                "workloads.w.arrival.to",
                "rate must be > 0",
            ),
            (
                "{kind: ramp, from: 1, to: 5, spacing: bursty}",
                "workloads.w.arrival.spacing",
                "not a spacing",
            ),
            (
                "{kind: ramp, from: 1, to: 5, rate: 3}",
                "workloads.w.arrival.rate",
                "take from, to, spacing",
            ),
        ];
        for (arrival, path, message) in cases {
            let err = Experiment::from_yaml(&with(arrival), "x.yaml").expect_err(arrival);
            let found = err
                .problems()
                .iter()
                .any(|p| p.path == path && p.message.contains(message));
            assert!(found, "{arrival}: {err}");
        }
        // Two tenants whose sweeps differ in length cannot share stages.
        let mixed = with("{kind: sweep, rates: [1, 2, 3]}")
            .replace(
                "nodes:\n",
                "  v: {arrival: {kind: sweep, rates: [1, 2]}, data: {prompt_tokens: 4, output_tokens: 4}, duration: 1s}\nnodes:\n",
            )
            .replace("workload: w, port: 18001", "workload: v, port: 18001");
        let err = Experiment::from_yaml(&mixed, "m.yaml").expect_err("mixed stages");
        assert!(
            err.to_string()
                .contains("as many stages: a (3 stages), b (2 stages)"),
            "{err}"
        );
    }

    #[test]
    fn type_errors_name_their_path() {
        let err = Experiment::from_yaml("name: t\nseed: many\n", "x.yaml").expect_err("invalid");
        assert_eq!(err.problems()[0].path, "seed");
    }

    #[test]
    fn profiles_and_datasets_resolve_and_unusable_files_are_refused() {
        let with = |data: &str| {
            GOOD.replace(
                "{prompt_tokens: 32, output_tokens: {mean: 16, stddev: 4, min: 2, max: 30}}",
                data,
            )
        };
        let e = Experiment::from_yaml(&with("{profile: rag}"), "p.yaml").expect("valid");
        assert_eq!(
            e.workloads["w"].data,
            DataSource::Synthetic(SyntheticData {
                prompt_tokens: LengthDist::Fixed(4096),
                output_tokens: LengthDist::Fixed(512),
            })
        );
        let err = Experiment::from_yaml(&with("{profile: chat, output_tokens: 9}"), "p.yaml")
            .expect_err("profile and lengths");
        assert!(
            err.to_string()
                .contains("profile chat sets the lengths (512/256)"),
            "{err}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("ok.jsonl"),
            "{\"prompt\": \"hi\", \"output_tokens\": 5}\nbad line\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("none.jsonl"), "bad line\n").expect("write");
        std::fs::write(
            dir.path().join("lengthless.jsonl"),
            "{\"prompt\": \"hi\"}\n",
        )
        .expect("write");
        let config = dir.path().join("c.yaml");
        std::fs::write(&config, with("{kind: jsonl, path: ok.jsonl}")).expect("write");
        let e = Experiment::load(&config).expect("relative to the config's folder");
        let DataSource::Dataset(data) = &e.workloads["w"].data else {
            panic!("a dataset");
        };
        assert_eq!(data.path, dir.path().join("ok.jsonl"));
        for (file, message) in [
            ("none.jsonl", "none of its 1 entries is usable"),
            ("lengthless.jsonl", "gives no output length"),
            ("missing.jsonl", "cannot read dataset"),
        ] {
            std::fs::write(&config, with(&format!("{{kind: jsonl, path: {file}}}")))
                .expect("write");
            let err = Experiment::load(&config).expect_err(file);
            assert!(err.to_string().contains(message), "{file}: {err}");
        }
        std::fs::write(
            &config,
            with("{kind: jsonl, path: lengthless.jsonl, output_tokens: 7}"),
        )
        .expect("write");
        Experiment::load(&config).expect("a default output length makes it usable");
        std::fs::write(
            &config,
            with("{profile: chat, tokenizer: nowhere/tokenizer.json}"),
        )
        .expect("write");
        let err = Experiment::load(&config).expect_err("unreadable tokenizer");
        let problem = &err.problems()[0];
        assert_eq!(problem.path, "workloads.w.data.tokenizer");
        assert!(problem.message.contains("nowhere/tokenizer.json"), "{err}");

        let sent =
            Experiment::with_absolute_paths(&with("{kind: jsonl, path: ok.jsonl}"), dir.path())
                .expect("rewritten");
        let e = Experiment::from_yaml(&sent, "sent").expect("valid from anywhere");
        let DataSource::Dataset(data) = &e.workloads["w"].data else {
            panic!("a dataset");
        };
        assert!(data.path.is_absolute() && data.path.ends_with("ok.jsonl"));
    }
}
