//! Per-tenant metrics of one trial, from its request and phase events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LatencyHistogram, Percentiles};
use crate::events::{Phase, RequestEvent, TokenSource};

/// The names of the definitions used, written beside the numbers (docs/metrics.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    /// TTFT.
    pub ttft: String,
    /// TPOT.
    pub tpot: String,
    /// ITL.
    pub itl: String,
    /// End-to-end latency.
    pub e2e: String,
    /// Throughput window.
    pub window: String,
    /// Aggregate node throughput.
    pub aggregate: String,
    /// Schedule lag.
    #[serde(default)]
    pub schedule_lag: String,
}

impl Default for Definitions {
    fn default() -> Self {
        Self {
            ttft: "first_content_chunk_arrival - sent".into(),
            tpot: "(last_content_chunk_arrival - first_content_chunk_arrival) / (output_tokens - 1), per request, output_tokens >= 2".into(),
            itl: "gap between consecutive content chunk arrivals, per chunk".into(),
            e2e: "last_content_chunk_arrival - sent".into(),
            window: "first sent to last done of measure-phase requests".into(),
            aggregate: "sum of tenants' output tokens / (latest done - earliest sent over all tenants)".into(),
            schedule_lag: "sent - scheduled; scheduled is the arrival time (open loop) or the instant the request's slot became free (closed loop: the wait for a free slot, kept apart from latency)".into(),
        }
    }
}

/// Tokens and requests per second over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Window length in seconds.
    pub window_s: f64,
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Prompt (input) tokens per second: an embeddings tenant's token throughput (schema 1.5;
    /// absent before).
    #[serde(default)]
    pub input_tokens_per_s: f64,
    /// Prompt plus output tokens per second.
    pub total_tokens_per_s: f64,
}

/// Schedule lag beyond which a send counts as late, ms.
pub const LATE_SEND_MS: f64 = 1.0;

/// Everything measured for one tenant in one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantMetrics {
    /// Measure-phase requests sent.
    pub sent: u64,
    /// Of those, completed.
    pub completed: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// failed / sent.
    pub error_rate: Option<f64>,
    /// Completed requests that delivered fewer tokens than asked for.
    pub short_outputs: u64,
    /// Completed requests that delivered more tokens than asked for.
    pub long_outputs: u64,
    /// Σ output tokens of completed requests.
    pub output_tokens: u64,
    /// Σ prompt tokens of completed requests.
    pub prompt_tokens: u64,
    /// `usage`, `counted`, `mixed`, or `none`.
    pub token_source: String,
    /// Request events whose times cannot be true (out of order, or past the load's end):
    /// counted here, left out of every other figure.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub implausible: u64,
    /// Sends per second during the measure phase.
    pub achieved_rate: Option<f64>,
    /// Arrivals an open-loop schedule placed in the measure phase, sent or not, when the
    /// stream records them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<u64>,
    /// Throughput over the window; `None` without completed requests.
    pub throughput: Option<Throughput>,
    /// Time to first token, ms.
    pub ttft_ms: Option<Percentiles>,
    /// Time per output token, ms.
    pub tpot_ms: Option<Percentiles>,
    /// Inter-chunk latency, ms.
    pub itl_ms: Option<Percentiles>,
    /// End-to-end latency, ms.
    pub e2e_ms: Option<Percentiles>,
    /// sent − scheduled, ms: how late the load generator was. A request that waited for a new
    /// connection counts from its hand-off to the client (`sent_ns − connect_ns`): the connect
    /// is the network's time, not the generator's.
    pub schedule_lag_ms: Option<Percentiles>,
    /// Sends more than [`LATE_SEND_MS`] behind their schedule (summary schema 1.3): with few
    /// sends, p99 is the worst one, and a single late send is a hiccup, not a load generator
    /// that fell behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_sends: Option<u64>,
    /// Connects that measured requests waited for (schema 1.3 streams), ms; their count is the
    /// number of requests that opened a connection. Not part of TTFT or E2E.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<Percentiles>,
    /// How the load used its connections (schema 1.6 streams): opened ahead, and the most
    /// requests in flight at once, which tell connects the load's growth needed from those
    /// that replaced connections the server closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<crate::events::ConnectionUse>,
    /// Conversations whose first turn was measured, for conversation workloads: the arrivals
    /// of their schedule, while `sent` counts every turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversations: Option<u64>,
    /// TTFT of each turn of conversations, in turn order: later turns carry a longer
    /// history, much of it in an engine's prefix cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ttft_by_turn: Vec<TurnTtft>,
}

