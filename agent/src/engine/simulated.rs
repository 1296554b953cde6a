//! The built-in simulated engine: a real OpenAI-compatible HTTP server with a known timing model.
//!
//! Routes: `POST /v1/completions` and `POST /v1/chat/completions` (SSE streaming with a final
//! `usage` chunk when `stream_options.include_usage` is set, or one JSON body),
//! `POST /v1/embeddings` (a prefill-only pass: the vector is ready at the end of the step that
//! prefilled the input), `GET /v1/models`,
//! `GET /health`, `GET /metrics` (vLLM's prefix-cache counters and its running and waiting
//! request gauges). Prompt tokens are
//! whitespace-separated words. Every response carries
//! `x-multitenant-simulated: true`, and the model list says the model is simulated.
//!
//! It serves its base model and the LoRA adapters it is given, by name, as vLLM started with
//! `--enable-lora --lora-modules` does: `/v1/models` lists the adapters with the base as their
//! parent, and the scheduler batches requests to different adapters together (see
//! the simulated scheduler for what that costs).
//!
//! Output length is `max_tokens` under `ignore_eos`, else a draw in `1..=max_tokens`. Faults
//! (HTTP 500, a malformed chunk, a dropped connection) are drawn per request. Every draw comes
//! from the engine seed and the request id, so a request gets the same answer whatever the
//! order requests arrive in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use multitenant::config::{SimFaults, SimTiming};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::arrival_stamp::{ArrivalStamp, StampingListener};
use super::sim_gpu::SimGpu;
use super::sim_prefix_cache::{sequence_keys, CacheCounters};
use super::sim_scheduler::{self, Admission, QueueGauges, SchedulerGauges};

/// Header that marks every response as simulated.
pub const SIMULATED_HEADER: &str = "x-multitenant-simulated";

/// How a simulated engine behaves.
#[derive(Debug, Clone)]
pub struct SimEngineConfig {
    /// Model name it serves; requests for another model get 404, as from vLLM.
    pub model: String,
    /// The LoRA adapters it serves beside the base model, by the names requests carry.
    pub adapters: Vec<String>,
    /// Timing model.
    pub timing: SimTiming,
    /// Fault probabilities.
    pub faults: SimFaults,
    /// Seed of every draw.
    pub seed: u64,
    /// Keep each request's true token emission instants (see [`TokenTruth`]).
    pub record_truth: bool,
}

/// What really happened to one request inside the engine.
#[derive(Debug, Clone)]
pub struct TokenTruth {
    /// When the request's first bytes reached the engine's socket, by the kernel's receive
    /// stamp (see [`super::arrival_stamp`]); `None` where the kernel gave none (it starts
    /// stamping a moment after the engine asks, so an engine's very first requests may have
    /// none).
    pub arrived: Option<Instant>,
    /// When the handler got the parsed request.
    pub received: Instant,
    /// When each token's chunk was handed to the HTTP response body, in order: the instant it
    /// leaves the engine (for streaming) or was generated (for whole responses).
    pub emitted: Vec<Instant>,
}

impl TokenTruth {
    /// Where the request's true latency starts: its arrival at the engine's socket, or where
    /// the kernel gave no stamp, its handler's instant.
    pub fn start(&self) -> Instant {
        self.arrived.unwrap_or(self.received)
    }
}

/// A running simulated engine.
pub struct SimEngine {
    addr: SocketAddr,
    truth: Arc<Mutex<HashMap<String, TokenTruth>>>,
    cancel: CancellationToken,
    server: JoinHandle<()>,
    scheduler: JoinHandle<()>,
}

struct AppState {
    /// The base model's name, then each adapter's.
    models: Vec<String>,
    /// Each of `models` as a JSON string.
    model_jsons: Vec<String>,
    faults: SimFaults,
    seed: u64,
    admissions: mpsc::UnboundedSender<Admission>,
    cache_counters: Arc<CacheCounters>,
    queue: Arc<QueueGauges>,
    truth: Option<Arc<Mutex<HashMap<String, TokenTruth>>>>,
    next_id: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    HttpError,
    MalformedChunk,
    DropConnection,
}

