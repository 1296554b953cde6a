//! Validation of `capacity:` against the nodes and workloads it searches.

use std::collections::BTreeMap;
use std::time::Duration;

use super::capacity::{rescalable, Capacity, SearchUntil};
use super::cost::Cost;
use super::raw::{RawCapacity, RawCost};
use super::validate::Checker;
use super::{ArrivalPlan, Node, Workload};

impl Checker {
    /// `cost:`: a positive price per GPU-hour in a three-letter currency; it prices capacity
    /// figures, so it needs a `capacity:` search beside it.
    pub(super) fn cost(&mut self, raw: RawCost, searched: bool) -> Option<Cost> {
        if !searched {
            self.problem(
                "cost",
                "prices the SLO capacities, and this config searches none: add a capacity: block or remove cost:",
            );
        }
        let gpu_hour = self.required(raw.gpu_hour, "cost.gpu_hour")?;
        if !(gpu_hour.is_finite() && gpu_hour > 0.0 && gpu_hour <= 1_000.0) {
            self.problem(
                "cost.gpu_hour",
                format!(
                    "{gpu_hour} must be the price of one GPU for one hour: above 0, at most 1000"
                ),
            );
        }
        let currency = raw.currency.unwrap_or_else(|| "USD".into());
        if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())) {
            self.problem(
                "cost.currency",
                format!("{currency:?} is not a currency code: write three capital letters, e.g. USD or EUR"),
            );
        }
        Some(Cost { gpu_hour, currency })
    }

    pub(super) fn capacity(
        &mut self,
        raw: RawCapacity,
        nodes: &[Node],
        workloads: &BTreeMap<String, Workload>,
    ) -> Option<Capacity> {
        let probe = raw.probe;
        let (warmup, duration) = match probe {
            Some(p) => (
                self.duration(p.warmup, "capacity.probe.warmup"),
                self.duration(p.duration, "capacity.probe.duration"),
            ),
            None => (None, None),
        };
        let probe_warmup = warmup.unwrap_or(Duration::from_secs(2));
        let probe_duration = duration.unwrap_or(Duration::from_secs(10));
        if probe_duration.is_zero() {
            self.problem(
                "capacity.probe.duration",
                "a probe must measure for some time",
            );
        }
        let min_rate = raw.min_rate.unwrap_or(0.25);
        let max_rate = raw.max_rate.unwrap_or(256.0);
        if max_rate > 10_000.0 {
            self.problem("capacity.max_rate", format!("{max_rate} requests/s is beyond what one node's load generator can send on schedule (at most 10000/s)"));
        }
        if !(min_rate.is_finite() && min_rate > 0.0) {
            self.problem(
                "capacity.min_rate",
                format!("{min_rate} must be a rate above 0"),
            );
        }
        if !(max_rate.is_finite() && max_rate > min_rate) {
            self.problem(
                "capacity.max_rate",
                format!("{max_rate} must be above min_rate ({min_rate})"),
            );
        }
        let precision = raw.precision.unwrap_or(0.1);
        if !(precision > 0.0 && precision <= 1.0) {
            self.problem(
                "capacity.precision",
                format!("{precision} is the interval's relative width to stop at: use 0 < precision ≤ 1, e.g. 0.1"),
            );
        }
        let repeats = raw.repeats.unwrap_or(1);
        if repeats > 5 {
            self.problem("capacity.repeats", format!("{repeats}: use 0 to 5 repeats"));
        }
        let max_probes = raw.max_probes.unwrap_or(16);
        if !(3..=64).contains(&max_probes) {
            self.problem(
                "capacity.max_probes",
                format!("{max_probes}: use 3 to 64 probes per search"),
            );
        }
        let directions = raw.directions.unwrap_or(1);
        if !(1..=9).contains(&directions) {
            self.problem(
                "capacity.directions",
                format!("{directions}: use 1 to 9 directions"),
            );
        }
        if let Some(mix) = &raw.mix {
            self.capacity_mix(mix, nodes);
        }
        let budget = self.duration(raw.budget, "capacity.budget");
        let until = match raw.until.as_deref() {
            None | Some("decided") => SearchUntil::Decided,
            Some("precision") => SearchUntil::Precision,
            Some(other) => {
                self.problem(
                    "capacity.until",
                    format!("{other:?}: use decided (stop a shared search once the verdict is decided) or precision (search to the precision)"),
                );
                SearchUntil::Decided
            }
        };
        let one_probe = probe_warmup + probe_duration;
        if budget.is_some_and(|b| b < one_probe) {
            self.problem(
                "capacity.budget",
                format!("a search needs some engine time: at least one probe's warmup and duration ({}), e.g. 20m; leave budget out for none", humantime::format_duration(one_probe)),
            );
        }
        for (i, node) in nodes.iter().enumerate() {
            for (j, tenant) in node.tenants.iter().enumerate() {
                let path = format!("nodes[{i}].tenants[{j}]");
                let Some(workload) = workloads.get(&tenant.workload) else {
                    continue;
                };
                if workload.slo.is_empty() {
                    self.problem(
                        &path,
                        format!("{}: a capacity search judges every probe by the tenant's SLO, and workload {:?} has none; give it (or the experiment) an slo:", tenant.name, tenant.workload),
                    );
                }
                let can_scale = match workload.arrival {
                    ArrivalPlan::Single(a) => rescalable(&a),
                    _ => false,
                };
                if !can_scale {
                    self.problem(
                        &format!("workloads.{}.arrival", tenant.workload),
                        format!("{}: a capacity search rescales an open-loop rate or a trace's speed; use a constant, poisson, gamma or trace arrival (its rate starts the search)", tenant.name),
                    );
                }
            }
            self.shared_traces_keep_their_mix(node, workloads, raw.mix.is_some(), directions, i);
        }
        Some(Capacity {
            probe_warmup,
            probe_duration,
            min_rate,
            max_rate,
            precision,
            repeats,
            max_probes,
            mix: raw.mix,
            directions,
            budget,
            until,
        })
    }

    /// Tenants of a node that share one trace (a `tenant_map`) are sped up together by a
    /// probe, keeping the trace's own mix and its clock: a `mix` or region directions, which
    /// would give them different speeds, are refused for such a node.
    fn shared_traces_keep_their_mix(
        &mut self,
        node: &Node,
        workloads: &BTreeMap<String, Workload>,
        mix_given: bool,
        directions: u32,
        index: usize,
    ) {
        let mut sharing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for tenant in &node.tenants {
            let shared = workloads.get(&tenant.workload).is_some_and(
                |w| matches!(&w.data, super::DataSource::Trace(t) if t.tenant_map.is_some()),
            );
            if shared {
                sharing
                    .entry(tenant.workload.as_str())
                    .or_default()
                    .push(&tenant.name);
            }
        }
        for (workload, tenants) in sharing.into_iter().filter(|(_, t)| t.len() > 1) {
            let why = format!("nodes[{index}]: tenants {} share the trace of workload {workload:?}, which a probe speeds up for all of them at once, in the trace's own mix", tenants.join(", "));
            if mix_given {
                self.problem("capacity.mix", format!("{why}: leave the mix out"));
            }
            if directions > 1 {
                self.problem(
                    "capacity.directions",
                    format!("{why}: search one direction"),
                );
            }
        }
    }

    fn capacity_mix(&mut self, mix: &BTreeMap<String, f64>, nodes: &[Node]) {
        for (name, weight) in mix {
            if !nodes
                .iter()
                .any(|n| n.tenants.iter().any(|t| &t.name == name))
            {
                self.problem(&format!("capacity.mix.{name}"), "no tenant has this name");
            }
            if !(weight.is_finite() && *weight > 0.0) {
                self.problem(
                    &format!("capacity.mix.{name}"),
                    format!("{weight} must be a weight above 0"),
                );
            }
        }
        for (i, node) in nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.tenants.len() > 1)
        {
            for t in &node.tenants {
                if !mix.contains_key(&t.name) {
                    self.problem(
                        "capacity.mix",
                        format!("tenant {} of nodes[{i}] has no weight: a mix weighs every tenant of a shared node", t.name),
                    );
                }
            }
        }
    }
}
