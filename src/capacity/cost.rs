//! What the capacities cost, when the config prices a GPU-hour (`cost:`): each tenant alone
//! and each shared mode at its capacity, per million output tokens, and the GPUs and money
//! sharing saves at the traffic the config sends.
//!
//! Prices at capacity are taken at the highest rate that passed (the low end of each
//! interval): what the probes proved, never more. A saving is proven the same way: the shared
//! GPUs at the rates that passed against the dedicated GPUs at the rates that failed, the
//! fewest dedicated GPUs could need.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{round3, NodeCapacity, SharedCapacity};
use crate::config::{Cost, SharingMode, HOURS_PER_MONTH};

/// One node's capacities priced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityCost {
    /// Price of one GPU for one hour.
    pub gpu_hour: f64,
    /// The currency of every price here.
    pub currency: String,
    /// Each tenant alone on a GPU at its solo capacity.
    pub solo: Vec<SoloCost>,
    /// Each shared mode's mix search at its shared capacity.
    pub shared: Vec<SharedCost>,
}

/// One tenant alone at its solo capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoloCost {
    /// The tenant.
    pub tenant: String,
    /// Output tokens per completed request, over all its probes on the node.
    pub output_tokens_per_request: f64,
    /// Price of a million output tokens with one GPU serving it alone at capacity.
    pub per_million_output_tokens: f64,
}

/// One shared mode at its capacity along the configured mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedCost {
    /// The sharing mode.
    pub mode: SharingMode,
    /// Price of a million output tokens, all tenants' together, on one shared GPU at capacity.
    pub per_million_output_tokens: f64,
    /// What the configured traffic needs, dedicated against shared; `None` when a tenant has
    /// no configured rate (closed loop), or its solo search found no failing rate or the
    /// shared one no passing rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficCost>,
}

/// The GPUs the configured traffic needs, each tenant on GPUs of its own against all of them
/// on shared GPUs, and what the difference costs a month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficCost {
    /// Σ_i rate_i / F_i, with F_i the lowest rate at which tenant i failed alone: the fewest
    /// GPUs in proportion that could carry the traffic with each tenant on its own.
    pub dedicated_gpus: f64,
    /// max_i rate_i / shared rate_i at the highest passing shared rate: shared GPUs proven
    /// enough for every tenant's part of the mix.
    pub shared_gpus: f64,
    /// Σ_i ⌈rate_i / F_i⌉: the fewest whole GPUs, each tenant on its own.
    pub dedicated_whole: u64,
    /// ⌈shared GPUs⌉: whole shared GPUs.
    pub shared_whole: u64,
    /// (dedicated_whole − shared_whole) GPUs for a month (730.5 h); negative when sharing
    /// needs more.
    pub saved_per_month: f64,
}

impl CapacityCost {
    /// The prices in words, a line each: per million output tokens at capacity, then for each
    /// shared mode what the configured traffic needs dedicated (at least) and shared (enough),
    /// as the terminal and report.html give them.
    pub fn lines(&self, node: &str) -> Vec<String> {
        let currency = &self.currency;
        let at_capacity: Vec<String> = self
            .solo
            .iter()
            .map(|s| format!("{} alone {:.3}", s.tenant, s.per_million_output_tokens))
            .chain(self.shared.iter().map(|s| {
                format!(
                    "{} shared {:.3}",
                    s.mode.name(),
                    s.per_million_output_tokens
                )
            }))
            .collect();
        let mut lines = vec![format!(
            "{node}: {currency} per 1M output tokens at capacity, at {currency} {:.2} a GPU-hour: {}",
            self.gpu_hour,
            at_capacity.join(", ")
        )];
        for s in &self.shared {
            let Some(t) = &s.traffic else { continue };
            let (amount, verb) = if t.saved_per_month >= 0.0 {
                (t.saved_per_month, "saved")
            } else {
                (-t.saved_per_month, "more")
            };
            lines.push(format!(
                "{node}: the configured traffic needs at least {} GPUs with each tenant on its own ({:.2} in proportion), and {} under {} is enough ({:.2}): {currency} {amount:.2} a month {verb}",
                t.dedicated_whole,
                t.dedicated_gpus,
                t.shared_whole,
                s.mode.name(),
                t.shared_gpus,
            ));
        }
        lines
    }
}