impl SimEngine {
    /// Serves on `listener` (already bound) on the shared `gpu`.
    pub fn start(
        listener: tokio::net::TcpListener,
        config: SimEngineConfig,
        gpu: Arc<SimGpu>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let (admissions, admitted) = mpsc::unbounded_channel();
        let cache_counters = Arc::new(CacheCounters::default());
        let max_loras = config
            .timing
            .max_loras
            .map_or(config.adapters.len(), |n| n as usize)
            .max(1);
        let queue = Arc::new(QueueGauges::default());
        let scheduler = tokio::spawn(sim_scheduler::run(
            config.timing,
            max_loras,
            gpu,
            admitted,
            SchedulerGauges {
                cache: cache_counters.clone(),
                queue: queue.clone(),
            },
            cancel.clone(),
        ));
        let truth = Arc::new(Mutex::new(HashMap::new()));
        let models: Vec<String> = std::iter::once(config.model)
            .chain(config.adapters)
            .collect();
        let state = Arc::new(AppState {
            model_jsons: models
                .iter()
                .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "\"sim\"".into()))
                .collect(),
            models,
            faults: config.faults,
            seed: config.seed,
            admissions,
            cache_counters,
            queue,
            truth: config.record_truth.then(|| truth.clone()),
            next_id: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/health", get(|| async { StatusCode::OK }))
            .route("/v1/models", get(list_models))
            .route("/metrics", get(metrics))
            .route(
                "/v1/completions",
                post(|s, a, h, b| generate(s, a, h, b, false)),
            )
            .route(
                "/v1/chat/completions",
                post(|s, a, h, b| generate(s, a, h, b, true)),
            )
            .route("/v1/embeddings", post(embed))
            .layer(axum::middleware::from_fn(forget_unclaimed_arrival))
            .with_state(state);
        let shutdown = cancel.clone();
        // Arrivals are stamped only for an engine that keeps its truth, which they start.
        let listener = StampingListener::new(listener, config.record_truth);
        let server = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<ArrivalStamp>();
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(e) = serve.await {
                tracing::warn!("simulated engine on {addr} stopped with an error: {e}");
            }
        });
        Ok(Self {
            addr,
            truth,
            cancel,
            server,
            scheduler,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The ground truth of request `id`, if recording was asked for.
    pub fn truth(&self, id: &str) -> Option<TokenTruth> {
        self.truth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Stops serving: open streams end, the scheduler stops.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.scheduler.await;
        // Graceful shutdown waits for open connections; their streams end once the scheduler
        // is gone, so this returns promptly.
        let _ = self.server.await;
    }
}

/// The base model, then each adapter with the base as its `parent`, as vLLM lists them.
async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    let base = &state.model_jsons[0];
    let entries: Vec<String> = state
        .model_jsons
        .iter()
        .enumerate()
        .map(|(i, model)| {
            let parent = if i == 0 { "null" } else { base.as_str() };
            format!(r#"{{"id":{model},"object":"model","owned_by":"multitenant-simulated","parent":{parent}}}"#)
        })
        .collect();
    let body = format!(r#"{{"object":"list","data":[{}]}}"#, entries.join(","));
    json_response(StatusCode::OK, body)
}

/// Prometheus text with vLLM's prefix-cache counters (in tokens), under vLLM's names, so the
/// agent's scraper reads a simulated engine as it reads vLLM.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (queries, hits) = state.cache_counters.read();
    // The exposition format escapes only backslash, double quote and newline in a label.
    let escaped = state.models[0]
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let model = format!("\"{escaped}\"");
    let (running, waiting) = state.queue.read();
    let body = format!(
        "# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.\n\
         # TYPE vllm:prefix_cache_queries counter\n\
         vllm:prefix_cache_queries_total{{model_name={model}}} {queries}\n\
         # HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.\n\
         # TYPE vllm:prefix_cache_hits counter\n\
         vllm:prefix_cache_hits_total{{model_name={model}}} {hits}\n\
         # HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{engine=\"0\",model_name={model}}} {running}\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{engine=\"0\",model_name={model}}} {waiting}\n"
    );
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response.headers_mut().insert(
        SIMULATED_HEADER,
        axum::http::HeaderValue::from_static("true"),
    );
    response
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            ("content-type", "application/json"),
            (SIMULATED_HEADER, "true"),
        ],
        body,
    )
        .into_response()
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    json_response(
        status,
        format!(r#"{{"error":{{"message":{message},"type":"invalid_request_error"}}}}"#),
    )
}

