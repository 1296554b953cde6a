//! One request to an OpenAI-compatible server, timed on the run clock.
//!
//! `sent` is read just before the request is handed to the HTTP client; each network read of
//! the body is timestamped once, on arrival, and every SSE event completed by that read gets its
//! time. The first token is the first event carrying non-empty text (role-only and empty deltas
//! do not count). Every failure becomes a [`RequestError`] with its reason; nothing is thrown.

use futures_util::StreamExt;
use multitenant::config::Api;
use multitenant::events::{ErrorKind, RequestError, TokenSource};
use serde::Deserialize;
use serde_json::json;

use super::connections::{self, LoadClient};
use super::conversation::Message;
use super::prompts::Prompt;
use super::sse::SseParser;
use crate::clock::RunClock;
use tokio_util::sync::CancellationToken;

/// Where and how a tenant's requests go.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub base_url: String,
    /// API called.
    pub api: Api,
    /// Model name.
    pub model: String,
    /// Bearer key for the server, if it needs one.
    pub api_key: Option<String>,
    /// Stream the response.
    pub stream: bool,
    /// Ask the server to ignore end-of-sequence.
    pub ignore_eos: bool,
    /// Extra body fields, as configured.
    pub request_fields: serde_json::Map<String, serde_json::Value>,
}

/// What one request measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    /// Just before the request could be written: the send, or for the first request on a
    /// connection opened for it, the instant that connection was ready.
    pub sent_ns: u64,
    /// How long the connect that this request waited for took, when it opened a connection.
    pub connect_ns: Option<u64>,
    /// First content chunk.
    pub first_token_ns: Option<u64>,
    /// Last content chunk.
    pub last_token_ns: Option<u64>,
    /// End of response or failure.
    pub done_ns: u64,
    /// Gaps between content chunks, µs.
    pub chunk_gaps_us: Vec<u64>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u32>,
    /// Output tokens.
    pub output_tokens: Option<u32>,
    /// Source of the counts.
    pub token_source: Option<TokenSource>,
    /// HTTP status.
    pub status: Option<u16>,
    /// Failure, if any.
    pub error: Option<RequestError>,
    /// The generated text, when it was asked to be kept.
    pub text: Option<String>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    message: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct Usage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

impl Chunk {
    /// Appends the first choice's generated text (not reasoning) to `out`.
    fn append_text(&self, out: &mut String) {
        if let Some(c) = self.choices.first() {
            let delta = c.delta.as_ref().or(c.message.as_ref());
            for text in [c.text.as_deref(), delta.and_then(|d| d.content.as_deref())]
                .into_iter()
                .flatten()
            {
                out.push_str(text);
            }
        }
    }

    /// Whether the first choice carries generated text (or reasoning text).
    fn has_content(&self) -> bool {
        self.choices.first().is_some_and(|c| {
            let delta = c.delta.as_ref().or(c.message.as_ref());
            let texts = [
                c.text.as_deref(),
                delta.and_then(|d| d.content.as_deref()),
                delta.and_then(|d| d.reasoning_content.as_deref()),
                delta.and_then(|d| d.reasoning.as_deref()),
            ];
            texts.into_iter().flatten().any(|t| !t.is_empty())
        })
    }
}

/// What this machine ran out of, when a send failed for the client's own reasons: file
/// descriptors (EMFILE, ENFILE), local ports (EADDRNOTAVAIL) or socket buffers (ENOBUFS).
fn local_exhaustion(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use nix::errno::Errno;
    let mut source = Some(error);
    while let Some(e) = source {
        let code = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error);
        if let Some(code) = code {
            return match Errno::from_raw(code) {
                Errno::EMFILE => Some("too many open files (the process's file-descriptor limit)"),
                Errno::ENFILE => Some("too many open files on this machine"),
                Errno::EADDRNOTAVAIL => Some("no local port left to connect from"),
                Errno::ENOBUFS => Some("no socket buffer space left"),
                _ => None,
            };
        }
        source = e.source();
    }
    None
}

