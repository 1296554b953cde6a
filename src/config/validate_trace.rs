//! Validation of trace replay: `arrival: {kind: trace, ...}`, the `data:` it allows, and the
//! tenant map against the tenants that use the workload.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{RawArrival, RawData, RawTenantMap};
use super::validate::{join, rate_keys, Checker, MAX_RATE};
use super::{DataSource, Node, TraceData, Workload};
use crate::trace::{Route, TenantMap, Trace, TraceFormat, TraceWindow};

/// Highest `time_scale`: a trace replayed faster than this is a typo.
const MAX_TIME_SCALE: f64 = 10_000.0;
/// Lowest `time_scale`: a replay a thousand times slower than its trace.
const MIN_TIME_SCALE: f64 = 0.001;
/// Longest replay: a trace that would take longer has a time in another unit, or is not
/// meant to be replayed whole (`start` and `limit` take a part).
const MAX_REPLAY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Column values listed when a tenant map names one the trace does not have.
const VALUES_SHOWN: usize = 10;

/// A checked trace arrival.
pub(super) struct CheckedTrace {
    /// Trace time is divided by this.
    pub time_scale: f64,
    /// The trace, as the workload's data.
    pub data: TraceData,
    /// From the window's start to its last record, scaled.
    pub replay_span: Duration,
}

impl Checker {
    /// Checks a trace arrival and reads its file (so `validate` finds what `run` would).
    pub(super) fn trace(&mut self, raw: RawArrival, path: &str) -> Option<CheckedTrace> {
        const TAKES: [&str; 6] = [
            "path",
            "format",
            "time_scale",
            "start",
            "limit",
            "tenant_map",
        ];
        let given = rate_keys(&raw);
        for (key, _) in given.iter().filter(|(_, set)| *set) {
            self.problem(
                &join(path, key),
                format!(
                    "`{key}` does not apply to trace arrivals, which take {}",
                    TAKES.join(", ")
                ),
            );
        }
        let format_path = join(path, "format");
        let format = self.required(raw.format, &format_path).and_then(|name| {
            let format = TraceFormat::from_name(&name);
            if format.is_none() {
                let names: Vec<&str> = TraceFormat::ALL.iter().map(|(n, _)| *n).collect();
                self.problem(
                    &format_path,
                    format!("{name:?} is not a trace format: use {}", names.join(", ")),
                );
            }
            format
        });
        let scale_path = join(path, "time_scale");
        let time_scale = raw.time_scale.unwrap_or(1.0);
        let scale_ok = (MIN_TIME_SCALE..=MAX_TIME_SCALE).contains(&time_scale);
        if !scale_ok {
            self.problem(
                &scale_path,
                format!("time_scale divides the trace's times (10 replays it ten times faster): it must be in {MIN_TIME_SCALE}..={MAX_TIME_SCALE}, got {time_scale}"),
            );
        }
        let start = self
            .duration(raw.start, &join(path, "start"))
            .unwrap_or_default();
        if raw.limit == Some(0) {
            self.problem(&join(path, "limit"), "must be at least 1 record");
        }
        let map_path = join(path, "tenant_map");
        let tenant_map = match raw.tenant_map {
            Some(m) => Some(self.tenant_map(m, &map_path)?),
            None => None,
        };
        let file_path = join(path, "path");
        let file = self.required(raw.path, &file_path)?;
        let file = self.base.join(file);
        let window = TraceWindow {
            start,
            limit: raw.limit.filter(|&n| n > 0),
            column: tenant_map.as_ref().map(|m| m.column.clone()),
        };
        let format = format?;
        let trace = match Trace::load(&file, format, &window) {
            Ok(t) => t,
            Err(e) => {
                self.problem(&file_path, e.to_string());
                return None;
            }
        };
        if !scale_ok {
            return None;
        }
        if let Some(map) = &tenant_map {
            // A listed value the trace lacks is named as such; a hash may route a tenant
            // nothing at all.
            if let Route::Values(values) = &map.route {
                self.values_occur(&trace, &map.column, values, &map_path);
            }
            let hashed = matches!(map.route, Route::Hash(_));
            for tenant in map.tenants().into_iter().filter(|_| hashed) {
                if trace.records_of(tenant, Some(map)).is_empty() {
                    self.problem(
                        &map_path,
                        format!(
                            "routes none of the window's {} records to {tenant}",
                            trace.records.len()
                        ),
                    );
                }
            }
        }
        let replay_span = match Duration::try_from_secs_f64(trace.span().as_secs_f64() / time_scale)
        {
            Ok(span) if span <= MAX_REPLAY => span,
            _ => {
                self.problem(
                    &scale_path,
                    format!(
                        "replayed ×{time_scale}, the trace's {:.0} s would take longer than {}; is a time in another unit? (start and limit replay a part)",
                        trace.span().as_secs_f64(),
                        humantime::format_duration(MAX_REPLAY)
                    ),
                );
                return None;
            }
        };
        let records = trace.records.len() as f64;
        // Records sent in one instant are judged as if spread over a millisecond.
        let rate = records / replay_span.as_secs_f64().max(1e-3);
        if rate > MAX_RATE {
            self.problem(
                &scale_path,
                format!(
                    "replayed ×{time_scale}, the trace's {records} records over {:.3} s arrive at {rate:.0}/s on average, beyond what one node's load generator sends on schedule (at most {MAX_RATE}/s)",
                    replay_span.as_secs_f64(),
                ),
            );
            return None;
        }
        Some(CheckedTrace {
            time_scale,
            data: TraceData {
                format,
                path: file,
                window,
                tenant_map,
            },
            replay_span,
        })
    }

