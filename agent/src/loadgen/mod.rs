//! The load generator of one tenant: arrivals, requests, phases and their events.
//!
//! Phases: `warmup` from the start, `measure` from `start + warmup` for `duration`, then
//! `drain` (no more sends; in-flight requests may finish for `drain_timeout`, then they are
//! cancelled and recorded as such) and `done`. A request belongs to the phase its *scheduled*
//! time falls in. Sending stops at the end of `measure`, at `max_requests`, or when the run is
//! cancelled, whichever comes first.

pub mod bound_watch;
pub mod client;
pub mod connections;
pub mod conversation;
pub mod dispatch;
pub mod prompt_log;
pub mod prompts;
pub mod replay;
pub mod schedule;
pub mod sse;
pub mod standalone;
pub mod start_line;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use multitenant::config::{Arrival, Workload};
use multitenant::events::{ConnectionUse, Event, Phase, PhaseEvent, RequestEvent};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::RunClock;
use crate::recorder::StreamFile;
use client::Target;
use connections::LoadClient;
use conversation::{Message, Role, TurnOf};
use dispatch::FollowUp;
use prompt_log::PromptLog;
use prompts::{Prompt, PromptFactory};
use schedule::ArrivalSchedule;
use start_line::StartTicket;

/// Everything needed to load one tenant.
pub struct TenantLoad {
    /// Tenant name; request ids are `<tenant>-<n>`.
    pub tenant: String,
    /// Where requests go.
    pub target: Target,
    /// What load to generate.
    pub workload: Workload,
    /// The arrival process of this trial (one stage of the workload's plan, resolved).
    pub arrival: Arrival,
    /// Seed of arrivals.
    pub seed: u64,
    /// The prompts of its requests.
    pub prompts: Arc<PromptFactory>,
    /// The run clock.
    pub clock: RunClock,
    /// The tenant's event stream.
    pub stream: Arc<StreamFile>,
    /// Where each request's prompt (and kept answer) is recorded as it ends; `None` keeps no
    /// prompt record.
    pub prompt_log: Option<PromptLog>,
    /// Most requests in flight at once ([`multitenant::config::MAX_IN_FLIGHT`] in a run): an
    /// arrival past it is not sent, and is recorded as a `client` error.
    pub max_in_flight: u64,
    /// Its place on the trial's start line: the loads that run together start their clocks
    /// at one instant, once each has opened its connections.
    pub start: StartTicket,
    /// A capacity probe's SLO bounds, counted request by request for its early stop.
    pub watch: Option<Arc<bound_watch::BoundWatch>>,
}

/// What a load run did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Requests sent, all phases.
    pub sent: u64,
    /// Events that could not be written (the stream's first error is logged).
    pub write_errors: u64,
    /// Completed measure-phase requests per second, from their first send to their last
    /// done (the summary's request throughput); `None` when none completed.
    pub completed_rate: Option<f64>,
    /// Why the load could not run at all, when it could not.
    pub failure: Option<String>,
}

struct Shared {
    load: TenantLoad,
    http: LoadClient,
    claimed: AtomicU64,
    /// Conversations started, for conversation workloads.
    conversations_started: AtomicU64,
    /// Where an open loop's conversations ask for their later turns, which the arrival
    /// thread releases on time; `None`: they wait on the runtime's timer (closed loop).
    follow_ups: Option<std::sync::mpsc::Sender<FollowUp>>,
    /// Requests sent and not yet done.
    in_flight: AtomicU64,
    /// The most requests in flight at once so far.
    peak_in_flight: AtomicU64,
    write_errors: AtomicU64,
    measured_completed: AtomicU64,
    measured_first_sent_ns: AtomicU64,
    measured_last_done_ns: AtomicU64,
    warmup_end_ns: u64,
    /// Cancelled when sending must stop.
    stop: CancellationToken,
    /// Cancelled when in-flight requests must be abandoned.
    abort: CancellationToken,
}

impl Shared {
    /// Takes the next request index, or stops sending once `max_requests` are out.
    fn claim(&self) -> Option<u64> {
        let index = self.claimed.fetch_add(1, Ordering::SeqCst);
        if self
            .load
            .workload
            .max_requests
            .is_some_and(|max| index >= max)
        {
            self.stop.cancel();
            return None;
        }
        Some(index)
    }

