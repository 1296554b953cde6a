//! The peers' definitions, recomputed from the same request events, so our numbers can be put
//! beside a report from `vllm bench serve`, GuideLLM or AIPerf (research/peers.md §2). Each
//! figure keeps the peer's own name; what the events cannot reproduce exactly is said in the
//! notes, never papered over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LatencyHistogram, Percentiles};
use crate::events::{Phase, RequestEvent};

/// Whose definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// `vllm bench serve`.
    Vllm,
    /// GuideLLM 0.8.
    Guidellm,
    /// AIPerf 0.13.
    Aiperf,
}

impl Peer {
    /// From its command-line name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "vllm" => Some(Peer::Vllm),
            "guidellm" => Some(Peer::Guidellm),
            "aiperf" => Some(Peer::Aiperf),
            _ => None,
        }
    }

    /// What our events cannot reproduce of this peer's figures.
    fn notes(self) -> Vec<String> {
        match self {
            Peer::Vllm => vec![
                "vLLM also stamps choices chunks with empty text; these events keep content chunks only, so a server that streams an empty first chunk shows a later TTFT here".into(),
            ],
            Peer::Guidellm => vec![
                "GuideLLM's time_per_output_token includes the TTFT ((last token - start) / N); its inter_token_latency is our TPOT".into(),
                "GuideLLM weights inter_token_latency by tokens; these percentiles are per request".into(),
            ],
            Peer::Aiperf => vec![
                "AIPerf counts output tokens with a tokenizer by default; these use the server's usage (AIPerf's --use-server-token-count)".into(),
                "AIPerf puts failed requests into its latency percentiles; these exclude them".into(),
            ],
        }
    }
}

/// One tenant's figures under a peer's definitions, by the peer's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantMetrics {
    /// The peer.
    pub peer: Peer,
    /// Figure name → percentiles, ms; `None` without data.
    pub figures: BTreeMap<String, Option<Percentiles>>,
    /// What differs from the peer's own computation.
    pub notes: Vec<String>,
}

/// Computes `peer`'s figures over the completed measured requests of `requests`.
pub fn variant(peer: Peer, requests: &[RequestEvent]) -> VariantMetrics {
    let mut fold = VariantFold::new(peer);
    for r in requests {
        fold.request(r);
    }
    fold.finish()
}

/// `peer`'s figures folded one request at a time: what a stream read line by line feeds.
#[derive(Debug)]
pub struct VariantFold {
    peer: Peer,
    figures: BTreeMap<&'static str, LatencyHistogram>,
}

impl VariantFold {
    /// No request yet.
    pub fn new(peer: Peer) -> Self {
        Self {
            peer,
            figures: BTreeMap::new(),
        }
    }

    /// Takes one request; only completed measured ones with content count.
    pub fn request(&mut self, r: &RequestEvent) {
        if r.phase != Phase::Measure || r.error.is_some() {
            return;
        }
        let (Some(first), Some(last)) = (r.first_token_ns, r.last_token_ns) else {
            return;
        };
        let figures = &mut self.figures;
        let mut record =
            |name: &'static str, ns: u64| figures.entry(name).or_default().record_ns(ns);
        let n = u64::from(r.output_tokens.unwrap_or(0));
        let ttft = first.saturating_sub(r.sent_ns);
        let to_last = last.saturating_sub(r.sent_ns);
        let per_token_after_first = (n >= 2).then(|| last.saturating_sub(first) / (n - 1));
        match self.peer {
            Peer::Vllm => {
                record("ttft", ttft);
                record("e2el", to_last);
                if let Some(t) = per_token_after_first {
                    record("tpot", t);
                }
                for &gap in &r.chunk_gaps_us {
                    record("itl", gap * 1_000);
                }
            }
            Peer::Guidellm => {
                record("time_to_first_token", ttft);
                record("request_latency", r.done_ns.saturating_sub(r.sent_ns));
                if n >= 1 {
                    record("time_per_output_token", to_last / n);
                }
                if let Some(t) = per_token_after_first {
                    record("inter_token_latency", t);
                }
            }
            Peer::Aiperf => {
                record("time_to_first_token", ttft);
                record("request_latency", to_last);
                if let Some(t) = per_token_after_first {
                    record("inter_token_latency", t);
                }
                for &gap in &r.chunk_gaps_us {
                    record("inter_chunk_latency", gap * 1_000);
                }
            }
        }
    }

    /// The figures, by the peer's names.
    pub fn finish(self) -> VariantMetrics {
        VariantMetrics {
            peer: self.peer,
            figures: self
                .figures
                .into_iter()
                .map(|(name, h)| (format!("{name}_ms"), h.percentiles()))
                .collect(),
            notes: self.peer.notes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sent at 0, first token at 200 ms, last (the 5th) at 600 ms, stream closed at 610 ms,
    /// chunk gaps 100 ms: by hand, vLLM TPOT = 400/4 = 100, GuideLLM TPOT = 600/5 = 120 and
    /// its ITL = 100, GuideLLM request latency = 610, AIPerf request latency = 600.
    #[test]
    fn each_peer_reads_the_same_request_its_own_way() {
        let r = RequestEvent {
            id: "r".into(),
            phase: Phase::Measure,
            scheduled_ns: 0,
            sent_ns: 0,
            connect_ns: None,
            first_token_ns: Some(200_000_000),
            last_token_ns: Some(600_000_000),
            done_ns: 610_000_000,
            chunk_gaps_us: vec![100_000; 4],
            max_tokens: 5,
            prompt_tokens: Some(3),
            output_tokens: Some(5),
            token_source: None,
            status: Some(200),
            error: None,
            conversation: None,
            turn: None,
        };
        let p50 = |peer: Peer, name: &str| {
            variant(peer, std::slice::from_ref(&r)).figures[name]
                .expect("data")
                .p50
        };
        assert_eq!(p50(Peer::Vllm, "ttft_ms"), 200.0);
        assert_eq!(p50(Peer::Vllm, "tpot_ms"), 100.0);
        assert_eq!(p50(Peer::Vllm, "itl_ms"), 100.0);
        assert_eq!(p50(Peer::Vllm, "e2el_ms"), 600.0);
        assert_eq!(p50(Peer::Guidellm, "time_per_output_token_ms"), 120.0);
        assert_eq!(p50(Peer::Guidellm, "inter_token_latency_ms"), 100.0);
        assert_eq!(p50(Peer::Guidellm, "request_latency_ms"), 610.0);
        assert_eq!(p50(Peer::Aiperf, "request_latency_ms"), 600.0);
        assert_eq!(p50(Peer::Aiperf, "inter_chunk_latency_ms"), 100.0);
        assert_eq!(p50(Peer::Aiperf, "inter_token_latency_ms"), 100.0);
        // A failed request enters no figure.
        let mut failed = r.clone();
        failed.error = Some(crate::events::RequestError {
            kind: crate::events::ErrorKind::HttpStatus,
            message: "HTTP 500".into(),
        });
        assert!(variant(Peer::Vllm, &[failed]).figures.is_empty());
    }
}
