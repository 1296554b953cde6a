//! Live progress while trials run, from the events as the collectors copy them in.
//!
//! On a terminal ([`View::Live`]): one redrawn line per node (its trial, of how many, and the
//! trial's stage) and one per running tenant (requests done and failed, the rate achieved over
//! the last seconds, TTFT p50 and p99 so far (an embeddings tenant's latency end to end, as it
//! streams no token), and the time since its stream began against the
//! warm-up and measurement its stream's header says are planned), drawn by indicatif. Elsewhere
//! ([`View::Plain`]: CI logs, a pipe): a line per node at each stage change and a line per
//! running tenant every 2 s. Either way a tenant that finishes leaves one line behind.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use multitenant::config::Experiment;
use multitenant::events::{Event, Line, Phase, TrialState};
use multitenant::layout::StreamName;
use multitenant::metrics::LatencyHistogram;
use tokio_util::sync::CancellationToken;

use crate::console::{self, say, LiveGuard};

/// How progress is shown.
pub enum View {
    /// Redrawn lines on a terminal.
    Live,
    /// Printed lines, for logs and pipes.
    Plain,
}

impl View {
    /// [`View::Live`] when stderr is a terminal, else [`View::Plain`].
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            View::Live
        } else {
            View::Plain
        }
    }
}

/// How often the live view redraws, and how often plain lines are printed.
const LIVE_TICK: Duration = Duration::from_millis(250);
const PLAIN_TICK: Duration = Duration::from_secs(2);
/// The achieved rate is measured over about this much of the recent past.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// What a node's current trial is doing, as its events tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    StartingEngines,
    WarmingUp,
    Measuring,
    Draining,
    Ended(TrialState),
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Stage::StartingEngines => "starting engines",
            Stage::WarmingUp => "warming up",
            Stage::Measuring => "measuring",
            Stage::Draining => "draining in-flight requests",
            Stage::Ended(TrialState::Finished) => "finished",
            Stage::Ended(TrialState::Invalid) => "invalid",
            Stage::Ended(TrialState::Stopped) => "stopped",
            Stage::Ended(TrialState::Started) => "started",
        }
    }
}

/// One node: the trials it was given, and where it is.
#[derive(Default)]
struct NodeProgress {
    trials: Vec<String>,
    current: Option<(String, Stage)>,
    bar: Option<ProgressBar>,
}

impl NodeProgress {
    fn line(&self, node: &str) -> String {
        let Some((trial, stage)) = &self.current else {
            return format!("node {node}: waiting for its first trial");
        };
        let of = self
            .trials
            .iter()
            .position(|t| t == trial)
            .map_or(String::new(), |i| {
                format!(" ({} of {})", i + 1, self.trials.len())
            });
        format!("node {node}: trial {trial}{of}: {}", stage.describe())
    }
}

/// One tenant of one trial.
struct TenantProgress {
    done: u64,
    failed: u64,
    /// TTFT, or the latency end to end of a tenant whose answers come whole (embeddings).
    latency: LatencyHistogram,
    /// Whether answers come whole, as its stream's header says: no TTFT, latency end to end.
    answered_whole: bool,
    /// `(when, done)` at recent redraws, for the achieved rate.
    recent: VecDeque<(Instant, u64)>,
    first_seen: Instant,
    planned: Option<Duration>,
    bar: Option<ProgressBar>,
}

impl TenantProgress {
    fn new(planned: Option<Duration>) -> Self {
        Self {
            done: 0,
            failed: 0,
            latency: LatencyHistogram::default(),
            answered_whole: false,
            recent: VecDeque::new(),
            first_seen: Instant::now(),
            planned,
            bar: None,
        }
    }

    /// Requests per second done over the last [`RATE_WINDOW`], sampled now.
    fn sample_rate(&mut self, now: Instant) -> f64 {
        self.recent.push_back((now, self.done));
        while self
            .recent
            .get(1)
            .is_some_and(|&(t, _)| now.duration_since(t) >= RATE_WINDOW)
        {
            self.recent.pop_front();
        }
        let (since, done_then) = self.recent[0];
        let span = now.duration_since(since).as_secs_f64();
        if span > 0.0 {
            (self.done - done_then) as f64 / span
        } else {
            0.0
        }
    }

