//! `capacity:`: the SLO capacity search of an experiment, and the searches it plans per node.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Arrival, Experiment, Node, SharingMode, TrialKind};

/// How capacity is searched (`capacity:` at the top of a config).
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// Each probe's unmeasured start.
    pub probe_warmup: Duration,
    /// Each probe's measured phase.
    pub probe_duration: Duration,
    /// Lowest scale probed (requests per second).
    pub min_rate: f64,
    /// Highest scale probed.
    pub max_rate: f64,
    /// Bisection stops when (lowest fail − highest pass) / highest pass is at most this.
    pub precision: f64,
    /// Extra tries of a probe whose verdict is not significant.
    pub repeats: u32,
    /// Probes per search at most, repeats included.
    pub max_probes: u32,
    /// Weights of the tenants' shares of a shared probe's total rate, by tenant name; `None`:
    /// the ratio of their configured rates.
    pub mix: Option<BTreeMap<String, f64>>,
    /// Shared searches per sharing mode, each along its own mix direction (the first is the
    /// mix); more than one draws the capacity region of two or more tenants.
    pub directions: u32,
    /// Engine time all of a node's searches may take together; `None`: no bound. A probe
    /// whose warmup and measured phase would take the node past it is not started, and its
    /// search ends with what it knew. The probes' waits for empty queues and drains count once
    /// they have happened (so the last probe may overrun by those); engine start-ups do not.
    pub budget: Option<Duration>,
    /// When a shared search along the mix stops (`until:`).
    pub until: SearchUntil,
}

/// When a shared search along the mix stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchUntil {
    /// Once its GPU-equivalents range decides the verdict, or its interval is as narrow as
    /// asked, whichever comes first (`until: decided`, the default).
    #[default]
    Decided,
    /// Only once its interval is as narrow as asked (`until: precision`): a shared capacity
    /// to the precision, for sizing, at the cost of the probes a decision did not need.
    Precision,
}

/// Which way a shared search scales its tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The configured mix.
    Mix,
    /// Region direction `index` (1-based) of `of`, in fractions of each tenant's solo
    /// capacity: known only once the solo searches have run.
    Region {
        /// Which one, from 1.
        index: u32,
        /// Of how many directions in all (the mix included).
        of: u32,
    },
}

/// One capacity search of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// Its name: `cap-solo-<tenant>`, `cap-<mode>`, `cap-<mode>-d<k>`; its probes are the
    /// trials `<name>.p<k>`.
    pub name: String,
    /// The sharing mode its probes run under.
    pub mode: SharingMode,
    /// Indices into [`Node::tenants`].
    pub tenants: Vec<usize>,
    /// How its tenants are scaled together (solo searches have one tenant).
    pub direction: Direction,
}

/// The trial name of probe `probe` (1-based) of `search`.
pub fn probe_trial_name(search: &str, probe: u32) -> String {
    format!("{search}.p{probe:02}")
}

impl Capacity {
    /// The share of a shared probe's total rate that each of `node`'s tenants gets along the
    /// configured mix, in tenant order; they sum to 1.
    pub fn mix_of(&self, experiment: &Experiment, node: &Node) -> Vec<f64> {
        let weights: Vec<f64> = node
            .tenants
            .iter()
            .map(|t| match &self.mix {
                Some(mix) => mix.get(&t.name).copied().unwrap_or(0.0),
                None => configured_rate(experiment, t).unwrap_or(0.0),
            })
            .collect();
        normalised(&weights)
    }

    /// The searches `node` runs: every tenant alone, then, for `mps` and `timeslice` among its
    /// trials, one search per direction. `exclusive` is not searched: its tenants take turns,
    /// so each probe would test every tenant alone and count one GPU as several.
    pub fn searches(&self, node: &Node) -> Vec<Search> {
        let mut out: Vec<Search> = node
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| Search {
                name: format!("cap-solo-{}", t.name),
                mode: SharingMode::Solo,
                tenants: vec![i],
                direction: Direction::Mix,
            })
            .collect();
        if node.tenants.len() < 2 {
            return out;
        }
        for kind in &node.trials {
            let mode = match kind {
                TrialKind::Solo | TrialKind::Exclusive => continue,
                TrialKind::Mps => SharingMode::Mps,
                TrialKind::Timeslice => SharingMode::Timeslice,
            };
            let tenants: Vec<usize> = (0..node.tenants.len()).collect();
            out.push(Search {
                name: format!("cap-{}", mode.name()),
                mode,
                tenants: tenants.clone(),
                direction: Direction::Mix,
            });
            for index in 1..self.directions {
                out.push(Search {
                    name: format!("cap-{}-d{}", mode.name(), index + 1),
                    mode,
                    tenants: tenants.clone(),
                    direction: Direction::Region {
                        index,
                        of: self.directions,
                    },
                });
            }
        }
        out
    }
}

