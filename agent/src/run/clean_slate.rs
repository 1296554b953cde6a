//! A clean slate before each probe of a capacity search: the search's engines stay up between
//! probes, so a probe that overloaded them would leave a queue that the next probe inherits,
//! and the next probe would measure that backlog instead of the rate it names. Before a probe's
//! warmup, every engine must report an empty batch and queue.
//!
//! An engine says how many requests it runs and queues through vLLM's gauges
//! `vllm:num_requests_running` and `vllm:num_requests_waiting` on `/metrics`
//! (`vllm/v1/metrics/loggers.py`); the simulated engine serves the same. An engine that
//! exports neither (an external server of another kind) cannot be waited for, and the wait
//! says so.

use std::time::Duration;

use super::trial::TrialRunner;

/// How long a probe waits for the engines' queues to empty before the search ends.
pub(super) const QUEUE_EMPTY_WAIT: Duration = Duration::from_secs(120);
/// How often the queues are read while waiting.
const POLL: Duration = Duration::from_millis(100);

/// How the wait before a probe went.
#[derive(Debug)]
pub(super) enum SlateWait {
    /// Every engine that reports its queue reported it empty after this long; `unknown` names
    /// those that do not report one.
    Empty {
        waited: Duration,
        unknown: Vec<String>,
    },
    /// Some queue was not empty when the wait ran out (or the run stopped): what each engine
    /// still held, and how long it was waited for.
    NotEmpty { held: String, waited: Duration },
}

impl TrialRunner<'_> {
    /// Waits until every engine of the trial runs and queues no request, at most
    /// [`QUEUE_EMPTY_WAIT`].
    pub(super) async fn wait_for_empty_queues(&self) -> SlateWait {
        let started = tokio::time::Instant::now();
        loop {
            let mut held = Vec::new();
            let mut unknown = Vec::new();
            for slot in &self.engines {
                let Some(engine) = &slot.engine else { continue };
                match queue_depth(&self.ctx.http, &engine.base_url, engine.api_key.as_deref()).await
                {
                    Some((0, 0)) => {}
                    Some((running, waiting)) => held.push(format!(
                        "{}: {running} running, {waiting} waiting",
                        slot.name()
                    )),
                    None => unknown.push(slot.name().to_owned()),
                }
            }
            if held.is_empty() {
                return SlateWait::Empty {
                    waited: started.elapsed(),
                    unknown,
                };
            }
            if started.elapsed() >= QUEUE_EMPTY_WAIT || self.ctx.run.is_stopping() {
                return SlateWait::NotEmpty {
                    held: held.join("; "),
                    waited: started.elapsed(),
                };
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// (running, waiting) as the engine's `/metrics` gauges say; `None` when it gives neither.
async fn queue_depth(
    http: &reqwest::Client,
    base_url: &str,
    api_key: Option<&str>,
) -> Option<(u64, u64)> {
    let mut request = http
        .get(format!("{base_url}/metrics"))
        .timeout(Duration::from_secs(5));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let text = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .ok()?
        .text()
        .await
        .ok()?;
    let sample = crate::engine_metrics::parse(&text, "vllm:");
    let running = sample.gauges.get("vllm:num_requests_running");
    let waiting = sample.gauges.get("vllm:num_requests_waiting");
    if running.is_none() && waiting.is_none() {
        return None;
    }
    let count = |v: Option<&f64>| v.copied().unwrap_or(0.0).max(0.0).round() as u64;
    Some((count(running), count(waiting)))
}