    fn tenant_map(&mut self, raw: RawTenantMap, path: &str) -> Option<TenantMap> {
        let column = self.required(raw.column, &join(path, "column"));
        let route = match (raw.to, raw.hash) {
            (Some(to), None) if !to.is_empty() => Route::Values(to),
            (None, Some(hash)) if !hash.is_empty() => Route::Hash(hash),
            _ => {
                self.problem(
                    path,
                    "a tenant map takes one of: to: {<column value>: <tenant>, ...} or hash: [<tenant>, ...] (a hash of the value picks one)",
                );
                return None;
            }
        };
        Some(TenantMap {
            column: column?,
            route,
        })
    }

    /// Each value the map lists must occur in the trace, or its tenant would replay nothing.
    fn values_occur(
        &mut self,
        trace: &Trace,
        column: &str,
        values: &BTreeMap<String, String>,
        path: &str,
    ) {
        let mut seen: Vec<&str> = trace
            .records
            .iter()
            .filter_map(|r| r.key.as_deref())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for value in values.keys() {
            if !seen.contains(&value.as_str()) {
                let shown: Vec<&str> = seen.iter().take(VALUES_SHOWN).copied().collect();
                let more = if seen.len() > VALUES_SHOWN {
                    ", …"
                } else {
                    ""
                };
                self.problem(
                    &format!("{path}.to.{value}"),
                    format!(
                        "no record of the replayed window has {column} = {value:?} (its values: {}{more})",
                        shown.join(", ")
                    ),
                );
            }
        }
    }

    /// With a trace, `data:` may only name a tokenizer: the trace gives every length.
    pub(super) fn trace_data(&mut self, raw: &RawData, path: &str) {
        for (key, set) in [
            ("kind", raw.kind.is_some()),
            ("prompt_tokens", raw.prompt_tokens.is_some()),
            ("output_tokens", raw.output_tokens.is_some()),
            ("profile", raw.profile.is_some()),
            ("path", raw.path.is_some()),
            ("turns", raw.turns.is_some()),
            ("think_time", raw.think_time.is_some()),
            (
                "shared_system_prompt_tokens",
                raw.shared_system_prompt_tokens.is_some(),
            ),
        ] {
            if set {
                self.problem(
                    &join(path, key),
                    format!("a trace gives each request's prompt and output length; with a trace arrival, data takes only `tokenizer`, not `{key}`"),
                );
            }
        }
    }

