//! Scraping an engine's Prometheus `/metrics` into its own stream, so the server's view (TTFT,
//! inter-token latency, queue time, running and waiting requests, KV-cache use) sits beside
//! the client's measurements on the same clock.
//!
//! The parser reads the text exposition format: `name{labels} value [timestamp]` lines,
//! `# TYPE name kind` declarations, everything else ignored. Series of one name with different
//! labels (e.g. several `engine="…"`) are summed; histogram buckets are keyed by `le`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use multitenant::events::{EngineMetrics, Event, PromHistogram};
use tokio_util::sync::CancellationToken;

use crate::clock::RunClock;
use crate::recorder::StreamFile;

/// Parses exposition text. Only metric families whose name starts with `prefix` are kept.
pub fn parse(text: &str, prefix: &str) -> EngineMetrics {
    let mut kinds: BTreeMap<&str, &str> = BTreeMap::new();
    let mut out = EngineMetrics::default();
    let mut buckets: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                kinds.insert(name, kind);
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') || !line.starts_with(prefix) {
            continue;
        }
        let Some((name, labels, value)) = split_sample(line) else {
            continue;
        };
        if let Some(family) = name
            .strip_suffix("_bucket")
            .filter(|f| kinds.get(f) == Some(&"histogram"))
        {
            let Some(le) = label(labels, "le") else {
                continue;
            };
            let Ok(bound) = le.parse::<f64>() else {
                continue;
            };
            if bound.is_finite() {
                let entry = buckets
                    .entry(family.to_owned())
                    .or_default()
                    .entry(bound.to_bits())
                    .or_insert((bound, 0.0));
                entry.1 += value;
            }
        } else if let Some(family) = name
            .strip_suffix("_sum")
            .filter(|f| kinds.get(f) == Some(&"histogram"))
        {
            out.histograms.entry(family.to_owned()).or_default().sum += value;
        } else if let Some(family) = name
            .strip_suffix("_count")
            .filter(|f| kinds.get(f) == Some(&"histogram"))
        {
            out.histograms.entry(family.to_owned()).or_default().count += value;
        } else if name.ends_with("_created") {
            continue;
        } else {
            match kinds.get(name).copied().or_else(|| {
                name.strip_suffix("_total")
                    .and_then(|f| kinds.get(f).copied())
            }) {
                Some("counter") => *out.counters.entry(name.to_owned()).or_default() += value,
                Some("gauge") => *out.gauges.entry(name.to_owned()).or_default() += value,
                _ => {}
            }
        }
    }
    for (family, by_bound) in buckets {
        let h: &mut PromHistogram = out.histograms.entry(family).or_default();
        // Bit patterns of positive floats sort like the floats, so the map is in bound order.
        for (_, (bound, count)) in by_bound {
            h.bounds.push(bound);
            h.cumulative.push(count);
        }
    }
    out
}

/// `name`, the text inside `{}`, and the value of one sample line.
fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    let (name, rest) = match line.find('{') {
        Some(open) => {
            let close = closing_brace(line, open)?;
            (&line[..open], (&line[open + 1..close], &line[close + 1..]))
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], ("", &line[space..]))
        }
    };
    let (labels, tail) = rest;
    let value = tail.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// Index of the `}` closing the `{` at `open`, skipping quoted label values.
fn closing_brace(line: &str, open: usize) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(open + i),
            _ => {}
        }
    }
    None
}

/// The value of label `key` (without escapes, which `le` never has).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

/// Scrapes `{base_url}/metrics` every `interval` until `stop`, then once more (so the last
/// sample covers the whole load), then closes the stream. A failed scrape is skipped.
pub async fn scrape(
    stream: Arc<StreamFile>,
    http: reqwest::Client,
    base_url: String,
    clock: RunClock,
    interval: Duration,
    stop: CancellationToken,
) {
    let url = format!("{base_url}/metrics");
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_before = false;
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            () = stop.cancelled() => true,
        };
        match http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(response) => match response.text().await {
                Ok(text) => {
                    let mut sample = parse(&text, "vllm:");
                    sample.at_ns = clock.now_ns();
                    if let Err(e) = stream.append(&Event::EngineMetrics(sample)) {
                        tracing::warn!("{}: {e}", stream.rel_path());
                        break;
                    }
                }
                Err(e) => log_failure(&url, &mut failed_before, &e),
            },
            Err(e) => log_failure(&url, &mut failed_before, &e),
        }
        if last {
            break;
        }
    }
    if let Err(e) = stream.close() {
        tracing::warn!("closing {}: {e}", stream.rel_path());
    }
}

/// Logs the first failed scrape only: an engine without `/metrics` would otherwise flood.
fn log_failure(url: &str, failed_before: &mut bool, error: &reqwest::Error) {
    if !*failed_before {
        tracing::warn!("scraping {url} failed ({error}); later failures are not logged");
        *failed_before = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as vLLM 0.32 (CPU build) prints them, trimmed to a few buckets.
    const SAMPLE: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} 1024.0
vllm:generation_tokens_created{engine="0",model_name="tiny"} 1.7e+09
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="tiny"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="tiny"} 6.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 8.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 8.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 0.064
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.01",model_name="a \"quoted\" {name}"} 2.0
# TYPE python_gc_objects_collected counter
python_gc_objects_collected_total{generation="0"} 123.0
"#;

    #[test]
    fn parses_gauges_counters_and_summed_histograms() {
        let m = parse(SAMPLE, "vllm:");
        assert_eq!(m.gauges["vllm:num_requests_running"], 3.0);
        assert_eq!(m.counters["vllm:generation_tokens_total"], 1024.0);
        assert_eq!(
            m.counters.len(),
            1,
            "_created series and other prefixes are dropped"
        );
        let ttft = &m.histograms["vllm:time_to_first_token_seconds"];
        assert_eq!(ttft.bounds, [0.001, 0.01]);
        assert_eq!(
            ttft.cumulative,
            [0.0, 8.0],
            "buckets of both engines summed"
        );
        assert_eq!((ttft.count, ttft.sum), (8.0, 0.064));
        assert_eq!(ttft.mean_since(None), Some(0.008));
        let earlier = PromHistogram {
            count: 4.0,
            sum: 0.016,
            ..PromHistogram::default()
        };
        assert_eq!(ttft.mean_since(Some(&earlier)), Some(0.012));
        assert_eq!(ttft.mean_since(Some(ttft)), None);
    }
}