impl Direction {
    /// The tenants' shares along this direction, given their solo capacities (`None` where a
    /// tenant's is unknown) and the configured `mix`: region directions spread evenly between
    /// the axes in fractions of solo capacity, so they trace the frontier against the
    /// straight line between the solo capacities.
    pub fn shares(self, mix: &[f64], solo: &[Option<f64>]) -> Option<Vec<f64>> {
        match self {
            Direction::Mix => Some(mix.to_vec()),
            Direction::Region { index, of } => {
                let solo: Vec<f64> = solo.iter().copied().collect::<Option<Vec<f64>>>()?;
                let n = solo.len();
                let weights: Vec<f64> = if n == 2 {
                    let angle = std::f64::consts::FRAC_PI_2 * f64::from(index) / f64::from(of);
                    vec![angle.cos() * solo[0], angle.sin() * solo[1]]
                } else {
                    // One tenant at a time weighted three times the others.
                    let heavy = (index as usize - 1) % n;
                    (0..n)
                        .map(|i| if i == heavy { 3.0 } else { 1.0 } * solo[i])
                        .collect()
                };
                Some(normalised(&weights))
            }
        }
    }
}

/// A tenant's configured request rate, when its arrival is open-loop.
pub fn configured_rate(experiment: &Experiment, tenant: &super::Tenant) -> Option<f64> {
    let workload = experiment.workloads.get(&tenant.workload)?;
    match workload.arrival {
        super::ArrivalPlan::Single(Arrival::Trace { time_scale }) => {
            replay_rate(workload, &tenant.name, time_scale)
        }
        super::ArrivalPlan::Single(a) => open_loop_rate(&a),
        _ => None,
    }
}

/// The requests per second a replay of `workload`'s trace sends to `tenant` at `time_scale`:
/// its records over the trace's span, sped up. Reads the trace; `None` when it cannot be read
/// or sends the tenant nothing.
fn replay_rate(workload: &super::Workload, tenant: &str, time_scale: f64) -> Option<f64> {
    let super::DataSource::Trace(data) = &workload.data else {
        return None;
    };
    let trace = crate::trace::Trace::load(&data.path, data.format, &data.window).ok()?;
    let records = trace.records_of(tenant, data.tenant_map.as_ref()).len();
    let span_s = trace.span().as_secs_f64();
    (records > 0 && span_s > 0.0).then(|| records as f64 / span_s * time_scale)
}

/// Whether a probe can rescale `arrival`: an open loop's rate, or a trace replay's speed.
pub fn rescalable(arrival: &Arrival) -> bool {
    open_loop_rate(arrival).is_some() || matches!(arrival, Arrival::Trace { .. })
}

/// The rate of an open-loop arrival process that a probe can rescale.
pub fn open_loop_rate(arrival: &Arrival) -> Option<f64> {
    match arrival {
        Arrival::Constant { rate } | Arrival::Poisson { rate } | Arrival::Gamma { rate, .. } => {
            Some(*rate)
        }
        _ => None,
    }
}

/// `arrival`, which offers `configured` requests/s, made to offer `rate`: an open loop's rate
/// replaced, a trace replayed that much faster (its bursts and lulls kept, in proportion).
pub fn with_rate(arrival: &Arrival, configured: f64, rate: f64) -> Arrival {
    match *arrival {
        Arrival::Constant { .. } => Arrival::Constant { rate },
        Arrival::Gamma { cv, .. } => Arrival::Gamma { rate, cv },
        Arrival::Trace { time_scale } => {
            let sped_up = time_scale * rate / configured.max(f64::MIN_POSITIVE);
            // To a billionth: the tenants of one shared trace, whose rates are its shares,
            // then get the very same speed, not speeds a rounding error apart.
            Arrival::Trace {
                time_scale: (sped_up * 1e9).round() / 1e9,
            }
        }
        _ => Arrival::Poisson { rate },
    }
}

fn normalised(weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    if total > 0.0 {
        weights.iter().map(|w| w / total).collect()
    } else {
        vec![1.0 / weights.len().max(1) as f64; weights.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_directions_spread_between_the_axes_in_fractions_of_solo() {
        let solo = [Some(10.0), Some(30.0)];
        let mid = Direction::Region { index: 1, of: 2 }
            .shares(&[0.5, 0.5], &solo)
            .expect("known");
        // 45°: equal fractions of solo capacity, so shares 10:30.
        assert!(
            (mid[0] - 0.25).abs() < 1e-9 && (mid[1] - 0.75).abs() < 1e-9,
            "{mid:?}"
        );
        assert_eq!(
            Direction::Mix.shares(&[0.2, 0.8], &solo),
            Some(vec![0.2, 0.8])
        );
        assert_eq!(
            Direction::Region { index: 1, of: 3 }.shares(&[0.5, 0.5], &[None, Some(1.0)]),
            None
        );
    }
}