    fn write(&self, event: Event) {
        if let Err(e) = self.load.stream.append(&event) {
            if self.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!("tenant {}: cannot record events: {e}", self.load.tenant);
            }
        }
    }

    fn write_phase(&self, phase: Phase, at_ns: u64) {
        self.write(Event::Phase(PhaseEvent {
            phase,
            at_ns,
            scheduled: None,
            connections: None,
        }));
    }

    /// Sends request `index` and records it; returns whether it failed for the client's own
    /// reasons (out of descriptors or ports), so a closed loop can back off instead of spinning.
    async fn request(self: Arc<Self>, index: u64, scheduled_ns: u64) -> bool {
        let prompt = self.load.prompts.prompt(index);
        self.send(index, scheduled_ns, prompt, &[], None)
            .await
            .client_failed
    }

    /// Runs conversation `number` from its first turn at `first_ns`: each later turn is
    /// scheduled its think time after the answer before it ended, and is not sent when that
    /// falls at or past `end_ns`. A turn that fails ends the conversation. Returns whether its
    /// last turn failed for the client's own reasons.
    async fn conversation(self: Arc<Self>, number: u64, first_ns: u64, end_ns: u64) -> bool {
        let Some(conversations) = self.load.prompts.conversations() else {
            return false;
        };
        let mut history = conversations.opening();
        let mut at_ns = first_ns;
        let mut client_failed = false;
        for turn in 1..=conversations.turns(number) {
            let turn = TurnOf {
                conversation: number,
                turn,
            };
            if turn.turn > 1 {
                match self.wait_for_turn(at_ns, end_ns).await {
                    Some(scheduled_ns) => at_ns = scheduled_ns,
                    None => break,
                }
            }
            let Some(index) = self.claim() else { break };
            let question = conversations.question(turn);
            let asked = question.text.clone();
            let sent = self
                .send(index, at_ns, question, &history, Some(turn))
                .await;
            client_failed = sent.client_failed;
            let Some(answer) = sent.answer else { break };
            history.push(Message {
                role: Role::User,
                content: asked,
            });
            history.push(Message {
                role: Role::Assistant,
                content: answer,
            });
            at_ns = sent.done_ns.saturating_add(ns(conversations.think(turn)));
        }
        client_failed
    }

    /// Waits for a later turn scheduled at `at_ns`; returns the time it counts as scheduled,
    /// or `None` when it falls at or past `end_ns` or sending stopped. Released by the arrival
    /// thread it is exact; on the runtime's timer (up to a millisecond late) it counts from
    /// when it woke, as a closed loop's requests do.
    async fn wait_for_turn(&self, at_ns: u64, end_ns: u64) -> Option<u64> {
        if at_ns >= end_ns || self.stop.is_cancelled() {
            return None;
        }
        let clock = self.load.clock;
        match &self.follow_ups {
            Some(queue) => {
                let (release, released) = tokio::sync::oneshot::channel();
                queue.send(FollowUp { at_ns, release }).ok()?;
                tokio::select! {
                    released = released => released.ok().map(|()| at_ns),
                    () = self.stop.cancelled() => None,
                }
            }
            None => tokio::select! {
                () = tokio::time::sleep_until(clock.instant_at(at_ns).into()) => {
                    Some(clock.now_ns())
                }
                () = self.stop.cancelled() => None,
            },
        }
    }

    /// Sends `prompt` after `history` as request `index` (turn `turn` of a conversation, if
    /// it is one), records it, and returns what a conversation needs of it.
    async fn send(
        &self,
        index: u64,
        scheduled_ns: u64,
        prompt: Prompt,
        history: &[Message],
        turn: Option<TurnOf>,
    ) -> Sent {
        let id = request_id(&self.load.tenant, index);
        let keeps = self
            .load
            .prompts
            .keeps_response(index, self.load.workload.keep_responses);
        let clock = &self.load.clock;
        let cap = self.load.max_in_flight;
        let before = self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.peak_in_flight.fetch_max(before + 1, Ordering::Relaxed);
        let mut measured = if before >= cap {
            client::not_sent(clock, format!("not sent: {cap} requests of this tenant were already in flight, the load generator's cap; the server is not keeping up with the offered load"))
        } else {
            let request = client::Outgoing {
                id: &id,
                prompt: &prompt,
                history,
                keep_text: keeps || turn.is_some(),
            };
            client::execute(&self.http, &self.load.target, request, clock, &self.abort).await
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let text = measured.text.take().filter(|_| measured.error.is_none());
        let (answer, response) = match (turn.is_some(), keeps) {
            (true, true) => (text.clone(), text),
            (true, false) => (text, None),
            (false, _) => (None, text),
        };
        let client_failed = measured
            .error
            .as_ref()
            .is_some_and(|e| e.kind == multitenant::events::ErrorKind::Client);
        let phase = if scheduled_ns < self.warmup_end_ns {
            Phase::Warmup
        } else {
            Phase::Measure
        };
        if phase == Phase::Measure && measured.error.is_none() {
            self.measured_completed.fetch_add(1, Ordering::Relaxed);
            self.measured_first_sent_ns
                .fetch_min(measured.sent_ns, Ordering::Relaxed);
            self.measured_last_done_ns
                .fetch_max(measured.done_ns, Ordering::Relaxed);
        }
        let done_ns = measured.done_ns;
        let event = RequestEvent {
            id,
            phase,
            scheduled_ns,
            sent_ns: measured.sent_ns,
            first_token_ns: measured.first_token_ns,
            last_token_ns: measured.last_token_ns,
            done_ns,
            connect_ns: measured.connect_ns,
            chunk_gaps_us: measured.chunk_gaps_us,
            // An embedding asks for no output.
            max_tokens: if self.load.target.api.generates() {
                prompt.max_tokens
            } else {
                0
            },
            prompt_tokens: measured.prompt_tokens,
            output_tokens: measured.output_tokens,
            token_source: measured.token_source,
            status: measured.status,
            error: measured.error,
            conversation: turn.map(|t| t.conversation),
            turn: turn.map(|t| t.turn),
        };
        if let (Phase::Measure, None, Some(watch)) = (phase, &event.error, &self.load.watch) {
            watch.record(&event);
        }
        self.write(Event::Request(event));
        if let Some(log) = &self.load.prompt_log {
            // A turn's question cannot be rebuilt from its index alone: it goes as sent.
            log.record(index, turn.map(|_| prompt), response).await;
        }
        Sent {
            client_failed,
            answer,
            done_ns,
        }
    }
}