/// TTFT of one turn of a tenant's conversations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TurnTtft {
    /// The turn, 1-based.
    pub turn: u32,
    /// Its time to first token, ms.
    pub ttft_ms: Percentiles,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Collects a tenant's events, then computes [`TenantMetrics`]. Histograms are public so
/// callers can merge them across tenants and nodes.
#[derive(Debug, Default, Clone)]
pub struct TenantAccumulator {
    /// TTFT, µs.
    pub ttft: LatencyHistogram,
    /// TPOT, µs.
    pub tpot: LatencyHistogram,
    /// ITL, µs.
    pub itl: LatencyHistogram,
    /// E2E, µs.
    pub e2e: LatencyHistogram,
    /// Schedule lag, µs.
    pub lag: LatencyHistogram,
    /// Connects measured requests waited for, µs.
    pub connect: LatencyHistogram,
    /// TTFT by conversation turn, µs.
    ttft_by_turn: BTreeMap<u32, LatencyHistogram>,
    conversations: Option<u64>,
    sent: u64,
    completed: u64,
    errors: BTreeMap<String, u64>,
    short_outputs: u64,
    long_outputs: u64,
    output_tokens: u64,
    prompt_tokens: u64,
    usage_counts: u64,
    counted_counts: u64,
    first_sent_ns: Option<u64>,
    last_done_ns: Option<u64>,
    measure_start_ns: Option<u64>,
    measure_end_ns: Option<u64>,
    scheduled: Option<u64>,
    connections: Option<crate::events::ConnectionUse>,
}

impl TenantAccumulator {
    /// Takes a phase change; the measure phase runs from `measure` to the next phase.
    pub fn phase(&mut self, phase: Phase, at_ns: u64) {
        match phase {
            Phase::Measure => self.measure_start_ns = Some(at_ns),
            Phase::Drain | Phase::Done if self.measure_start_ns.is_some() => {
                self.measure_end_ns.get_or_insert(at_ns);
            }
            _ => {}
        }
    }

    /// Takes the count of arrivals scheduled in the measure phase.
    pub fn scheduled(&mut self, arrivals: u64) {
        self.scheduled = Some(arrivals);
    }

    /// Takes how the load used its connections (its `done` phase says).
    pub fn connections(&mut self, used: crate::events::ConnectionUse) {
        self.connections = Some(used);
    }

    /// Takes a phase event whole: the phase change and what it records of the schedule and
    /// the connections.
    pub fn phase_event(&mut self, event: &crate::events::PhaseEvent) {
        self.phase(event.phase, event.at_ns);
        if let Some(arrivals) = event.scheduled {
            self.scheduled(arrivals);
        }
        if let Some(used) = event.connections {
            self.connections(used);
        }
    }

    /// Takes one request; requests outside the measure phase are ignored.
    pub fn request(&mut self, r: &RequestEvent) {
        if r.phase != Phase::Measure {
            return;
        }
        self.sent += 1;
        if let Some(turn) = r.turn {
            *self.conversations.get_or_insert(0) += u64::from(turn == 1);
        }
        let handed_off_ns = r.sent_ns.saturating_sub(r.connect_ns.unwrap_or(0));
        self.lag
            .record_ns(handed_off_ns.saturating_sub(r.scheduled_ns));
        if let Some(connect) = r.connect_ns {
            self.connect.record_ns(connect);
        }
        self.first_sent_ns = Some(self.first_sent_ns.map_or(r.sent_ns, |t| t.min(r.sent_ns)));
        self.last_done_ns = Some(self.last_done_ns.map_or(r.done_ns, |t| t.max(r.done_ns)));
        if let Some(err) = &r.error {
            *self.errors.entry(err.kind.as_str().to_owned()).or_default() += 1;
            return;
        }
        self.completed += 1;
        let output = r.output_tokens.unwrap_or(0);
        self.output_tokens += u64::from(output);
        self.prompt_tokens += u64::from(r.prompt_tokens.unwrap_or(0));
        match output.cmp(&r.max_tokens) {
            std::cmp::Ordering::Less => self.short_outputs += 1,
            std::cmp::Ordering::Greater => self.long_outputs += 1,
            std::cmp::Ordering::Equal => {}
        }
        match r.token_source {
            Some(TokenSource::Usage) => self.usage_counts += 1,
            Some(TokenSource::Counted) => self.counted_counts += 1,
            None => {}
        }
        if let (Some(ttft), Some(_)) = (r.ttft_ns(), r.last_token_ns) {
            self.ttft.record_ns(ttft);
            if let Some(turn) = r.turn {
                self.ttft_by_turn.entry(turn).or_default().record_ns(ttft);
            }
        }
        if let Some(tpot) = r.tpot_ns() {
            self.tpot.record_ns(tpot);
        }
        if let Some(e2e) = r.e2e_ns() {
            self.e2e.record_ns(e2e);
        }
        for &gap in &r.chunk_gaps_us {
            self.itl.record_us(gap);
        }
    }