/// A request the load generator did not send, for its own reason `message`: a `client` error,
/// sent and done at one instant, now.
pub fn not_sent(clock: &RunClock, message: String) -> Measured {
    let mut m = Measured {
        sent_ns: clock.now_ns(),
        ..Measured::default()
    };
    fail(&mut m, clock, ErrorKind::Client, message);
    m.done_ns = m.sent_ns;
    m
}

fn fail(m: &mut Measured, clock: &RunClock, kind: ErrorKind, message: impl Into<String>) {
    m.done_ns = clock.now_ns();
    m.error = Some(RequestError {
        kind,
        message: message.into(),
    });
}

/// One request to send: what [`execute`] sends, apart from where and on which clock.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Its id, sent as `x-request-id`.
    pub id: &'a str,
    /// The prompt.
    pub prompt: &'a Prompt,
    /// The earlier messages of its conversation; empty for a request of its own.
    pub history: &'a [Message],
    /// Whether the generated text is collected into [`Measured::text`].
    pub keep_text: bool,
}

impl<'a> Outgoing<'a> {
    /// A request of its own: no conversation before it, its text not kept.
    pub fn alone(id: &'a str, prompt: &'a Prompt) -> Self {
        Self {
            id,
            prompt,
            history: &[],
            keep_text: false,
        }
    }
}

/// Sends `request` to `target` and measures it on `clock`. Never fails: errors are in the
/// result. When `abort` fires, the request ends as `cancelled` with what it received so far.
///
/// The chat API gets the history as messages; the completions API gets one text, the
/// messages' contents joined by blank lines, so that each turn's text begins with the whole
/// of the turn before it.
pub async fn execute(
    client: &LoadClient,
    target: &Target,
    request: Outgoing<'_>,
    clock: &RunClock,
    abort: &CancellationToken,
) -> Measured {
    let Outgoing {
        id,
        prompt,
        history,
        keep_text,
    } = request;
    let (path, mut body) = match target.api {
        Api::Completions if history.is_empty() => (
            "/v1/completions",
            json!({"model": target.model, "prompt": prompt.text}),
        ),
        Api::Completions => {
            let mut text = String::new();
            for m in history {
                text.push_str(&m.content);
                text.push_str("\n\n");
            }
            text.push_str(&prompt.text);
            (
                "/v1/completions",
                json!({"model": target.model, "prompt": text}),
            )
        }
        Api::Chat => {
            let messages: Vec<serde_json::Value> = history
                .iter()
                .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
                .chain(std::iter::once(
                    json!({"role": "user", "content": prompt.text}),
                ))
                .collect();
            (
                "/v1/chat/completions",
                json!({"model": target.model, "messages": messages}),
            )
        }
        Api::Embeddings => (
            "/v1/embeddings",
            json!({"model": target.model, "input": prompt.text}),
        ),
    };
    if target.api.generates() {
        body["max_tokens"] = json!(prompt.max_tokens);
        body["stream"] = json!(target.stream);
        if target.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        if target.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
    }
    for (key, value) in &target.request_fields {
        body[key] = value.clone();
    }
    let mut request = client
        .http
        .post(format!("{}{path}", target.base_url))
        .header("x-request-id", id)
        .json(&body);
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key);
    }
    let text = keep_text.then(String::new);
    let mut m = Measured {
        text,
        sent_ns: clock.now_ns(),
        ..Measured::default()
    };
    let sent = tokio::select! {
        sent = request.send() => sent,
        () = abort.cancelled() => {
            fail(&mut m, clock, ErrorKind::Cancelled, CANCELLED);
            return m;
        }
    };
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            let (kind, message) = match local_exhaustion(&e) {
                Some(what) => (
                    ErrorKind::Client,
                    format!("the load generator could not open a connection to {}{path}: {what}; not the engine's failure", target.base_url),
                ),
                None => (
                    ErrorKind::Connect,
                    format!("sending to {}{path}: {e}", target.base_url),
                ),
            };
            fail(&mut m, clock, kind, message);
            return m;
        }
    };
    // The first request on a connection opened for it could not be written before that
    // connection was ready: it is sent then, and the connect is recorded on its own.
    if let Some(connect) =
        connections::local_addr(&response).and_then(|local| client.connects.claim(local, m.sent_ns))
    {
        m.connect_ns = Some(connect.ready_ns - connect.started_ns);
        m.sent_ns = connect.ready_ns;
    }
    let status = response.status();
    m.status = Some(status.as_u16());
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let first_line = text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>();
        fail(
            &mut m,
            clock,
            ErrorKind::HttpStatus,
            format!("HTTP {status}: {first_line}"),
        );
        return m;
    }
    if target.stream {
        read_stream(response, &mut m, clock, abort).await;
    } else if target.api == Api::Embeddings {
        tokio::select! {
            () = read_embedding(response, &mut m, clock) => {}
            () = abort.cancelled() => fail(&mut m, clock, ErrorKind::Cancelled, CANCELLED),
        }
    } else {
        tokio::select! {
            () = read_whole(response, &mut m, clock) => {}
            () = abort.cancelled() => fail(&mut m, clock, ErrorKind::Cancelled, CANCELLED),
        }
    }
    m
}

