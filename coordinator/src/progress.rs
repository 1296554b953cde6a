//! Live progress: a line per tenant while a trial runs, from the events as they arrive.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use multitenant::events::{Event, Line, Phase};
use multitenant::metrics::LatencyHistogram;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Counters {
    done: u64,
    failed: u64,
    done_at_last_print: u64,
    ttft: LatencyHistogram,
    finished: bool,
}

/// Counts per `node/trial/tenant`, fed by the collectors, printed by [`Progress::print_every`].
#[derive(Default)]
pub struct Progress {
    tenants: Mutex<BTreeMap<String, Counters>>,
}

impl Progress {
    /// Takes one line of stream `key` (`node/trial/stream`); only tenant streams carry the
    /// request and phase events counted here.
    pub fn observe(&self, key: &str, line: &Line) {
        if !matches!(line.event, Event::Request(_) | Event::Phase(_)) {
            return;
        }
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let c = tenants.entry(key.to_owned()).or_default();
        match &line.event {
            Event::Request(r) if r.error.is_some() => c.failed += 1,
            Event::Request(r) => {
                c.done += 1;
                if let Some(first) = r.first_token_ns {
                    c.ttft.record_ns(first.saturating_sub(r.sent_ns));
                }
            }
            Event::Phase(p) if p.phase == Phase::Done => c.finished = true,
            _ => {}
        }
    }

    /// Prints a line per active tenant every `interval` until `stop`.
    pub async fn print_every(&self, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            for line in self.lines(interval) {
                eprintln!("{line}");
            }
        }
    }

    /// One line per tenant still running: done, failed, rate since the last call, TTFT p50.
    fn lines(&self, interval: Duration) -> Vec<String> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants
            .iter_mut()
            .filter(|(_, c)| !c.finished)
            .map(|(key, c)| {
                let rate = (c.done - c.done_at_last_print) as f64 / interval.as_secs_f64();
                c.done_at_last_print = c.done;
                let ttft = c
                    .ttft
                    .percentiles()
                    .map_or("-".to_owned(), |p| format!("{:.1} ms", p.p50));
                format!(
                    "  {key:<32} done {:>6}  failed {:>4}  {rate:>7.1} req/s  TTFT p50 {ttft}",
                    c.done, c.failed
                )
            })
            .collect()
    }
}