/// The request's `x-request-id`, or a number of the engine's own.
fn request_id(state: &AppState, headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sim-{}", state.next_id.fetch_add(1, Ordering::Relaxed)))
}

/// The JSON body of a request and the index in `models` (the base, then the adapters) of the
/// model it names: 400 when it is not JSON or names no model, 404 (as from vLLM) when it
/// names a model the engine does not serve.
fn request_for(body: &[u8], models: &[String]) -> Result<(Value, usize), (StatusCode, String)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")))?;
    let named = v.get("model").and_then(Value::as_str);
    match named.map(|m| (m, models.iter().position(|served| served == m))) {
        Some((_, Some(index))) => Ok((v, index)),
        Some((m, None)) => Err((
            StatusCode::NOT_FOUND,
            format!("The model `{m}` does not exist."),
        )),
        None => Err((StatusCode::BAD_REQUEST, "`model` is required".into())),
    }
}

/// The adapter index of model `index` of an engine's models (the base is 0).
fn adapter_of(index: usize) -> Option<u32> {
    index.checked_sub(1).and_then(|a| u32::try_from(a).ok())
}

/// Parsed request fields the simulation uses.
struct GenerateRequest {
    /// Index of the model it names in the engine's models.
    model: usize,
    prompt_tokens: u32,
    /// The prompt as the engine reads it (the chat messages' contents joined by spaces).
    text: String,
    max_tokens: u32,
    ignore_eos: bool,
    stream: bool,
    include_usage: bool,
}

fn parse_request(
    body: &[u8],
    chat: bool,
    models: &[String],
) -> Result<GenerateRequest, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let (v, model) = request_for(body, models)?;
    let text = if chat {
        let messages = v
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("`messages` must be a list".into()))?;
        messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        v.get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("`prompt` must be a string".into()))?
            .to_owned()
    };
    let max_tokens = match v
        .get("max_tokens")
        .or_else(|| v.get("max_completion_tokens"))
    {
        None => 16,
        Some(n) => n
            .as_u64()
            .filter(|&n| n >= 1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(format!("max_tokens must be a positive integer, got {n}")))?,
    };
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok(GenerateRequest {
        model,
        prompt_tokens: u32::try_from(text.split_whitespace().count())
            .unwrap_or(u32::MAX)
            .max(1),
        text,
        max_tokens,
        ignore_eos: v
            .get("ignore_eos")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        stream,
        include_usage: stream
            && v.pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
    })
}

