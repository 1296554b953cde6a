//! What a node's capacity probes say beyond each probe's verdict: the fit of every bound
//! against the rate through all probes of a search, and the output tokens per request that
//! price the capacities.

use std::collections::BTreeMap;

use super::TrialSummary;
use crate::capacity::fit::{Reading, SearchFit};
use crate::capacity::NodeCapacity;

/// Fits every bound of every search of `capacity` through the probes among `trials`.
pub(super) fn fit_searches(capacity: &mut NodeCapacity, trials: &[TrialSummary]) {
    for solo in &mut capacity.solo {
        solo.fit = search_fit(&solo.search, trials);
    }
    for shared in &mut capacity.shared {
        shared.fit = search_fit(&shared.search, trials);
    }
}

/// The fit of `search`: each tenant's bound read in each of its probes at the probe's total
/// rate, weighted by the tenant's completed requests; `None` without a measured figure.
fn search_fit(search: &str, trials: &[TrialSummary]) -> Option<SearchFit> {
    let mut bounds: Vec<(String, f64, Vec<Reading>)> = Vec::new();
    for trial in trials {
        let Some(probe) = trial.probe.as_ref().filter(|p| p.search == search) else {
            continue;
        };
        for tenant in &trial.tenants {
            let Some(slo) = &tenant.slo else { continue };
            for check in &slo.checks {
                let Some(value) = check.measured else {
                    continue;
                };
                let name = format!("{}: {}", tenant.tenant, check.bound);
                let at = match bounds.iter().position(|(n, _, _)| *n == name) {
                    Some(at) => at,
                    None => {
                        bounds.push((name, check.limit, Vec::new()));
                        bounds.len() - 1
                    }
                };
                bounds[at].2.push(Reading {
                    rate: probe.scale,
                    value,
                    weight: tenant.metrics.completed as f64,
                });
            }
        }
    }
    (!bounds.is_empty()).then(|| SearchFit::of(bounds))
}

/// Each tenant's output tokens per completed request over the node's capacity probes, the
/// requests the capacities count.
pub(super) fn output_tokens_per_request(trials: &[TrialSummary]) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for tenant in trials
        .iter()
        .filter(|t| t.probe.is_some())
        .flat_map(|t| &t.tenants)
    {
        let sum = sums.entry(tenant.tenant.clone()).or_default();
        sum.0 += tenant.metrics.output_tokens;
        sum.1 += tenant.metrics.completed;
    }
    sums.into_iter()
        .filter(|(_, (_, completed))| *completed > 0)
        .map(|(tenant, (tokens, completed))| (tenant, tokens as f64 / completed as f64))
        .collect()
}