/// Why a request was cut off.
const CANCELLED: &str = "in flight when the run stopped or the drain timeout passed";

async fn read_stream(
    response: reqwest::Response,
    m: &mut Measured,
    clock: &RunClock,
    abort: &CancellationToken,
) {
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    let mut chunk_times: Vec<u64> = Vec::new();
    let mut usage: Option<Usage> = None;
    let mut saw_done = false;
    // One waiter on the token for the whole stream, not one per chunk.
    let aborted = abort.cancelled();
    tokio::pin!(aborted);
    loop {
        let read = tokio::select! {
            read = body.next() => read,
            () = &mut aborted => {
                finish_counts(m, &chunk_times, usage);
                fail(m, clock, ErrorKind::Cancelled, CANCELLED);
                return;
            }
        };
        let Some(read) = read else { break };
        let at = clock.now_ns();
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                finish_counts(m, &chunk_times, usage);
                fail(
                    m,
                    clock,
                    ErrorKind::StreamDropped,
                    format!("after {} chunks: {e}", chunk_times.len()),
                );
                return;
            }
        };
        let events = match parser.feed(&bytes) {
            Ok(events) => events,
            Err(e) => {
                finish_counts(m, &chunk_times, usage);
                fail(m, clock, ErrorKind::MalformedChunk, e.to_string());
                return;
            }
        };
        for data in events {
            if data == "[DONE]" {
                saw_done = true;
                continue;
            }
            let chunk: Chunk = match serde_json::from_str(&data) {
                Ok(c) => c,
                Err(e) => {
                    finish_counts(m, &chunk_times, usage);
                    let shown: String = data.chars().take(120).collect();
                    fail(
                        m,
                        clock,
                        ErrorKind::MalformedChunk,
                        format!("chunk {} is not JSON ({e}): {shown}", chunk_times.len() + 1),
                    );
                    return;
                }
            };
            if let Some(err) = chunk.error {
                finish_counts(m, &chunk_times, usage);
                fail(
                    m,
                    clock,
                    ErrorKind::ServerError,
                    err.to_string().chars().take(300).collect::<String>(),
                );
                return;
            }
            if chunk.has_content() {
                chunk_times.push(at);
                if let Some(text) = m.text.as_mut() {
                    chunk.append_text(text);
                }
            }
            if chunk.usage.is_some() {
                usage = chunk.usage;
            }
        }
    }
    m.done_ns = clock.now_ns();
    finish_counts(m, &chunk_times, usage);
    if !saw_done {
        let reason = if parser.has_partial_event() {
            "stream ended inside an event"
        } else {
            "stream ended without [DONE]"
        };
        fail(
            m,
            clock,
            ErrorKind::StreamDropped,
            format!("{reason} after {} chunks", chunk_times.len()),
        );
    }
}

fn finish_counts(m: &mut Measured, chunk_times: &[u64], usage: Option<Usage>) {
    m.first_token_ns = chunk_times.first().copied();
    m.last_token_ns = chunk_times.last().copied();
    m.chunk_gaps_us = chunk_times
        .windows(2)
        .map(|w| (w[1] - w[0] + 500) / 1_000)
        .collect();
    apply_usage(
        m,
        usage,
        u32::try_from(chunk_times.len()).unwrap_or(u32::MAX),
    );
}