    /// `TTFT p50 … p99 …`, or `latency p50 …` for answers that come whole.
    fn latency_text(&self) -> String {
        let figures = self.latency.percentiles().map_or("-".to_owned(), |p| {
            format!("p50 {:.1} ms p99 {:.1} ms", p.p50, p.p99)
        });
        let what = if self.answered_whole {
            "latency"
        } else {
            "TTFT"
        };
        format!("{what} {figures}")
    }

    fn elapsed_text(&self, now: Instant) -> String {
        let elapsed = now.duration_since(self.first_seen);
        match self.planned {
            Some(planned) => format!(
                "{} of {}, {} left",
                seconds(elapsed),
                seconds(planned),
                seconds(planned.saturating_sub(elapsed))
            ),
            None => seconds(elapsed),
        }
    }

    /// Done, failed, rate, TTFT and time: the running line's text after its name.
    fn running_text(&mut self, now: Instant) -> String {
        let rate = self.sample_rate(now);
        format!(
            "done {:>6}  failed {:>4}  {rate:>7.1} req/s  {}  {}",
            self.done,
            self.failed,
            self.latency_text(),
            self.elapsed_text(now)
        )
    }

    /// The line a finished tenant leaves behind.
    fn finished_text(&self, now: Instant) -> String {
        let took = now.duration_since(self.first_seen);
        format!(
            "done {}, failed {}, {:.1} req/s overall, {}, in {}",
            self.done,
            self.failed,
            self.done as f64 / took.as_secs_f64().max(1e-3),
            self.latency_text(),
            seconds(took)
        )
    }
}

/// `2.5 s` below ten seconds, `42 s` above.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, NodeProgress>,
    /// Running tenants, keyed `node/trial/tenant`.
    tenants: BTreeMap<String, TenantProgress>,
    /// Tenants that left their line behind: a line of theirs that comes later (streams are
    /// copied side by side, so a tenant's last lines may follow its trial's end) is not shown
    /// again.
    finished: BTreeSet<String>,
}

/// Progress of one experiment's run, fed by the collectors ([`Progress::observe`]) and shown by
/// [`Progress::show_until`].
pub struct Progress {
    state: Mutex<State>,
    live: Option<Live>,
}

/// The live view's bars and the guard that routes other output above them.
struct Live {
    bars: MultiProgress,
    _above: LiveGuard,
}

impl Progress {
    /// Progress of `experiment`'s nodes and tenants, shown as `view` says.
    pub fn new(experiment: &Experiment, view: View) -> Self {
        let live = match view {
            View::Live => {
                let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let _above = console::draw_above(&bars);
                Some(Live { bars, _above })
            }
            View::Plain => None,
        };
        let mut state = State::default();
        for node in &experiment.nodes {
            let mut progress = NodeProgress::default();
            if let Some(live) = &live {
                let bar = live.bars.add(ProgressBar::new_spinner());
                bar.set_message(progress.line(&node.name));
                progress.bar = Some(bar);
            }
            state.nodes.insert(node.name.clone(), progress);
        }
        Self {
            state: Mutex::new(state),
            live,
        }
    }

    /// Records the trials `node` was given, in the order it runs them.
    pub fn set_trials(&self, node: &str, trials: &[String]) {
        let mut state = self.lock();
        if let Some(n) = state.nodes.get_mut(node) {
            n.trials = trials.to_vec();
        }
    }

