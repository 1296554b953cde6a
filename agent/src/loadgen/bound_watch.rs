//! A capacity probe's early stop: its SLO's percentile bounds watched request by request, so
//! that a probe whose failure is already certain ends at once instead of running its full,
//! lengthened measure phase (at an overloaded rate, a minute or more of GPU time).
//!
//! A percentile bound `p ≤ L` over the probe's requests is missed for certain once so many
//! requests are over `L` that the probe's binomial 95% test would fail it even if every other
//! request it can still hold were within `L` ([`certain_fail_count`]), and its batch-means
//! test over the seconds so far fails it too: a stall that put many requests over the bound in
//! one second, while the others were within it, does not stop the probe. What it can hold is the planned
//! count (rate × measured time) plus four standard deviations of a Poisson count, so that a
//! lucky surplus of arrivals cannot turn the verdict; arrivals burstier than Poisson (a gamma
//! process of cv > 1, a trace) can exceed that margin.

use std::sync::{Mutex, OnceLock};

use multitenant::capacity::confidence::{
    certain_fail_count, Confidence, TallyFold, DEFAULT_CONFIDENCE,
};
use multitenant::events::RequestEvent;
use multitenant::slo::{PercentileBound, Slo};
use tokio_util::sync::CancellationToken;

/// One bound, and the most requests over it that the probe could still pass with.
#[derive(Debug)]
struct Watched {
    name: String,
    bound: PercentileBound,
    most_over: u64,
}

/// The percentile bounds of one tenant in one probe.
#[derive(Debug)]
pub struct BoundWatch {
    bounds: Vec<Watched>,
    /// The same bounds counted by slots of send time, as the probe's verdict counts them; its
    /// lock also serialises the first trip, so that one reason is kept.
    fold: Mutex<TallyFold>,
    tripped: CancellationToken,
    reason: OnceLock<String>,
}

impl BoundWatch {
    /// Watches `tenant`'s percentile bounds of `slo` over a probe that plans `planned`
    /// measured requests, cancelling `stop` (which the probe's other tenants may share) once one
    /// is missed for certain; `None` when it has none to watch.
    pub fn new(tenant: &str, slo: &Slo, planned: f64, stop: CancellationToken) -> Option<Self> {
        let most = (planned + 4.0 * planned.max(0.0).sqrt() + 1.0).ceil() as u64;
        let bounds: Vec<Watched> = slo
            .percentile_bounds()
            .into_iter()
            .map(|bound| Watched {
                name: format!("{tenant}: {}", bound.name()),
                most_over: certain_fail_count(most, bound.fraction, DEFAULT_CONFIDENCE)
                    .saturating_sub(1),
                bound,
            })
            .collect();
        (!bounds.is_empty()).then(|| Self {
            bounds,
            fold: Mutex::new(TallyFold::new(slo)),
            tripped: stop,
            reason: OnceLock::new(),
        })
    }

    /// Counts a completed measured request against every bound; trips once a bound has more
    /// requests over it than the probe could pass with and its seconds so far fail it (the
    /// batch-means test of its verdict), so that a probe stopped early is a probe failed.
    pub fn record(&self, request: &RequestEvent) {
        let mut fold = self.fold.lock().unwrap_or_else(|e| e.into_inner());
        fold.record(request);
        for (index, watched) in self.bounds.iter().enumerate() {
            if watched.bound.over(request) != Some(true) {
                continue;
            }
            let Some(tally) = fold.tally(index) else {
                continue;
            };
            if tally.over > watched.most_over && tally.judge(DEFAULT_CONFIDENCE) == Confidence::Fail
            {
                self.trip_on(watched, tally.over);
            }
        }
    }

    /// Records why and cancels, once; called under the fold's lock.
    fn trip_on(&self, watched: &Watched, over: u64) {
        if self.reason.get().is_some() {
            return;
        }
        let _ = self.reason.set(format!(
            "{}: {over} requests over {} ms, more than the {} that a 95% test over all the probe's requests could still pass with, and its seconds so far fail it: stopped early",
            watched.name, watched.bound.limit_ms, watched.most_over
        ));
        self.tripped.cancel();
    }

    /// Cancelled once a bound (of this tenant or another sharing the token) is missed for
    /// certain.
    pub fn tripped(&self) -> &CancellationToken {
        &self.tripped
    }

    /// Why it tripped, once it has.
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitenant::slo::Quantile;

    /// A request sent `sent_ms` into the probe, its first token `ttft_ms` later.
    fn request(sent_ms: u64, ttft_ms: u64) -> RequestEvent {
        let ms = 1_000_000;
        let first = (sent_ms + ttft_ms) * ms;
        RequestEvent {
            id: format!("a-{sent_ms}"),
            phase: multitenant::events::Phase::Measure,
            scheduled_ns: sent_ms * ms,
            sent_ns: sent_ms * ms,
            connect_ns: None,
            first_token_ns: Some(first),
            last_token_ns: Some(first + 15 * ms),
            done_ns: first + 15 * ms,
            chunk_gaps_us: vec![5_000; 3],
            max_tokens: 4,
            prompt_tokens: Some(8),
            output_tokens: Some(4),
            token_source: None,
            status: Some(200),
            error: None,
            conversation: None,
            turn: None,
        }
    }

    /// A p99 watch that has seen five seconds of requests within the bound, one every 50 ms.
    fn p99_watch() -> BoundWatch {
        let slo = Slo {
            ttft_ms: [(Quantile::P99, 150.0), (Quantile::Mean, 10.0)].into(),
            ..Slo::default()
        };
        // 400 planned: at most 400 + 4 × 20 + 1 = 481 requests, and 10 over a p99 among 481
        // fail it at 95% whatever the others are.
        let watch = BoundWatch::new("a", &slo, 400.0, CancellationToken::new()).expect("a bound");
        for i in 0..100 {
            watch.record(&request(i * 50, 20));
        }
        watch
    }

    #[test]
    fn a_probe_trips_once_more_are_over_than_its_requests_can_allow() {
        let watch = p99_watch();
        // One request over the bound in each of the ten half-second slots.
        for i in 0..9 {
            watch.record(&request(i * 500 + 10, 900));
        }
        assert!(!watch.tripped().is_cancelled());
        watch.record(&request(4_510, 900));
        assert!(watch.tripped().is_cancelled());
        assert_eq!(
            watch.reason(),
            Some("a: ttft_ms p99: 10 requests over 150 ms, more than the 9 that a 95% test over all the probe's requests could still pass with, and its seconds so far fail it: stopped early")
        );
    }

    #[test]
    fn a_stall_in_one_second_does_not_stop_a_probe() {
        let watch = p99_watch();
        // Twelve over the bound, all sent in the same half second: more than the 9 allowed, but
        // the other nine slots had none, so the seconds do not fail it.
        for i in 0..12 {
            watch.record(&request(2_000 + i * 10, 900));
        }
        assert!(!watch.tripped().is_cancelled(), "{:?}", watch.reason());
        // A mean is no percentile: nothing to watch.
        let mean = Slo {
            ttft_ms: [(Quantile::Mean, 10.0)].into(),
            ..Slo::default()
        };
        assert!(BoundWatch::new("a", &mean, 400.0, CancellationToken::new()).is_none());
    }
}