/// `capacity` priced at `cost`, given the configured `traffic` (requests/s per tenant) and each
/// tenant's output tokens per completed request. Tenants or modes without a passing rate or
/// without tokens get no price.
pub fn node_cost(
    capacity: &NodeCapacity,
    cost: &Cost,
    traffic: &BTreeMap<String, f64>,
    tokens_per_request: &BTreeMap<String, f64>,
) -> CapacityCost {
    let per_million = |tokens_per_s: f64| {
        (tokens_per_s > 0.0).then(|| round3(cost.gpu_hour * 1e6 / (tokens_per_s * 3600.0)))
    };
    let solo_failed: BTreeMap<&str, f64> = capacity
        .solo
        .iter()
        .filter_map(|s| Some((s.tenant.as_str(), s.interval.failed?)))
        .collect();
    let solo = capacity
        .solo
        .iter()
        .filter_map(|s| {
            let tokens = *tokens_per_request.get(&s.tenant)?;
            Some(SoloCost {
                tenant: s.tenant.clone(),
                output_tokens_per_request: round3(tokens),
                per_million_output_tokens: per_million(s.interval.passed? * tokens)?,
            })
        })
        .collect();
    let shared = capacity
        .shared
        .iter()
        .filter(|s| s.mix_direction)
        .filter_map(|s| {
            let tokens_per_s = s
                .tenants
                .iter()
                .map(|t| Some(t.passed_rps? * tokens_per_request.get(&t.tenant)?))
                .sum::<Option<f64>>()?;
            Some(SharedCost {
                mode: s.mode,
                per_million_output_tokens: per_million(tokens_per_s)?,
                traffic: traffic_cost(s, &solo_failed, traffic, cost.gpu_hour),
            })
        })
        .collect();
    CapacityCost {
        gpu_hour: cost.gpu_hour,
        currency: cost.currency.clone(),
        solo,
        shared,
    }
}

/// The GPUs `traffic` needs dedicated (given each tenant's lowest failing solo rate) and under
/// `shared`, at `gpu_hour` a GPU.
fn traffic_cost(
    shared: &SharedCapacity,
    solo_failed: &BTreeMap<&str, f64>,
    traffic: &BTreeMap<String, f64>,
    gpu_hour: f64,
) -> Option<TrafficCost> {
    let mut dedicated_gpus = 0.0;
    let mut dedicated_whole = 0;
    let mut shared_gpus: f64 = 0.0;
    for t in &shared.tenants {
        let rate = *traffic.get(&t.tenant).filter(|r| **r > 0.0)?;
        let alone = rate / solo_failed.get(t.tenant.as_str())?;
        dedicated_gpus += alone;
        dedicated_whole += whole(alone);
        shared_gpus = shared_gpus.max(rate / t.passed_rps.filter(|r| *r > 0.0)?);
    }
    let shared_whole = whole(shared_gpus);
    let saved = dedicated_whole as f64 - shared_whole as f64;
    Some(TrafficCost {
        dedicated_gpus: round3(dedicated_gpus),
        shared_gpus: round3(shared_gpus),
        dedicated_whole,
        shared_whole,
        saved_per_month: (saved * gpu_hour * HOURS_PER_MONTH * 100.0).round() / 100.0,
    })
}

