//! A capacity search on the agent. Its engines start once, in the search's own folder (whose
//! `agent.jsonl` holds their lifecycle and a `search` event), then probe after probe runs in a
//! folder of its own (`<search>.p<k>`, a trial like any other with a `probe` event), until the
//! policy of [`multitenant::capacity::search`] says the interval is found. Each probe is judged
//! from its own files by the same analysis that later summarises them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multitenant::analysis::analyze_trial_folder;
use multitenant::capacity::{self, Probe, ProbeVerdict, SearchPolicy};
use multitenant::config::{
    configured_rate, probe_trial_name, rescalable, with_rate, ArrivalPlan, Capacity, Direction,
    Search, SearchUntil, Stage, Trial,
};
use multitenant::events::{BudgetSpentEvent, Event, ProbeEvent, SearchEvent};
use multitenant::layout::TrialDir;

use super::clean_slate::SlateWait;
use super::context::RunContext;
use super::log::TrialLog;
use super::outcome::TrialFailure;
use super::trial::{Halt, TrialRunner};
use crate::loadgen::bound_watch::BoundWatch;
use crate::loadgen::prompts::PromptFactory;

/// What the solo searches of a run found: each tenant's highest passing rate, which the
/// shared searches start from and region directions are drawn in, and its lowest failing
/// one, with which a shared search along the mix sees when its verdict is decided.
#[derive(Debug, Default)]
pub(super) struct SoloCapacities(Mutex<HashMap<String, (f64, Option<f64>)>>);

impl SoloCapacities {
    /// The highest rate at which `tenant` passed alone.
    fn get(&self, tenant: &str) -> Option<f64> {
        self.ends(tenant).map(|(passed, _)| passed)
    }

    /// `tenant`'s highest passing and lowest failing rate alone.
    fn ends(&self, tenant: &str) -> Option<(f64, Option<f64>)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .copied()
    }

    fn set(&self, tenant: &str, passed: f64, failed: Option<f64>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_owned(), (passed, failed));
    }
}

/// Engine time the node's capacity searches have taken: each probe's, from the start of its
/// wait for empty queues to the end of its drain.
#[derive(Debug, Default)]
pub(super) struct SearchSpending(Mutex<Duration>);

impl SearchSpending {
    fn add(&self, took: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += took;
    }

