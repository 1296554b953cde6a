//! The gRPC face of the agent: thin translations between the wire and the [`RunManager`].
//! Authentication happens before any of this, in the interceptor built by [`serve`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use multitenant::auth::BearerToken;
use multitenant::events::SCHEMA_MAJOR;
use multitenant::proto::v1::agent_server::{Agent, AgentServer};
use multitenant::proto::v1::{
    EventChunk, GetRunRequest, GetRunResponse, GpuInfo, InfoRequest, InfoResponse, StartRunRequest,
    StartRunResponse, StopRunRequest, StopRunResponse, StreamEventsRequest, StreamState,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::gpu::GpuStatus;
use crate::run::{Run, RunManager, RunState, StartError};

/// Most bytes sent in one `EventChunk`.
const CHUNK_BYTES: u64 = 256 * 1024;

/// How often an idle connection is pinged.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The service implementation.
pub struct AgentService {
    runs: Arc<RunManager>,
}

impl AgentService {
    /// A service over `runs`.
    pub fn new(runs: Arc<RunManager>) -> Self {
        Self { runs }
    }

    /// The run `id`, its lease renewed: a call about a run shows its coordinator is there.
    fn run(&self, id: &str) -> Result<Arc<Run>, Status> {
        let run = self
            .runs
            .get(id)
            .ok_or_else(|| Status::not_found(format!("this agent has no run {id:?}")))?;
        run.renew();
        Ok(run)
    }
}

/// Serves the agent API on `listener` until `shutdown`, refusing calls without `token`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runs: Arc<RunManager>,
    token: BearerToken,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let contact = runs.contact().clone();
    let service = AgentServer::with_interceptor(AgentService::new(runs), move |req| {
        let checked = token.check(req);
        if checked.is_ok() {
            contact.renew();
        }
        checked
    });
    // Pings find a coordinator that vanished without closing its connection (a sleeping
    // laptop, a cut link): its event stream ends, and stops renewing the run's lease.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        builder = builder.tls_config(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(tls.cert_pem, tls.key_pem))
                .client_ca_root(Certificate::from_pem(tls.client_ca_pem)),
        )?;
    }
    builder
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await
}

/// The agent's TLS material (PEM texts): its certificate and key, and the CA whose client
/// certificates it accepts.
#[derive(Clone)]
pub struct ServerTls {
    /// Certificate (chain) of the agent.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The CA of the coordinator's client certificate.
    pub client_ca_pem: String,
}

impl ServerTls {
    /// Reads the three PEM texts from [`multitenant::tls`]'s environment variables.
    pub fn from_env() -> anyhow::Result<Self> {
        use multitenant::tls::{CERT_ENV, CLIENT_CA_ENV, KEY_ENV};
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| v.contains("-----BEGIN"))
                .ok_or_else(|| anyhow::anyhow!("--tls needs a PEM text in {name}"))
        };
        Ok(Self {
            cert_pem: read(CERT_ENV)?,
            key_pem: read(KEY_ENV)?,
            client_ca_pem: read(CLIENT_CA_ENV)?,
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EventChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let (gpus, reason) = match self.runs.gpu() {
            GpuStatus::Available(devices) => (
                devices
                    .iter()
                    .map(|d| GpuInfo {
                        index: d.index,
                        name: d.name.clone(),
                        memory_total_bytes: d.memory_total_bytes,
                    })
                    .collect(),
                String::new(),
            ),
            GpuStatus::Unavailable(reason) => (Vec::new(), reason.clone()),
        };
        Ok(Response::new(InfoResponse {
            agent_version: multitenant::TOOL_VERSION.into(),
            hostname: sysinfo::System::host_name().unwrap_or_default(),
            schema_major: SCHEMA_MAJOR,
            gpus,
            gpu_unavailable_reason: reason,
            engine_kinds: vec!["simulated".into(), "external".into()],
        }))
    }

    async fn start_run(
        &self,
        request: Request<StartRunRequest>,
    ) -> Result<Response<StartRunResponse>, Status> {
        let req = request.into_inner();
        let (run, already_running) = self
            .runs
            .start(&req.run_id, &req.config_yaml, &req.node)
            .map_err(|e| match e {
                StartError::Invalid(m) => Status::invalid_argument(m),
                StartError::Conflict(_) => Status::already_exists(e.to_string()),
                StartError::ShuttingDown => Status::unavailable(e.to_string()),
                StartError::Io(_) => Status::internal(e.to_string()),
            })?;
        Ok(Response::new(StartRunResponse {
            run_id: run.id.clone(),
            already_running,
            trials: run.trials.clone(),
        }))
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = request.into_inner();
        let run = self.run(&req.run_id)?;
        let cursors: HashMap<String, u64> = req
            .cursors
            .into_iter()
            .map(|c| (c.path, c.next_seq))
            .collect();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(follow(run, cursors, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<GetRunResponse>, Status> {
        let run = self.run(&request.into_inner().run_id)?;
        let state = run.state();
        let streams = run
            .streams
            .all()
            .iter()
            .map(|s| {
                let snap = s.snapshot();
                StreamState {
                    path: snap.rel_path,
                    lines: snap.lines,
                    bytes: snap.bytes,
                    closed: snap.sha256_hex.is_some(),
                    sha256_hex: snap.sha256_hex.unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(GetRunResponse {
            run_id: run.id.clone(),
            state: state.name().into(),
            error: match state {
                RunState::Failed(e) => e,
                _ => run.stop_reason().unwrap_or_default(),
            },
            streams,
            trials: run.trials.clone(),
        }))
    }

    async fn stop_run(
        &self,
        request: Request<StopRunRequest>,
    ) -> Result<Response<StopRunResponse>, Status> {
        let run = self.run(&request.into_inner().run_id)?;
        run.stop();
        let state = match run.state() {
            RunState::Running => "stopped".to_owned(),
            other => other.name().to_owned(),
        };
        Ok(Response::new(StopRunResponse { state }))
    }
}

/// Sends every stream's lines from its cursor on, following the files until the run has ended
/// and every line of every stream was sent, or the client goes away. A run ends only after its
/// streams are closed, so nothing is written after the end is seen.
async fn follow(
    run: Arc<Run>,
    mut cursors: HashMap<String, u64>,
    tx: mpsc::Sender<Result<EventChunk, Status>>,
) {
    let mut changes = run.streams.subscribe();
    loop {
        changes.borrow_and_update();
        // An open stream the client still reads is a coordinator that is there.
        run.renew();
        let ended = run.state() != RunState::Running;
        let mut sent_any = false;
        let mut all_drained = true;
        for stream in run.streams.all() {
            let cursor = cursors.entry(stream.rel_path().to_owned()).or_insert(0);
            let read = match stream.read_from(*cursor, CHUNK_BYTES) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!(
                            "reading {}: {e}",
                            stream.rel_path()
                        ))))
                        .await;
                    return;
                }
            };
            if let Some((count, data)) = read {
                let chunk = EventChunk {
                    path: stream.rel_path().to_owned(),
                    first_seq: *cursor,
                    line_count: count,
                    data,
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                run.renew();
                *cursor += count;
                sent_any = true;
            }
            if *cursor < stream.snapshot().lines {
                all_drained = false;
            }
        }
        if ended && all_drained && !sent_any {
            return;
        }
        if !sent_any {
            // Wake on any change; the timeout also notices a client that went away.
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = tx.closed() => return,
            }
        }
    }
}