fn apply_usage(m: &mut Measured, usage: Option<Usage>, counted: u32) {
    match usage.and_then(|u| u.completion_tokens.map(|c| (u.prompt_tokens, c))) {
        Some((prompt, completion)) => {
            m.prompt_tokens = prompt;
            m.output_tokens = Some(completion);
            m.token_source = Some(TokenSource::Usage);
        }
        None => {
            m.output_tokens = Some(counted);
            m.token_source = Some(TokenSource::Counted);
        }
    }
}

/// An `/v1/embeddings` answer: the vectors (as numbers, or base64 under
/// `encoding_format: base64`) and the prompt tokens they cost.
#[derive(Deserialize)]
struct EmbeddingAnswer {
    #[serde(default)]
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    usage: Option<EmbeddingUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Embedding,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Embedding {
    Numbers(Vec<f64>),
    Base64(String),
}

impl Embedding {
    fn is_empty(&self) -> bool {
        match self {
            Embedding::Numbers(v) => v.is_empty(),
            Embedding::Base64(s) => s.is_empty(),
        }
    }
}

#[derive(Deserialize)]
struct EmbeddingUsage {
    prompt_tokens: Option<u32>,
}

/// The whole body of a response that is not streamed, with `done` set when it has arrived;
/// `None`, with the failure recorded, when it could not be read.
async fn body_of(
    response: reqwest::Response,
    m: &mut Measured,
    clock: &RunClock,
) -> Option<bytes::Bytes> {
    match response.bytes().await {
        Ok(bytes) => {
            m.done_ns = clock.now_ns();
            Some(bytes)
        }
        Err(e) => {
            fail(
                m,
                clock,
                ErrorKind::StreamDropped,
                format!("reading the body: {e}"),
            );
            None
        }
    }
}

/// Reads an embeddings answer whole: done when its body has arrived, its prompt tokens from
/// `usage`, and no output tokens. An answer without a non-empty vector is a failure.
async fn read_embedding(response: reqwest::Response, m: &mut Measured, clock: &RunClock) {
    let Some(bytes) = body_of(response, m, clock).await else {
        return;
    };
    let answer = match serde_json::from_slice::<EmbeddingAnswer>(&bytes) {
        Ok(a) => a,
        Err(e) => {
            let shown: String = String::from_utf8_lossy(&bytes).chars().take(120).collect();
            return fail(
                m,
                clock,
                ErrorKind::MalformedChunk,
                format!("body is not an embeddings answer ({e}): {shown}"),
            );
        }
    };
    if let Some(error) = answer.error {
        return fail(
            m,
            clock,
            ErrorKind::ServerError,
            error.to_string().chars().take(300).collect::<String>(),
        );
    }
    if answer.data.first().is_none_or(|d| d.embedding.is_empty()) {
        return fail(
            m,
            clock,
            ErrorKind::MalformedChunk,
            "the embeddings answer holds no vector",
        );
    }
    m.output_tokens = Some(0);
    m.prompt_tokens = answer.usage.and_then(|u| u.prompt_tokens);
    m.token_source = m.prompt_tokens.map(|_| TokenSource::Usage);
}

async fn read_whole(response: reqwest::Response, m: &mut Measured, clock: &RunClock) {
    let Some(bytes) = body_of(response, m, clock).await else {
        return;
    };
    match serde_json::from_slice::<Chunk>(&bytes) {
        Ok(chunk) if chunk.error.is_none() => {
            if let Some(text) = m.text.as_mut() {
                chunk.append_text(text);
            }
            let counted = u32::from(chunk.has_content());
            apply_usage(m, chunk.usage, counted);
        }
        Ok(chunk) => fail(
            m,
            clock,
            ErrorKind::ServerError,
            chunk.error.map(|e| e.to_string()).unwrap_or_default(),
        ),
        Err(e) => fail(
            m,
            clock,
            ErrorKind::MalformedChunk,
            format!("body is not a completion ({e})"),
        ),
    }
}