    fn total(&self) -> Duration {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why a probe of `next` (its warmup and measured phase) must not start under `budget`:
    /// the node's searches would pass it. `None` while it fits, or without a budget.
    fn stop_before(
        &self,
        next: Duration,
        budget: Option<Duration>,
        at_ns: u64,
    ) -> Option<BudgetSpentEvent> {
        let budget = budget?;
        let spent = self.total();
        (spent + next > budget).then(|| BudgetSpentEvent {
            at_ns,
            spent_ms: millis(spent),
            budget_ms: millis(budget),
            next_probe_ms: millis(next),
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RunContext {
    /// Runs `search` to its end; only an I/O failure of the agent's own streams is an error.
    pub(super) async fn run_search(&self, search: &Search, cap: &Capacity) -> std::io::Result<()> {
        let tenants: Vec<&multitenant::config::Tenant> = search
            .tenants
            .iter()
            .map(|&i| &self.node.tenants[i])
            .collect();
        let mix_all = cap.mix_of(&self.experiment, &self.node);
        let mix: Vec<f64> = search.tenants.iter().map(|&i| mix_all[i]).collect();
        let solo: Vec<Option<f64>> = tenants.iter().map(|t| self.solo.get(&t.name)).collect();
        let shares = if search.tenants.len() == 1 {
            vec![1.0]
        } else {
            match search.direction.shares(&mix, &solo) {
                Some(shares) => shares,
                None => {
                    tracing::warn!(
                        "{}: skipped, a solo capacity it is drawn in is unknown",
                        search.name
                    );
                    return Ok(());
                }
            }
        };
        let start = match (
            search.tenants.len(),
            solo.iter().copied().collect::<Option<Vec<f64>>>(),
        ) {
            (1, _) => configured_rate(&self.experiment, tenants[0]).unwrap_or(cap.min_rate),
            // Half the scale at which the first tenant would reach its solo capacity.
            (_, Some(solo)) => {
                0.5 * solo
                    .iter()
                    .zip(&shares)
                    .map(|(c, s)| c / s.max(1e-9))
                    .fold(f64::INFINITY, f64::min)
            }
            _ => tenants
                .iter()
                .filter_map(|t| configured_rate(&self.experiment, t))
                .sum(),
        };
        let policy = SearchPolicy {
            start: start.clamp(cap.min_rate, cap.max_rate),
            min: cap.min_rate,
            max: cap.max_rate,
            precision: cap.precision,
            repeats: cap.repeats,
            max_probes: cap.max_probes,
            stop_when_decided: cap.until == SearchUntil::Decided,
        };
        let trial = Trial {
            name: search.name.clone(),
            mode: search.mode,
            tenants: search.tenants.clone(),
            stage: None,
        };
        let mut runner = TrialRunner::open(self, trial)?;
        runner.log.append(Event::Search(SearchEvent {
            at_ns: self.clock.now_ns(),
            search: search.name.clone(),
            tenants: tenants.iter().map(|t| t.name.clone()).collect(),
            policy,
            direction: match search.direction {
                Direction::Mix => 1,
                Direction::Region { index, .. } => index + 1,
            },
        }))?;
        let shares: BTreeMap<String, f64> = tenants
            .iter()
            .zip(&shares)
            .map(|(t, s)| (t.name.clone(), *s))
            .collect();
        // A budget spent by the searches before this one leaves its engines unstarted.
        let first = capacity::next_probe(&[], &policy).unwrap_or(policy.start);
        let first = cap.probe_warmup + probe_duration(&runner, &shares, first, cap);
        if self.budget_spent(&mut runner, search, first, cap)? {
            return runner.finish(Ok(())).await;
        }
        let set_up = runner.set_up().await;
        let probed = match set_up {
            Ok(()) => {
                self.probe_until_found(&mut runner, search, &policy, &shares, cap)
                    .await
            }
            Err(halt) => Err(halt),
        };
        if let (Ok(history), [tenant]) = (&probed, tenants.as_slice()) {
            let found = capacity::interval(history, &policy);
            if let Some(passed) = found.passed {
                self.solo.set(&tenant.name, passed, found.failed);
            }
        }
        runner.finish(probed.map(|_| ())).await
    }

    /// Whether a probe of `next` (its warmup and measured phase) would take the node's
    /// searches past `capacity.budget`; if so, the search's folder records it, and the search
    /// ends.
    fn budget_spent(
        &self,
        runner: &mut TrialRunner<'_>,
        search: &Search,
        next: Duration,
        cap: &Capacity,
    ) -> std::io::Result<bool> {
        let Some(spent) = self
            .search_spent
            .stop_before(next, cap.budget, self.clock.now_ns())
        else {
            return Ok(false);
        };
        tracing::warn!("{}: ended: {}", search.name, spent.describe());
        runner.log.append(Event::BudgetSpent(spent))?;
        Ok(true)
    }

    /// What a shared search along the mix has decided with the probes in `history`, against
    /// the solo searches before it ([`capacity::decided`]); `None` for any other search.
    fn decided(
        &self,
        search: &Search,
        history: &[Probe],
        policy: &SearchPolicy,
        shares: &BTreeMap<String, f64>,
    ) -> Option<capacity::SharingDecision> {
        let along_mix = search.tenants.len() > 1 && matches!(search.direction, Direction::Mix);
        if !(policy.stop_when_decided && along_mix) {
            return None;
        }
        let so_far = capacity::interval(history, policy);
        capacity::decided(&so_far, shares, |tenant| self.solo.ends(tenant))
    }

    /// Runs probes as the policy asks; returns them.
    async fn probe_until_found(
        &self,
        runner: &mut TrialRunner<'_>,
        search: &Search,
        policy: &SearchPolicy,
        shares: &BTreeMap<String, f64>,
        cap: &Capacity,
    ) -> Result<Vec<Probe>, Halt> {
        let mut history = Vec::new();
        // Each tenant's configured rate, once per search: a replay's is read from its trace.
        let configured: BTreeMap<String, f64> = runner
            .slots
            .iter()
            .filter_map(|s| {
                Some((
                    s.name().to_owned(),
                    configured_rate(&self.experiment, s.tenant)?,
                ))
            })
            .collect();
        while let Some(scale) = capacity::next_probe(&history, policy) {
            if self.run.is_stopping() {
                break;
            }
            let number = u32::try_from(history.len() + 1).unwrap_or(u32::MAX);
            let name = probe_trial_name(&search.name, number);
            let trial = Trial {
                name: name.clone(),
                mode: search.mode,
                tenants: search.tenants.clone(),
                stage: Stage::new(number),
            };
            // A repeat of an unsure scale measures twice as long as the try before it.
            let doublings = capacity::unsure_probes_at(&history, scale).min(MAX_DOUBLINGS);
            let mut duration = probe_duration(runner, shares, scale, cap) * 2u32.pow(doublings);
            for slot in &mut runner.slots {
                let share = shares.get(slot.name()).copied().unwrap_or(0.0);
                let ArrivalPlan::Single(arrival) = slot.workload.arrival else {
                    continue;
                };
                if let (true, Some(&configured)) =
                    (rescalable(&arrival), configured.get(slot.name()))
                {
                    slot.arrival = Some(with_rate(&arrival, configured, scale * share));
                }
                slot.load = Default::default();
                // A repeated probe sends other prompts at other instants, or it would only
                // say again what it said.
                slot.seed = self.tenant_seed(slot.tenant)
                    ^ u64::from(number).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                // The engines stay up between probes: new synthetic prompts keep their prefix
                // caches from answering a probe with an earlier probe's work (a dataset's
                // entries are only drawn in another order).
                let tokenizer = slot.workload.tokenizer.as_deref();
                if let Ok((prompts, _)) =
                    PromptFactory::new(&slot.workload.data, tokenizer, slot.seed, slot.name())
                {
                    slot.prompts = Some(Arc::new(prompts));
                }
            }
            // A trace sped up past its own length stops sending before the probe would end:
            // the probe measures only while the replay lasts (a second at least).
            if let Some(left) = replay_left(runner, cap.probe_warmup) {
                duration = duration.min(left.max(MIN_REPLAY_PROBE));
            }
            // Each tenant's percentile bounds are counted as its requests end: once one is
            // missed for certain, the probe stops.
            let stop_early = tokio_util::sync::CancellationToken::new();
            for slot in &mut runner.slots {
                slot.phases = Some((cap.probe_warmup, duration));
                let planned = scale
                    * shares.get(slot.name()).copied().unwrap_or(0.0)
                    * duration.as_secs_f64();
                slot.watch =
                    BoundWatch::new(slot.name(), &slot.workload.slo, planned, stop_early.clone())
                        .map(Arc::new);
            }
            if self.budget_spent(runner, search, cap.probe_warmup + duration, cap)? {
                break;
            }
            let probe_started = std::time::Instant::now();
            let simulated = runner.slots.iter().any(|s| s.tenant.engine.is_simulated());
            let slate = runner.wait_for_empty_queues().await;
            let mut probe_log = TrialLog::open(self, &trial, simulated)?;
            let (queue_wait_ms, queue_unknown) = match &slate {
                SlateWait::Empty { waited, unknown } => (Some(millis(*waited)), unknown.clone()),
                SlateWait::NotEmpty { waited, .. } => (Some(millis(*waited)), Vec::new()),
            };
            probe_log.append(Event::Probe(ProbeEvent {
                at_ns: self.clock.now_ns(),
                search: search.name.clone(),
                probe: number,
                scale,
                shares: shares.clone(),
                queue_wait_ms,
                queue_unknown,
            }))?;
            let measured = match slate {
                SlateWait::Empty { .. } => {
                    std::mem::swap(&mut runner.log, &mut probe_log);
                    let search_trial = std::mem::replace(&mut runner.trial, trial);
                    let measured = runner.measure().await;
                    runner.trial = search_trial;
                    std::mem::swap(&mut runner.log, &mut probe_log);
                    measured
                }
                SlateWait::NotEmpty { held, .. } => {
                    Err(TrialFailure::QueueNotEmpty { held }.into())
                }
            };
            let (died, failure) = match measured {
                Ok(()) => (false, None),
                Err(Halt::Failed(f)) => (true, Some(f)),
                Err(Halt::Io(e)) => return Err(Halt::Io(e)),
            };
            probe_log.end(self.run.stop_cause(), failure)?;
            self.search_spent.add(probe_started.elapsed());
            let folder = TrialDir {
                path: self.run.streams.root().join(&name),
                name,
            };
            let verdict = match analyze_trial_folder(&folder) {
                Ok(t) => t.probe.map(|p| p.verdict),
                Err(e) => Some(ProbeVerdict::Broken {
                    reason: e.to_string(),
                }),
            };
            let verdict = verdict.unwrap_or(ProbeVerdict::Broken {
                reason: "the probe's folder holds no probe".into(),
            });
            tracing::info!(
                "{}: probe {number} at {scale:.3}/s: {verdict:?}",
                search.name
            );
            history.push(Probe { scale, verdict });
            if died {
                // An engine that exited leaves nothing to probe with.
                break;
            }
            if let Some(decision) = self.decided(search, &history, policy, shares) {
                tracing::info!(
                    "{}: {} after {number} probes: stopped",
                    search.name,
                    decision.words()
                );
                break;
            }
        }
        Ok(history)
    }
}

/// The shortest measured phase of a probe whose trace replay runs out early.
const MIN_REPLAY_PROBE: Duration = Duration::from_secs(1);

/// How long after `warmup` the shortest of the slots' trace replays, at their probe speeds,
/// still sends; `None` without a replay.
fn replay_left(runner: &TrialRunner<'_>, warmup: Duration) -> Option<Duration> {
    runner
        .slots
        .iter()
        .filter_map(|slot| {
            let Some(multitenant::config::Arrival::Trace { time_scale }) = slot.arrival else {
                return None;
            };
            let span_ns = *slot.prompts.as_ref()?.trace_times()?.last()?;
            let lasts = Duration::from_secs_f64(span_ns as f64 / 1e9 / time_scale.max(1e-9));
            Some(lasts.saturating_sub(warmup))
        })
        .min()
}

/// The most times a repeated probe's length is doubled (`capacity.repeats` allows 5).
const MAX_DOUBLINGS: u32 = 5;

/// How long a probe at `scale` measures: the configured probe duration, or longer where a
/// tenant's share of the rate would complete too few requests in it for the percentile its SLO
/// names (with a quarter to spare), up to eight times the configured duration.
fn probe_duration(
    runner: &TrialRunner<'_>,
    shares: &BTreeMap<String, f64>,
    scale: f64,
    cap: &Capacity,
) -> Duration {
    let longest = cap.probe_duration.mul_f64(8.0);
    runner
        .slots
        .iter()
        .filter_map(|slot| {
            let rate = scale * shares.get(slot.name()).copied()?;
            let needed = slot.workload.slo.requests_needed() as f64;
            (rate > 0.0).then(|| Duration::from_secs_f64(1.25 * needed / rate))
        })
        .fold(cap.probe_duration, Duration::max)
        .min(longest)
}