/// A uniform draw in `[0, 1)` from the seed, the request id and a salt (splitmix64).
fn draw(seed: u64, id: &str, salt: u64) -> f64 {
    let mut x = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in id.bytes() {
        x = (x ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn pick_fault(faults: &SimFaults, u: f64) -> Option<Fault> {
    let mut edge = faults.http_error;
    if u < edge {
        return Some(Fault::HttpError);
    }
    edge += faults.malformed_chunk;
    if u < edge {
        return Some(Fault::MalformedChunk);
    }
    edge += faults.drop_connection;
    (u < edge).then_some(Fault::DropConnection)
}

/// Drops the arrival stamp of a request its handler did not claim (`/health`, a refusal), so
/// that it is not taken for the next request's on the connection.
async fn forget_unclaimed_arrival(
    ConnectInfo(arrival): ConnectInfo<ArrivalStamp>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    arrival.take();
    response
}

async fn generate(
    State(state): State<Arc<AppState>>,
    ConnectInfo(arrival): ConnectInfo<ArrivalStamp>,
    headers: HeaderMap,
    body: Bytes,
    chat: bool,
) -> Response {
    let received = Instant::now();
    let arrived = arrival.take();
    let req = match parse_request(&body, chat, &state.models) {
        Ok(r) => r,
        Err((status, message)) => return error_response(status, &message),
    };
    let id = request_id(&state, &headers);
    let fault = pick_fault(&state.faults, draw(state.seed, &id, 1));
    if fault == Some(Fault::HttpError) {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated internal error (fault injection)",
        );
    }
    let output_tokens = if req.ignore_eos {
        req.max_tokens
    } else {
        1 + (draw(state.seed, &id, 2) * f64::from(req.max_tokens)) as u32
    }
    .min(req.max_tokens);
    let (tokens_tx, tokens_rx) = mpsc::unbounded_channel();
    let adapter = adapter_of(req.model);
    let (blocks, answer_blocks) = sequence_keys(&req.text, output_tokens, adapter);
    let admission = Admission {
        prompt_tokens: req.prompt_tokens,
        blocks,
        answer_blocks,
        output_tokens,
        adapter,
        tokens: tokens_tx,
    };
    if state.admissions.send(admission).is_err() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "engine is shutting down");
    }
    let stream_id = format!("cmpl-{id}");
    let response = Responder {
        chat,
        model_json: state.model_jsons[req.model].clone(),
        id_json: serde_json::to_string(&stream_id).unwrap_or_default(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        prompt_tokens: req.prompt_tokens,
        output_tokens,
        stopped_early: output_tokens < req.max_tokens,
    };
    let truth = state.truth.clone().map(|log| {
        let intake = TokenTruth {
            arrived,
            received,
            emitted: Vec::new(),
        };
        (log, id, intake)
    });
    if req.stream {
        let (body_tx, body_rx) = mpsc::channel(64);
        tokio::spawn(response.stream(tokens_rx, body_tx, req.include_usage, fault, truth));
        let body = Body::from_stream(ReceiverStream::new(body_rx));
        (
            [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
                (SIMULATED_HEADER, "true"),
            ],
            body,
        )
            .into_response()
    } else {
        response.whole(tokens_rx, truth).await
    }
}

/// Length of the simulated embedding vectors.
const EMBEDDING_DIMENSIONS: usize = 16;

/// The input of an embeddings request (one text, or a list of texts joined by spaces) and the
/// index of the model it names.
fn embedding_input(
    body: &[u8],
    models: &[String],
) -> Result<(String, usize), (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let (v, model) = request_for(body, models)?;
    let text = match v.get("input") {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|texts| texts.join(" "))
            .ok_or_else(|| bad("`input` must be a string or a list of strings".into())),
        _ => Err(bad(
            "`input` must be a string or a non-empty list of strings".into(),
        )),
    }?;
    Ok((text, model))
}

/// `POST /v1/embeddings`: the input is prefilled in one scheduler step, beside the running
/// sequences, and the answer is a vector drawn from the seed and the request id.
async fn embed(
    State(state): State<Arc<AppState>>,
    ConnectInfo(arrival): ConnectInfo<ArrivalStamp>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Instant::now();
    let arrived = arrival.take();
    let (text, model) = match embedding_input(&body, &state.models) {
        Ok(t) => t,
        Err((status, message)) => return error_response(status, &message),
    };
    let id = request_id(&state, &headers);
    if pick_fault(&state.faults, draw(state.seed, &id, 1)) == Some(Fault::HttpError) {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated internal error (fault injection)",
        );
    }
    let prompt_tokens = u32::try_from(text.split_whitespace().count())
        .unwrap_or(u32::MAX)
        .max(1);
    let (tokens_tx, mut tokens_rx) = mpsc::unbounded_channel();
    let adapter = adapter_of(model);
    let admission = Admission {
        prompt_tokens,
        blocks: sequence_keys(&text, 0, adapter).0,
        answer_blocks: Vec::new(),
        output_tokens: 1,
        adapter,
        tokens: tokens_tx,
    };
    if state.admissions.send(admission).is_err() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "engine is shutting down");
    }
    let Some(ready) = tokens_rx.recv().await else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "engine is shutting down");
    };
    let vector: Vec<f64> = (0..EMBEDDING_DIMENSIONS)
        .map(|i| draw(state.seed, &id, 100 + i as u64) * 2.0 - 1.0)
        .collect();
    let body = serde_json::json!({
        "id": format!("embd-{id}"),
        "object": "list",
        "created": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "model": state.models[model],
        "data": [{"index": 0, "object": "embedding", "embedding": vector}],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    if let Some(log) = &state.truth {
        log.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            TokenTruth {
                arrived,
                received,
                emitted: vec![ready],
            },
        );
    }
    json_response(StatusCode::OK, body.to_string())
}