    /// Takes one line of `node`'s stream at `path` (`<trial>/<file>` in its run folder).
    pub fn observe(&self, node: &str, path: &str, line: &Line) {
        let Some((trial, file)) = path.rsplit_once('/') else {
            return;
        };
        match (StreamName::parse(file), &line.event) {
            (Some(StreamName::Agent), Event::Trial(t)) => {
                let stage = match t.state {
                    TrialState::Started => Stage::StartingEngines,
                    ended => Stage::Ended(ended),
                };
                match stage {
                    // The node's earlier trials are over: their tenants' lines go (not this
                    // trial's, whose first lines may have come before this one).
                    Stage::StartingEngines => self.finish_tenants(node, |t| t != trial),
                    // A finished trial's tenants end with their own last lines, which may come
                    // after the agent's record of the end (the streams come in apart).
                    Stage::Ended(TrialState::Finished) => {}
                    Stage::Ended(_) => self.finish_tenants(node, |t| t == trial),
                    _ => {}
                }
                self.stage(node, trial, stage);
            }
            (Some(StreamName::Tenant(tenant)), Event::Header(h)) => {
                let planned = h
                    .tenant
                    .as_ref()
                    .and_then(|t| t.planned_ms)
                    .map(Duration::from_millis);
                let answered_whole = h.tenant.as_ref().is_some_and(|t| !t.api.generates());
                let mut state = self.lock();
                if let Some(t) = self.tenant(&mut state, node, trial, &tenant, planned) {
                    t.answered_whole = answered_whole;
                }
            }
            (Some(StreamName::Tenant(tenant)), Event::Request(r)) => {
                let mut state = self.lock();
                let Some(t) = self.tenant(&mut state, node, trial, &tenant, None) else {
                    return;
                };
                if r.error.is_some() {
                    t.failed += 1;
                } else {
                    t.done += 1;
                    if t.answered_whole {
                        t.latency.record_ns(r.done_ns.saturating_sub(r.sent_ns));
                    } else if let Some(first) = r.first_token_ns {
                        t.latency.record_ns(first.saturating_sub(r.sent_ns));
                    }
                }
            }
            (Some(StreamName::Tenant(tenant)), Event::Phase(p)) => {
                if self
                    .tenant(&mut self.lock(), node, trial, &tenant, None)
                    .is_none()
                {
                    return;
                }
                match p.phase {
                    Phase::Warmup => self.stage(node, trial, Stage::WarmingUp),
                    Phase::Measure => self.stage(node, trial, Stage::Measuring),
                    Phase::Drain => self.stage(node, trial, Stage::Draining),
                    Phase::Done => self.finish_tenant(&format!("{node}/{trial}/{tenant}")),
                }
            }
            _ => {}
        }
    }