    /// When the measure phase began, if it did.
    pub fn measure_start_ns(&self) -> Option<u64> {
        self.measure_start_ns
    }

    /// The window (ns) over which throughput is computed, if any request was measured.
    pub fn window_ns(&self) -> Option<(u64, u64)> {
        Some((self.first_sent_ns?, self.last_done_ns?))
    }

    /// Computes the metrics.
    pub fn finish(&self) -> TenantMetrics {
        let failed = self.sent - self.completed;
        let throughput = match self.window_ns() {
            Some((start, end)) if end > start && self.completed > 0 => {
                let window_s = (end - start) as f64 / 1e9;
                Some(Throughput {
                    window_s,
                    requests_per_s: self.completed as f64 / window_s,
                    output_tokens_per_s: self.output_tokens as f64 / window_s,
                    input_tokens_per_s: self.prompt_tokens as f64 / window_s,
                    total_tokens_per_s: (self.output_tokens + self.prompt_tokens) as f64 / window_s,
                })
            }
            _ => None,
        };
        let achieved_rate = match (self.measure_start_ns, self.measure_end_ns) {
            (Some(start), Some(end)) if end > start => {
                Some(self.sent as f64 / ((end - start) as f64 / 1e9))
            }
            _ => None,
        };
        let token_source = match (self.usage_counts, self.counted_counts) {
            (0, 0) => "none",
            (_, 0) => "usage",
            (0, _) => "counted",
            _ => "mixed",
        };
        TenantMetrics {
            sent: self.sent,
            completed: self.completed,
            failed,
            errors: self.errors.clone(),
            error_rate: (self.sent > 0).then(|| failed as f64 / self.sent as f64),
            short_outputs: self.short_outputs,
            long_outputs: self.long_outputs,
            output_tokens: self.output_tokens,
            prompt_tokens: self.prompt_tokens,
            token_source: token_source.into(),
            implausible: 0,
            achieved_rate,
            scheduled: self.scheduled,
            connections: self.connections,
            throughput,
            ttft_ms: self.ttft.percentiles(),
            tpot_ms: self.tpot.percentiles(),
            itl_ms: self.itl.percentiles(),
            e2e_ms: self.e2e.percentiles(),
            schedule_lag_ms: self.lag.percentiles(),
            late_sends: (self.lag.count() > 0)
                .then(|| self.lag.count_above_us((LATE_SEND_MS * 1_000.0) as u64)),
            connect_ms: self.connect.percentiles(),
            conversations: self.conversations,
            ttft_by_turn: self
                .ttft_by_turn
                .iter()
                .filter_map(|(&turn, h)| {
                    Some(TurnTtft {
                        turn,
                        ttft_ms: h.percentiles()?,
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::completed;
    use crate::events::{ErrorKind, RequestError};

    /// A completed request sent at `sent_ms` whose first and last tokens arrive at `first_ms`
    /// and `last_ms`, its stream closing 0.1 ms after the last.
    fn request(sent_ms: u64, first_ms: u64, last_ms: u64, tokens: u32) -> RequestEvent {
        let gap_ms = last_ms.saturating_sub(first_ms) / u64::from(tokens - 1);
        let mut r = completed(sent_ms, first_ms.saturating_sub(sent_ms), gap_ms, tokens);
        r.done_ns += 100_000;
        r
    }

    #[test]
    fn definitions_hold_on_a_hand_computed_case() {
        let mut acc = TenantAccumulator::default();
        acc.phase(Phase::Measure, 0);
        // TTFT 20 ms, TPOT (120-20)/10 = 10 ms, E2E 120 ms.
        acc.request(&request(0, 20, 120, 11));
        // TTFT 40 ms, TPOT (540-80)/10 = 46 ms, E2E 500 ms.
        acc.request(&request(40, 80, 540, 11));
        let mut failed = request(100, 0, 0, 11);
        failed.error = Some(RequestError {
            kind: ErrorKind::HttpStatus,
            message: "500".into(),
        });
        acc.request(&failed);
        let mut warm = request(0, 1, 2, 3);
        warm.phase = Phase::Warmup;
        acc.request(&warm);
        acc.phase(Phase::Drain, 1_000_000_000);
        let m = acc.finish();
        assert_eq!((m.sent, m.completed, m.failed), (3, 2, 1));
        assert_eq!(m.errors["http_status"], 1);
        let ttft = m.ttft_ms.expect("ttft");
        assert_eq!((ttft.min, ttft.max), (20.0, 40.0));
        let tpot = m.tpot_ms.expect("tpot");
        assert_eq!((tpot.min, tpot.max), (10.0, 46.0));
        assert_eq!(m.achieved_rate, Some(3.0));
        let t = m.throughput.expect("throughput");
        // Window: first sent 0 ms to last done 540.1 ms; 22 output tokens.
        assert!((t.window_s - 0.5401).abs() < 1e-9);
        assert!((t.output_tokens_per_s - 22.0 / 0.5401).abs() < 1e-6);
    }

    #[test]
    fn turns_get_a_ttft_each_and_first_turns_count_conversations() {
        let mut acc = TenantAccumulator::default();
        acc.phase(Phase::Measure, 0);
        // Two conversations: turn 1 at 40 and 60 ms TTFT, turn 2 at 10 ms.
        for (k, (turn, ttft)) in [(1, 40), (2, 10), (1, 60), (2, 10)].into_iter().enumerate() {
            let mut r = completed(k as u64 * 200, ttft, 5, 4);
            r.conversation = Some(k as u64 / 2);
            r.turn = Some(turn);
            acc.request(&r);
        }
        let m = acc.finish();
        assert_eq!((m.sent, m.conversations), (4, Some(2)));
        let by_turn: Vec<(u32, u64, f64)> = m
            .ttft_by_turn
            .iter()
            .map(|t| (t.turn, t.ttft_ms.count, t.ttft_ms.max))
            .collect();
        assert_eq!(by_turn.len(), 2);
        assert_eq!((by_turn[0].0, by_turn[0].1), (1, 2));
        assert!((by_turn[0].2 - 60.0).abs() < 0.1, "{by_turn:?}");
        assert!((by_turn[1].2 - 10.0).abs() < 0.1, "{by_turn:?}");
        let plain = TenantAccumulator::default().finish();
        assert!(plain.conversations.is_none() && plain.ttft_by_turn.is_empty());
    }

    /// A request that waited 30 ms for its connection: sent when the connection was ready,
    /// 30.2 ms after its schedule. Its lag is the 0.2 ms before the hand-off, its TTFT starts
    /// at the ready connection, and the connect has a figure of its own.
    #[test]
    fn a_connect_is_its_own_figure_outside_lag_and_ttft() {
        let mut acc = TenantAccumulator::default();
        acc.phase(Phase::Measure, 0);
        let mut waited = completed(0, 20, 10, 3);
        waited.sent_ns = 30_200_000;
        waited.connect_ns = Some(30_000_000);
        waited.first_token_ns = Some(waited.sent_ns + 20_000_000);
        waited.last_token_ns = waited.first_token_ns.map(|t| t + 20_000_000);
        waited.done_ns = waited.last_token_ns.expect("last");
        acc.request(&waited);
        acc.request(&completed(100, 20, 10, 3));
        let m = acc.finish();
        let connect = m.connect_ms.expect("one connect");
        assert_eq!(connect.count, 1);
        assert!((connect.max - 30.0).abs() < 0.1, "{connect:?}");
        let lag = m.schedule_lag_ms.expect("lag");
        assert!(lag.max < 0.25 && lag.max > 0.15, "{lag:?}");
        let ttft = m.ttft_ms.expect("ttft");
        assert!((ttft.max - 20.0).abs() < 0.1, "{ttft:?}");
    }
}