/// Where a request's truth goes, its id, and its truth so far (emitted still empty).
type TruthSlot = Option<(Arc<Mutex<HashMap<String, TokenTruth>>>, String, TokenTruth)>;

/// Formats one request's response.
struct Responder {
    chat: bool,
    model_json: String,
    id_json: String,
    created: u64,
    prompt_tokens: u32,
    output_tokens: u32,
    /// True when the draw ended the output before `max_tokens` (an end-of-sequence).
    stopped_early: bool,
}

impl Responder {
    fn chunk(&self, choice: &str) -> Bytes {
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        Bytes::from(format!(
            "data: {{\"id\":{},\"object\":\"{object}\",\"created\":{},\"model\":{},\"system_fingerprint\":\"multitenant-simulated\",\"choices\":[{choice}]}}\n\n",
            self.id_json, self.created, self.model_json
        ))
    }

    fn token_choice(&self, index: u32, finish: Option<&str>) -> String {
        let finish = finish.map_or("null".to_owned(), |f| format!("\"{f}\""));
        let word = format!(" tok{index}");
        if self.chat {
            format!(
                "{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"finish_reason\":{finish}}}"
            )
        } else {
            format!("{{\"index\":0,\"text\":\"{word}\",\"finish_reason\":{finish}}}")
        }
    }

    fn usage_json(&self) -> String {
        format!(
            "{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}",
            self.prompt_tokens,
            self.output_tokens,
            self.prompt_tokens + self.output_tokens
        )
    }