    /// Every tenant of a workload with a tenant map is routed records, and every tenant the
    /// map names uses the workload.
    pub(super) fn tenant_maps_match(
        &mut self,
        nodes: &[Node],
        workloads: &BTreeMap<String, Workload>,
    ) {
        for (name, workload) in workloads {
            let DataSource::Trace(TraceData {
                tenant_map: Some(map),
                path: file,
                ..
            }) = &workload.data
            else {
                continue;
            };
            let users: Vec<&str> = nodes
                .iter()
                .flat_map(|n| &n.tenants)
                .filter(|t| &t.workload == name)
                .map(|t| t.name.as_str())
                .collect();
            let routed = map.tenants();
            for tenant in routed.iter().filter(|t| !users.contains(t)) {
                self.problem(
                    &format!("workloads.{name}.arrival.tenant_map"),
                    format!(
                        "routes records to {tenant:?}, which is no tenant of workload {name} (its tenants: {})",
                        if users.is_empty() { "none".into() } else { users.join(", ") }
                    ),
                );
            }
            for (i, node) in nodes.iter().enumerate() {
                for (j, tenant) in node.tenants.iter().enumerate() {
                    if &tenant.workload == name && !routed.contains(&tenant.name.as_str()) {
                        self.problem(
                            &format!("nodes[{i}].tenants[{j}].workload"),
                            format!(
                                "{} replays {} through a tenant map that routes no record to it; add it to workloads.{name}.arrival.tenant_map",
                                tenant.name,
                                file.display()
                            ),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::validate::parse_and_validate;
    use super::super::{Arrival, ArrivalPlan, ConfigError, DataSource, Experiment};

    /// A two-tenant replay of the BurstGPT sample, with `arrival` extra keys and `rest` of
    /// the file after the nodes' tenants.
    fn config(arrival: &str, data: &str, tenants: &str) -> String {
        format!(
            "name: t\nworkloads:\n  w:\n    arrival: {{kind: trace, path: configs/traces/burstgpt-sample.csv, format: burstgpt{arrival}}}\n{data}nodes:\n  - name: n\n    trials: [solo, mps]\n    tenants:\n{tenants}"
        )
    }

    const TWO: &str = "      - {name: chat, engine: {kind: simulated}, workload: w}\n      - {name: big, engine: {kind: simulated}, workload: w, port: 18001}\n";
    const MAP: &str =
        ", time_scale: 10, tenant_map: {column: Model, to: {ChatGPT: chat, GPT-4: big}}";

    fn check(text: &str) -> Result<Experiment, ConfigError> {
        parse_and_validate(text, "t.yaml", Path::new(env!("CARGO_MANIFEST_DIR")))
    }

    fn problems(text: &str) -> Vec<(String, String)> {
        match check(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e
                .problems()
                .iter()
                .map(|p| (p.path.clone(), p.message.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_trace_arrival_gives_the_data_and_lasts_as_long_as_its_trace() {
        let e = check(&config(MAP, "", TWO)).expect("valid");
        let w = &e.workloads["w"];
        assert_eq!(
            w.arrival,
            ArrivalPlan::Single(Arrival::Trace { time_scale: 10.0 })
        );
        let DataSource::Trace(t) = &w.data else {
            panic!("{:?}", w.data)
        };
        assert!(t.path.ends_with("configs/traces/burstgpt-sample.csv"));
        assert_eq!(t.window.column.as_deref(), Some("Model"));
        // The sample spans 119.927 s; ×10 that is 11.9927 s, plus 1 ms so the last is sent.
        assert_eq!(w.warmup, std::time::Duration::ZERO);
        assert_eq!(w.duration, std::time::Duration::from_micros(11_993_700));
    }

    #[test]
    fn a_tenant_map_must_match_the_tenants_and_the_trace() {
        let stray = config(
            ", tenant_map: {column: Model, to: {ChatGPT: chat, GPT-4: nobody}}",
            "",
            TWO,
        );
        let found = problems(&stray);
        assert!(
            found
                .iter()
                .any(|(p, m)| p == "workloads.w.arrival.tenant_map"
                    && m.contains(
                        "\"nobody\", which is no tenant of workload w (its tenants: chat, big)"
                    )),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|(p, m)| p == "nodes[0].tenants[1].workload"
                    && m.contains("routes no record to it")),
            "{found:?}"
        );
        let typo = config(
            ", tenant_map: {column: Model, to: {ChatGPT: chat, GPT4: big}}",
            "",
            TWO,
        );
        let found = problems(&typo);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "workloads.w.arrival.tenant_map.to.GPT4");
        assert!(
            found[0].1.contains("(its values: ChatGPT, GPT-4)"),
            "{found:?}"
        );
        // The sample's two models both hash to chat: big would replay nothing.
        let hashed = config(", tenant_map: {column: Model, hash: [chat, big]}", "", TWO);
        let found = problems(&hashed);
        assert_eq!(
            found,
            [(
                "workloads.w.arrival.tenant_map".to_owned(),
                "routes none of the window's 504 records to big".to_owned()
            )]
        );
        let column = config(", tenant_map: {column: model, hash: [chat, big]}", "", TWO);
        let found = problems(&column);
        assert!(found[0].1.contains("no column \"model\""), "{found:?}");
    }

    #[test]
    fn bad_trace_settings_are_refused_where_they_are() {
        let cases = [
            (
                config(", rate: 3", "", TWO),
                "workloads.w.arrival.rate",
                "does not apply to trace",
            ),
            (
                config(MAP, "    data: {prompt_tokens: 12}\n", TWO),
                "workloads.w.data.prompt_tokens",
                "data takes only `tokenizer`",
            ),
            (
                config(", time_scale: 0", "", TWO),
                "workloads.w.arrival.time_scale",
                "must be in 0.001..=10000",
            ),
            (
                config(
                    ", time_scale: 9000, tenant_map: {column: Model, to: {ChatGPT: chat, GPT-4: big}}",
                    "",
                    TWO,
                ),
                "workloads.w.arrival.time_scale",
                "beyond what one node's load generator sends on schedule",
            ),
            (
                config(", limit: 0", "", TWO),
                "workloads.w.arrival.limit",
                "at least 1",
            ),
            (
                config(", tenant_map: {column: Model}", "", TWO),
                "workloads.w.arrival.tenant_map",
                "takes one of: to:",
            ),
            (
                config(", start: 10m", "", TWO),
                "workloads.w.arrival.path",
                "before start 10m",
            ),
        ];
        for (text, path, message) in cases {
            let found = problems(&text);
            assert!(
                found.iter().any(|(p, m)| p == path && m.contains(message)),
                "{path}: {message}: {found:?}"
            );
        }
        let not_a_trace = config("", "", TWO).replace("kind: trace", "kind: poisson, rate: 2");
        let found = problems(&not_a_trace);
        assert!(
            found.iter().any(|(p, m)| p == "workloads.w.arrival.path"
                && m.contains("applies to trace arrivals (kind: trace), not poisson")),
            "{found:?}"
        );
        let wrong_format = config("", "", TWO).replace("format: burstgpt", "format: csv");
        let found = problems(&wrong_format);
        assert_eq!(found[0].0, "workloads.w.arrival.format");
        assert!(found[0].1.contains("use mooncake, azure, burstgpt, jsonl"));
        let missing = config("", "", TWO).replace("burstgpt-sample", "none");
        let found = problems(&missing);
        assert_eq!(found[0].0, "workloads.w.arrival.path");
        assert!(found[0].1.contains("cannot read trace"), "{found:?}");
    }

    #[test]
    fn a_time_in_another_unit_is_refused_not_replayed_for_decades() {
        let dir = tempfile::tempdir().expect("tmp");
        // Milliseconds from the start, then one line in milliseconds since 1970.
        std::fs::write(
            dir.path().join("t.jsonl"),
            "{\"time_ms\": 0, \"prompt_tokens\": 4, \"output_tokens\": 4}\n{\"time_ms\": 1733000000000, \"prompt_tokens\": 4, \"output_tokens\": 4}\n",
        )
        .expect("write");
        let text = "name: t\nworkloads:\n  w: {arrival: {kind: trace, path: t.jsonl, format: jsonl}}\nnodes:\n  - name: n\n    tenants:\n      - {name: a, engine: {kind: simulated}, workload: w}\n";
        let err = parse_and_validate(text, "t.yaml", dir.path()).expect_err("decades");
        let found: Vec<(String, String)> = err
            .problems()
            .iter()
            .map(|p| (p.path.clone(), p.message.clone()))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "workloads.w.arrival.time_scale");
        assert!(
            found[0].1.contains("is a time in another unit?"),
            "{found:?}"
        );
    }

    #[test]
    fn a_trace_path_is_mapped_like_a_dataset() {
        let text = config(MAP, "", TWO);
        let mapped = Experiment::map_file_paths(&text, |p| format!("/node/{p}")).expect("yaml");
        assert!(
            mapped.contains("path: /node/configs/traces/burstgpt-sample.csv"),
            "{mapped}"
        );
    }
}