/// What a conversation needs of a request it sent.
struct Sent {
    /// It failed for the client's own reasons.
    client_failed: bool,
    /// The answer, when it completed.
    answer: Option<String>,
    /// When it ended.
    done_ns: u64,
}

/// How long a closed-loop worker waits after a request the client itself could not send.
const CLIENT_BACKOFF: Duration = Duration::from_millis(20);

/// The id of request `index` of `tenant`, as sent in `x-request-id` and recorded.
pub fn request_id(tenant: &str, index: u64) -> String {
    format!("{tenant}-{index:06}")
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A tenant's load whose thread or task panicked: its figures in the trial cannot be trusted,
/// the other tenants' can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("its load task ended abnormally ({0}); its figures in this trial are not valid")]
pub struct LoadPanicked(pub String);

/// Runs `load` to its end (or until `cancel`), recording every request and phase change.
/// A load that cannot start is a report with its `failure`; one that panics is
/// [`LoadPanicked`].
///
/// The load runs on a runtime of its own (two worker threads) with its own HTTP client: no
/// other work of the agent (another tenant, the samplers, the gRPC server) is ever queued
/// ahead of its sends and reads. Two workers rather than one, because an engine step hands
/// every open stream a chunk at the same instant and one thread would read them one by one
/// (measured at 1,000 streams: first-token delay p50 4.1 ms on one thread, 2.2 ms on two).
pub async fn run_tenant_load(
    load: TenantLoad,
    cancel: CancellationToken,
) -> Result<LoadReport, LoadPanicked> {
    let tenant = load.tenant.clone();
    let (done, report) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(format!("load-{tenant}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(format!("load-{}", load.tenant))
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = done.send(LoadReport::failed(format!("no runtime for its load: {e}")));
                    return;
                }
            };
            let http = match LoadClient::new(load.clock) {
                Ok(http) => http,
                Err(e) => {
                    let _ = done.send(LoadReport::failed(format!("no HTTP client: {e}")));
                    return;
                }
            };
            let _ = done.send(runtime.block_on(send_and_record(load, http, cancel)));
        });
    if let Err(e) = thread {
        return Ok(LoadReport::failed(format!(
            "cannot start the load thread of {tenant}: {e}"
        )));
    }
    report
        .await
        .map_err(|_| LoadPanicked(format!("the load thread of {tenant} panicked")))
}

impl LoadReport {
    fn failed(reason: String) -> Self {
        Self {
            sent: 0,
            write_errors: 0,
            completed_rate: None,
            failure: Some(reason),
        }
    }
}