    /// Redraws (on a terminal) or prints (elsewhere) until `stop`, then takes the live view
    /// off the terminal.
    pub async fn show_until(&self, stop: CancellationToken) {
        let tick = if self.live.is_some() {
            LIVE_TICK
        } else {
            PLAIN_TICK
        };
        let mut ticks = tokio::time::interval(tick);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => break,
            }
            self.refresh();
        }
        // Tenants whose last lines never came (a load that ended abnormally) end here.
        let nodes: Vec<String> = self.lock().nodes.keys().cloned().collect();
        for node in nodes {
            self.finish_tenants(&node, |_| true);
        }
        // Each bar cleared for good: a bar merely hidden would be drawn again when dropped.
        let state = self.lock();
        let bars = state.nodes.values().filter_map(|n| n.bar.as_ref());
        for bar in bars.chain(state.tenants.values().filter_map(|t| t.bar.as_ref())) {
            bar.finish_and_clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tenant's progress, made (with its bar) on its first line: the header, which says
    /// how long its load is `planned` to take, or any line of a stream whose header came
    /// before a resumed collection.
    fn tenant<'s>(
        &self,
        state: &'s mut State,
        node: &str,
        trial: &str,
        tenant: &str,
        planned: Option<Duration>,
    ) -> Option<&'s mut TenantProgress> {
        let key = format!("{node}/{trial}/{tenant}");
        if state.finished.contains(&key) {
            return None;
        }
        Some(state.tenants.entry(key.clone()).or_insert_with(|| {
            let mut progress = TenantProgress::new(planned);
            if let Some(live) = &self.live {
                let bar = live.bars.add(match planned {
                    Some(p) => ProgressBar::new(p.as_millis() as u64).with_style(
                        ProgressStyle::with_template("  {prefix} [{bar:16}] {msg}")
                            .expect("a valid template")
                            .progress_chars("=> "),
                    ),
                    None => ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template("  {prefix} {msg}").expect("a valid template"),
                    ),
                });
                bar.set_prefix(key);
                progress.bar = Some(bar);
            }
            progress
        }))
    }

    /// `node` is in `stage` of `trial`: its live line changes, or a plain line says so.
    fn stage(&self, node: &str, trial: &str, stage: Stage) {
        let mut state = self.lock();
        let Some(n) = state.nodes.get_mut(node) else {
            return;
        };
        let next = Some((trial.to_owned(), stage));
        // Nothing goes back on a trial that has ended (a tenant's drain seen after its end).
        let ended = matches!(&n.current, Some((t, Stage::Ended(_))) if t == trial);
        if n.current == next || ended {
            return;
        }
        n.current = next;
        let line = n.line(node);
        match &n.bar {
            Some(bar) => bar.set_message(line),
            None => say!("{line}"),
        }
    }

    /// Every tenant of `node` still shown in a trial that `which` picks is finished.
    fn finish_tenants(&self, node: &str, which: impl Fn(&str) -> bool) {
        let prefix = format!("{node}/");
        let keys: Vec<String> = self
            .lock()
            .tenants
            .keys()
            .filter(|k| {
                k.strip_prefix(&prefix)
                    .and_then(|rest| rest.split_once('/'))
                    .is_some_and(|(trial, _)| which(trial))
            })
            .cloned()
            .collect();
        for key in keys {
            self.finish_tenant(&key);
        }
    }

    /// The tenant at `key` is done: its running line goes, and one line stays behind.
    fn finish_tenant(&self, key: &str) {
        let tenant = {
            let mut state = self.lock();
            state.finished.insert(key.to_owned());
            state.tenants.remove(key)
        };
        let Some(tenant) = tenant else {
            return;
        };
        if let (Some(bar), Some(live)) = (&tenant.bar, &self.live) {
            live.bars.remove(bar);
        }
        say!("  {key}: {}", tenant.finished_text(Instant::now()));
    }

    /// One redraw of every running line, or one plain line per running tenant.
    fn refresh(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        for (key, tenant) in &mut state.tenants {
            let text = tenant.running_text(now);
            match &tenant.bar {
                Some(bar) => {
                    bar.set_position(now.duration_since(tenant.first_seen).as_millis() as u64);
                    bar.set_message(text);
                }
                None => say!("  {key:<32} {text}"),
            }
        }
        for node in state.nodes.values() {
            if let Some(bar) = &node.bar {
                bar.tick();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_measured_over_the_recent_window_not_since_the_start() {
        let mut t = TenantProgress::new(Some(Duration::from_secs(10)));
        let start = Instant::now();
        t.done = 0;
        assert_eq!(t.sample_rate(start), 0.0);
        // 100 requests in the first second, then none for 4 s: the window has moved past them.
        t.done = 100;
        assert_eq!(t.sample_rate(start + Duration::from_secs(1)), 100.0);
        for s in 2..=5 {
            t.sample_rate(start + Duration::from_secs(s));
        }
        assert_eq!(t.sample_rate(start + Duration::from_secs(6)), 0.0);
        t.done = 130;
        let rate = t.sample_rate(start + Duration::from_secs(7));
        assert!((rate - 10.0).abs() < 1e-9, "30 requests over 3 s: {rate}");
    }

    #[test]
    fn times_keep_a_decimal_only_where_it_matters() {
        assert_eq!(seconds(Duration::from_millis(3_500)), "3.5 s");
        assert_eq!(seconds(Duration::from_millis(42_400)), "42 s");
        let mut t = TenantProgress::new(Some(Duration::from_millis(3_500)));
        let now = t.first_seen + Duration::from_millis(1_000);
        assert_eq!(t.elapsed_text(now), "1.0 s of 3.5 s, 2.5 s left");
        t.planned = None;
        assert_eq!(t.elapsed_text(now), "1.0 s");
    }

    #[test]
    fn the_node_line_names_the_trial_its_place_and_its_stage() {
        let mut n = NodeProgress::default();
        assert_eq!(n.line("a"), "node a: waiting for its first trial");
        n.trials = vec!["solo-x".into(), "mps".into()];
        n.current = Some(("mps".into(), Stage::Measuring));
        assert_eq!(n.line("a"), "node a: trial mps (2 of 2): measuring");
        n.current = Some(("search-1".into(), Stage::Ended(TrialState::Invalid)));
        assert_eq!(n.line("a"), "node a: trial search-1: invalid");
    }
}
