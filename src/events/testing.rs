//! Request events from round figures, for the unit tests of what reads them.

use super::{Phase, RequestEvent, TokenSource};

const MS: u64 = 1_000_000;

/// A completed measure-phase request: sent (and scheduled) at `sent_ms`, first token `ttft_ms`
/// later, then `tokens − 1` chunks `gap_ms` apart; done at its last chunk; 10 prompt tokens,
/// counts from the server's usage.
pub(crate) fn completed(sent_ms: u64, ttft_ms: u64, gap_ms: u64, tokens: u32) -> RequestEvent {
    let sent = sent_ms * MS;
    let first = sent + ttft_ms * MS;
    let last = first + u64::from(tokens.saturating_sub(1)) * gap_ms * MS;
    RequestEvent {
        id: format!("r{sent_ms}"),
        phase: Phase::Measure,
        scheduled_ns: sent,
        sent_ns: sent,
        connect_ns: None,
        first_token_ns: Some(first),
        last_token_ns: Some(last),
        done_ns: last,
        chunk_gaps_us: vec![gap_ms * 1_000; tokens.saturating_sub(1) as usize],
        max_tokens: tokens,
        prompt_tokens: Some(10),
        output_tokens: Some(tokens),
        token_source: Some(TokenSource::Usage),
        status: Some(200),
        error: None,
        conversation: None,
        turn: None,
    }
}