    fn finish_reason(&self) -> &'static str {
        if self.stopped_early {
            "stop"
        } else {
            "length"
        }
    }

    async fn stream(
        self,
        mut tokens: mpsc::UnboundedReceiver<Instant>,
        body: mpsc::Sender<Result<Bytes, std::io::Error>>,
        include_usage: bool,
        fault: Option<Fault>,
        truth: TruthSlot,
    ) {
        let mut emitted = Vec::with_capacity(self.output_tokens as usize);
        if self.chat {
            let role = "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}";
            if body.send(Ok(self.chunk(role))).await.is_err() {
                return;
            }
        }
        let midpoint = self.output_tokens / 2;
        let mut index = 0;
        // A client that goes away (hyper drops the body once it sees the connection close)
        // ends the wait for the next token too, so the scheduler sees the request aborted even
        // while it still waits in the queue.
        while let Some(Some(_)) = tokio::select! {
            token = tokens.recv() => Some(token),
            () = body.closed() => None,
        } {
            index += 1;
            if index > midpoint && fault == Some(Fault::MalformedChunk) {
                let _ = body
                    .send(Ok(Bytes::from_static(b"data: {\"choices\":[{\"text\"\n\n")))
                    .await;
                return;
            }
            if index > midpoint && fault == Some(Fault::DropConnection) {
                let _ = body
                    .send(Err(std::io::Error::other("simulated dropped connection")))
                    .await;
                return;
            }
            let finish = (index == self.output_tokens).then(|| self.finish_reason());
            let chunk = self.chunk(&self.token_choice(index, finish));
            emitted.push(Instant::now());
            if body.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if let Some((log, id, truth)) = truth {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, TokenTruth { emitted, ..truth });
        }
        if include_usage {
            let usage = format!(
                "data: {{\"id\":{},\"object\":\"{}\",\"created\":{},\"model\":{},\"choices\":[],\"usage\":{}}}\n\n",
                self.id_json,
                if self.chat { "chat.completion.chunk" } else { "text_completion" },
                self.created,
                self.model_json,
                self.usage_json()
            );
            if body.send(Ok(Bytes::from(usage))).await.is_err() {
                return;
            }
        }
        let _ = body.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    }

    async fn whole(
        self,
        mut tokens: mpsc::UnboundedReceiver<Instant>,
        truth: TruthSlot,
    ) -> Response {
        let mut emitted = Vec::with_capacity(self.output_tokens as usize);
        while let Some(at) = tokens.recv().await {
            emitted.push(at);
        }
        let text: String = (1..=emitted.len()).map(|i| format!(" tok{i}")).collect();
        if let Some((log, id, truth)) = truth {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, TokenTruth { emitted, ..truth });
        }
        let text = serde_json::to_string(&text).unwrap_or_default();
        let finish = self.finish_reason();
        let choice = if self.chat {
            format!("{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{text}}},\"finish_reason\":\"{finish}\"}}")
        } else {
            format!("{{\"index\":0,\"text\":{text},\"finish_reason\":\"{finish}\"}}")
        };
        let object = if self.chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        json_response(
            StatusCode::OK,
            format!(
                "{{\"id\":{},\"object\":\"{object}\",\"created\":{},\"model\":{},\"choices\":[{choice}],\"usage\":{}}}",
                self.id_json,
                self.created,
                self.model_json,
                self.usage_json()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `request` on `tcp` and reads its whole answer (the engine closes nothing, so
    /// the answer ends at its `content-length`).
    async fn exchange(tcp: &mut tokio::net::TcpStream, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed mid-answer: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().expect("length"))
                    })
                    .expect("a content-length");
                if body.len() >= length {
                    return text;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_requests_truth_starts_at_its_own_arrival_not_an_earlier_requests() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let config = SimEngineConfig {
            model: "m".into(),
            adapters: Vec::new(),
            timing: SimTiming::default(),
            faults: SimFaults::default(),
            seed: 1,
            record_truth: true,
        };
        let gpu = Arc::new(SimGpu::new(multitenant::config::SharingMode::Solo, 0.0));
        let engine = SimEngine::start(listener, config, gpu).expect("engine");
        let mut tcp = tokio::net::TcpStream::connect(engine.addr)
            .await
            .expect("connect");
        let completion = |id: &str| {
            let body = r#"{"model":"m","prompt":"a b c","max_tokens":2,"ignore_eos":true}"#;
            format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-request-id: {id}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        };
        // A completion, a request no handler claims the arrival of, then, on the same
        // connection, another completion: its truth starts at its own bytes.
        // The kernel stamps a moment after the engine asks: wait for the first stamped answer.
        let mut stamped = false;
        for i in 0..100 {
            let id = format!("r0-{i}");
            let first = exchange(&mut tcp, &completion(&id)).await;
            assert!(first.starts_with("HTTP/1.1 200"), "{first}");
            if engine.truth(&id).and_then(|t| t.arrived).is_some() {
                stamped = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(stamped, "the kernel stamped no request within a second");
        let health = exchange(&mut tcp, "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let sent = Instant::now();
        let answer = exchange(&mut tcp, &completion("r1")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let truth = engine.truth("r1").expect("recorded");
        let arrived = truth.arrived.expect("the kernel stamped it");
        assert!(
            sent <= arrived,
            "the health check's arrival was taken for it"
        );
        assert!(arrived <= truth.received && truth.received <= truth.emitted[0]);
        engine.stop().await;
    }

    #[test]
    fn draws_are_uniform_and_depend_on_the_request_id() {
        let draws: Vec<f64> = (0..10_000).map(|i| draw(7, &format!("r{i}"), 1)).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert_eq!(draw(7, "a", 1), draw(7, "a", 1));
        assert_ne!(draw(7, "a", 1), draw(8, "a", 1));
    }

    #[test]
    fn faults_are_picked_by_their_probability_bands() {
        let f = SimFaults {
            http_error: 0.1,
            malformed_chunk: 0.2,
            drop_connection: 0.3,
        };
        assert_eq!(pick_fault(&f, 0.05), Some(Fault::HttpError));
        assert_eq!(pick_fault(&f, 0.25), Some(Fault::MalformedChunk));
        assert_eq!(pick_fault(&f, 0.55), Some(Fault::DropConnection));
        assert_eq!(pick_fault(&f, 0.65), None);
    }

    #[test]
    fn requests_name_the_base_model_or_one_of_its_adapters() {
        let models = ["llama".to_owned(), "sql".to_owned()];
        let body = |model: &str| format!(r#"{{"model":"{model}","prompt":"a b"}}"#);
        let found = |model: &str| request_for(body(model).as_bytes(), &models).map(|(_, i)| i);
        assert_eq!(found("llama"), Ok(0));
        assert_eq!(found("sql"), Ok(1));
        assert_eq!(adapter_of(0), None);
        assert_eq!(adapter_of(1), Some(0));
        let (status, message) = found("chat").expect_err("not served");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(message, "The model `chat` does not exist.");
    }
}