/// The whole GPUs that carry `gpus` of load: at least one, and a share a hair over a whole
/// number (rounding in the rates) does not take another.
fn whole(gpus: f64) -> u64 {
    ((gpus - 1e-9).ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::{Interval, SearchEnd, SharedTenant, SoloCapacity};

    fn interval(passed: f64, failed: f64) -> Interval {
        Interval {
            passed: Some(passed),
            failed: Some(failed),
            end: SearchEnd::Converged,
            probes: 4,
            flipped: Vec::new(),
            not_significant: 0,
            failed_bounds: Vec::new(),
            cut: None,
            budget_spent: None,
        }
    }

    fn node() -> NodeCapacity {
        let solo = |tenant: &str, c: f64| SoloCapacity {
            tenant: tenant.into(),
            search: format!("cap-solo-{tenant}"),
            interval: interval(c, c * 1.1),
            engine_seconds: 10.0,
            fit: None,
        };
        let tenant = |name: &str, rate: f64| SharedTenant {
            tenant: name.into(),
            passed_rps: Some(rate),
            failed_rps: Some(rate * 1.1),
            of_solo: None,
        };
        NodeCapacity {
            node: "n".into(),
            solo: vec![solo("a", 20.0), solo("b", 5.0)],
            shared: vec![SharedCapacity {
                mode: SharingMode::Mps,
                search: "cap-mps".into(),
                mix_direction: true,
                shares: BTreeMap::from([("a".into(), 0.8), ("b".into(), 0.2)]),
                interval: interval(15.0, 16.0),
                engine_seconds: 10.0,
                budget_spent: false,
                tenants: vec![tenant("a", 12.0), tenant("b", 3.0)],
                gpu_equivalents: Some(1.2),
                gpu_equivalents_range: None,
                decision: None,
                at_least: false,
                gpus_saved: Some(0.2),
                no_verdict: None,
                fit: None,
            }],
            best_mode: Some(SharingMode::Mps),
            verdict: String::new(),
            engine_seconds: 30.0,
            cost: None,
        }
    }

    fn priced_at(gpu_hour: f64, currency: &str) -> (Cost, BTreeMap<String, f64>) {
        let cost = Cost {
            gpu_hour,
            currency: currency.into(),
        };
        // Output tokens per request of a and b.
        (
            cost,
            BTreeMap::from([("a".into(), 100.0), ("b".into(), 400.0)]),
        )
    }

    #[test]
    fn prices_each_capacity_per_million_output_tokens_and_the_configured_traffic_in_whole_gpus() {
        let (cost, tokens) = priced_at(3.6, "USD");
        let traffic = BTreeMap::from([("a".into(), 8.0), ("b".into(), 2.0)]);
        let priced = node_cost(&node(), &cost, &traffic, &tokens);
        // a alone: 20 req/s × 100 tokens = 2,000 tok/s = 7.2M tok/h for 3.6: 0.5 per 1M.
        assert_eq!(priced.solo[0].per_million_output_tokens, 0.5);
        // b alone: 5 × 400 = 2,000 tok/s as well.
        assert_eq!(priced.solo[1].per_million_output_tokens, 0.5);
        // Shared: 12 × 100 + 3 × 400 = 2,400 tok/s on one GPU.
        let mps = &priced.shared[0];
        assert_eq!(mps.per_million_output_tokens, 0.417);
        // At 8 and 2 req/s: a needs at least 8/22 of a GPU (it failed alone at 22), b 2/5.5;
        // shared, 8/12 and 2/3 of one are proven enough.
        let traffic = mps.traffic.as_ref().expect("priced traffic");
        assert_eq!(traffic.dedicated_gpus, 0.727);
        assert_eq!(traffic.shared_gpus, 0.667);
        assert_eq!((traffic.dedicated_whole, traffic.shared_whole), (2, 1));
        // One GPU saved for a month: 3.6 × 730.5.
        assert_eq!(traffic.saved_per_month, 2629.8);
        assert_eq!(
            priced.lines("n"),
            [
                "n: USD per 1M output tokens at capacity, at USD 3.60 a GPU-hour: a alone 0.500, b alone 0.500, mps shared 0.417",
                "n: the configured traffic needs at least 2 GPUs with each tenant on its own (0.73 in proportion), and 1 under mps is enough (0.67): USD 2629.80 a month saved",
            ]
        );
    }

    #[test]
    fn a_tenant_without_a_rate_or_a_capacity_leaves_the_traffic_unpriced() {
        let (cost, tokens) = priced_at(2.0, "EUR");
        // b runs closed-loop: no configured rate.
        let traffic = BTreeMap::from([("a".into(), 8.0)]);
        let priced = node_cost(&node(), &cost, &traffic, &tokens);
        assert_eq!(priced.shared[0].traffic, None);
        assert_eq!(priced.currency, "EUR");
        // a's solo search found no failing rate: its capacity has no upper end, so no saving
        // can be proven.
        let traffic = BTreeMap::from([("a".into(), 8.0), ("b".into(), 2.0)]);
        let mut above = node();
        above.solo[0].interval.failed = None;
        assert_eq!(
            node_cost(&above, &cost, &traffic, &tokens).shared[0].traffic,
            None
        );
        // b's solo search found no passing rate: no price for it, and none for the pair.
        let mut failed = node();
        failed.solo[1].interval.passed = None;
        failed.shared[0].tenants[1].passed_rps = None;
        let priced = node_cost(&failed, &cost, &traffic, &tokens);
        assert_eq!(priced.solo.len(), 1);
        assert!(priced.shared.is_empty());
    }
}