/// The open-loop schedule of `arrival` with `seed`, phases `warmup` and `duration`, replaying
/// `trace_times` for a trace; `None` for a closed loop.
fn open_loop_schedule(
    arrival: &Arrival,
    trace_times: Option<&Arc<[u64]>>,
    seed: u64,
    warmup: Duration,
    duration: Duration,
) -> Option<ArrivalSchedule> {
    match (arrival, trace_times) {
        (Arrival::Trace { time_scale }, Some(times)) => {
            Some(ArrivalSchedule::replay(times.clone(), *time_scale))
        }
        _ => ArrivalSchedule::new(arrival, seed, warmup, duration),
    }
}

async fn send_and_record(
    mut load: TenantLoad,
    http: LoadClient,
    cancel: CancellationToken,
) -> LoadReport {
    let clock = load.clock;
    let arrival = load.arrival;
    let trace_times = load.prompts.trace_times();
    let (seed, warmup, duration) = (load.seed, load.workload.warmup, load.workload.duration);
    let schedule =
        move || open_loop_schedule(&arrival, trace_times.as_ref(), seed, warmup, duration);
    // The pool is filled before the clock of the load starts: no scheduled send waits for it.
    let turns = load
        .prompts
        .conversations()
        .map_or(1, conversation::Conversations::most_turns);
    let wanted = connections::preopen_count(&arrival, schedule(), turns, load.max_in_flight);
    let opened = http
        .preopen(
            &load.target.base_url,
            load.target.api_key.as_deref(),
            wanted,
        )
        .await;
    tracing::debug!(
        "tenant {}: {opened} of {wanted} connections opened before the load",
        load.tenant
    );
    let ticket = std::mem::replace(&mut load.start, StartTicket::alone(clock));
    let start_ns = ticket.start().await;
    let warmup_end_ns = start_ns.saturating_add(ns(warmup));
    let measure_end_ns = warmup_end_ns.saturating_add(ns(duration));
    let drain_timeout = load.workload.drain_timeout;
    let closed_loop = matches!(arrival, Arrival::Concurrency { .. });
    let conversational = load.prompts.conversations().is_some();
    let (follow_ups, follow_up_queue) = if conversational && !closed_loop {
        let (queue, follow_ups) = std::sync::mpsc::channel();
        (Some(follow_ups), Some(queue))
    } else {
        (None, None)
    };
    let shared = Arc::new(Shared {
        load,
        http,
        claimed: AtomicU64::new(0),
        conversations_started: AtomicU64::new(0),
        follow_ups: follow_up_queue,
        in_flight: AtomicU64::new(0),
        peak_in_flight: AtomicU64::new(0),
        write_errors: AtomicU64::new(0),
        measured_completed: AtomicU64::new(0),
        measured_first_sent_ns: AtomicU64::new(u64::MAX),
        measured_last_done_ns: AtomicU64::new(0),
        warmup_end_ns,
        stop: cancel.child_token(),
        abort: cancel.child_token(),
    });
    let tracker = TaskTracker::new();
    if warmup_end_ns > start_ns {
        shared.write_phase(Phase::Warmup, start_ns);
    }
    let mut sender = None;
    let mut scheduled = None;
    if let Arrival::Concurrency { n } = arrival {
        // Workers join one by one across the warmup, not all at once: n requests sent in the
        // same instant would keep arriving, and finishing, in lockstep for the whole run.
        let spread_ns = warmup_end_ns - start_ns;
        for k in 0..u64::from(n) {
            let begin_ns = start_ns + spread_ns * k / u64::from(n);
            tracker.spawn(closed_loop_worker(shared.clone(), begin_ns, measure_end_ns));
        }
    } else if let Some(first) = schedule() {
        let (shared, tracker) = (shared.clone(), tracker.clone());
        let runtime = tokio::runtime::Handle::current();
        sender = Some(tokio::task::spawn_blocking(move || {
            let arrivals = first.map(|offset| start_ns + ns(offset));
            let stop = shared.stop.clone();
            let dispatched = dispatch::dispatch_with_follow_ups(
                clock,
                arrivals,
                follow_ups.as_ref(),
                measure_end_ns,
                &stop,
                |at_ns| {
                    if conversational {
                        // Each arrival starts a conversation; its turns claim the requests.
                        let number = shared.conversations_started.fetch_add(1, Ordering::SeqCst);
                        let conversation =
                            shared.clone().conversation(number, at_ns, measure_end_ns);
                        tracker.spawn_on(conversation, &runtime);
                        // Started: the dispatcher sees a stop before its next arrival.
                        return true;
                    }
                    let Some(index) = shared.claim() else {
                        return false;
                    };
                    tracker.spawn_on(shared.clone().request(index, at_ns), &runtime);
                    true
                },
            );
            // The same seed draws the same schedule again: count its measure-phase arrivals
            // now that sending is over, off the send path. `max_requests` caps them as it
            // caps the sends; a stop caps them at the first arrival it kept from being sent
            // (not at the instant the stop was seen: an arrival due in between was never
            // to be sent).
            let phase_end = ns(warmup + duration);
            let until = match dispatched {
                dispatch::Dispatched::ToTheEnd => phase_end,
                dispatch::Dispatched::CutShort { next_ns } => {
                    next_ns.saturating_sub(start_ns).min(phase_end)
                }
            };
            schedule().map(|again| {
                // The schedule is in order (and endless but for a replay): it is counted up
                // to the phase's end.
                let (mut in_warmup, mut in_measure) = (0u64, 0u64);
                for offset in again.map(ns).take_while(|&o| o < until) {
                    if offset < ns(warmup) {
                        in_warmup += 1;
                    } else {
                        in_measure += 1;
                    }
                }
                // A conversation's arrival is its start, while `max_requests` counts turns.
                let cap = shared
                    .load
                    .workload
                    .max_requests
                    .filter(|_| !conversational);
                cap.map_or(in_measure, |max| {
                    in_measure.min(max.saturating_sub(in_warmup))
                })
            })
        }));
    }
    let stop = shared.stop.clone();
    tokio::select! {
        () = tokio::time::sleep_until(clock.instant_at(warmup_end_ns).into()) => {
            shared.write_phase(Phase::Measure, warmup_end_ns);
        }
        () = stop.cancelled() => {}
    }
    if closed_loop {
        tokio::select! {
            () = tokio::time::sleep_until(clock.instant_at(measure_end_ns).into()) => {}
            () = stop.cancelled() => {}
        }
        stop.cancel();
    } else if let Some(sender) = sender {
        // The open loop ends by itself at the end of the phase: arrivals scheduled before it
        // are sent even when late (their lag shows it), never silently dropped.
        match sender.await {
            Ok(counted) => scheduled = counted,
            Err(e) => tracing::error!(
                "tenant {}: the arrival thread failed: {e}",
                shared.load.tenant
            ),
        }
    }
    shared.write(Event::Phase(PhaseEvent {
        phase: Phase::Drain,
        at_ns: clock.now_ns().min(measure_end_ns),
        scheduled,
        connections: None,
    }));
    tracker.close();
    tokio::select! {
        () = tracker.wait() => {}
        () = tokio::time::sleep(drain_timeout) => {
            shared.abort.cancel();
            tracker.wait().await;
        }
    }
    shared.write(Event::Phase(PhaseEvent {
        phase: Phase::Done,
        at_ns: clock.now_ns(),
        scheduled: None,
        connections: Some(ConnectionUse {
            preopened: u64::from(opened),
            peak_in_flight: shared.peak_in_flight.load(Ordering::Relaxed),
        }),
    }));
    let sent = shared.claimed.load(Ordering::SeqCst);
    let completed = shared.measured_completed.load(Ordering::Relaxed);
    let first = shared.measured_first_sent_ns.load(Ordering::Relaxed);
    let last = shared.measured_last_done_ns.load(Ordering::Relaxed);
    LoadReport {
        sent: shared
            .load
            .workload
            .max_requests
            .map_or(sent, |max| sent.min(max)),
        write_errors: shared.write_errors.load(Ordering::Relaxed),
        completed_rate: (completed > 0 && last > first)
            .then(|| completed as f64 / ((last - first) as f64 / 1e9)),
        failure: None,
    }
}

async fn closed_loop_worker(shared: Arc<Shared>, begin_ns: u64, end_ns: u64) {
    let clock = shared.load.clock;
    tokio::select! {
        () = tokio::time::sleep_until(clock.instant_at(begin_ns).into()) => {}
        () = shared.stop.cancelled() => return,
    }
    loop {
        let now = shared.load.clock.now_ns();
        if shared.stop.is_cancelled() || now >= end_ns {
            return;
        }
        let client_failed = if shared.load.prompts.conversations().is_some() {
            let number = shared.conversations_started.fetch_add(1, Ordering::SeqCst);
            shared.clone().conversation(number, now, end_ns).await
        } else {
            let Some(index) = shared.claim() else { return };
            shared.clone().request(index, now).await
        };
        if client_failed {
            // Out of descriptors or ports: a retry at once would fail the same way, as fast
            // as the loop can spin. Wait for in-flight requests to give some back.
            tokio::select! {
                () = tokio::time::sleep(CLIENT_BACKOFF) => {}
                () = shared.stop.cancelled() => return,
            }
        }
    }
}
