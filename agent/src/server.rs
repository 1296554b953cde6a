//! The gRPC face of the agent: thin translations between the wire and the [`RunManager`].
//! Authentication happens before any of this, in the interceptor built by [`serve`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use multitenant::auth::BearerToken;
use multitenant::events::SCHEMA_MAJOR;
use multitenant::proto::v1::agent_server::{Agent, AgentServer};
use multitenant::proto::v1::pairing_server::{Pairing, PairingServer};
use multitenant::proto::v1::{
    ConfirmRunRequest, ConfirmRunResponse, DoctorCheck, DoctorRequest, DoctorResponse,
    EnrollRequest, EnrollResponse, EventChunk, GetRunRequest, GetRunResponse, GpuInfo, InfoRequest,
    InfoResponse, RunStatus, StartRunRequest, StartRunResponse, StopRunRequest, StopRunResponse,
    StreamEventsRequest, StreamState, TrialRefusal,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::gpu::GpuStatus;
use crate::identity::{EnrolError, Enroller};
use crate::run::{ConfirmError, Run, RunManager, RunState, StartError};

/// Most bytes sent in one `EventChunk`.
const CHUNK_BYTES: u64 = 256 * 1024;

/// How often a connection is pinged. An open event stream renews its run's lease, and data
/// sent into a cut link still fills the kernel's buffers, so only an unanswered ping shows
/// that the coordinator is gone: the stream ends, and the lease runs, at most
/// `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT` (10 s) after the link went.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

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
/// With TLS that enrols coordinators (a daemon agent's), the `Pairing` service is served
/// under the token alone, and every `Agent` call also needs a client certificate of the
/// agent's CA.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runs: Arc<RunManager>,
    token: BearerToken,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let contact = runs.contact().clone();
    let enrolment = tls.as_ref().and_then(|t| t.enrolment.clone());
    let needs_client_cert = enrolment.is_some();
    let agent_token = token.clone();
    let service = AgentServer::with_interceptor(AgentService::new(runs), move |req: Request<()>| {
        if needs_client_cert && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::unauthenticated(
                "this agent needs a client certificate: pair with it first (`coordinator pair <pairing string> --node <name>`)",
            ));
        }
        let checked = agent_token.check(req);
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
                .client_ca_root(Certificate::from_pem(tls.client_ca_pem))
                // Only enrolment goes without a certificate; the interceptor above holds
                // every other call to one. A certificate of another CA is still refused in
                // the handshake.
                .client_auth_optional(needs_client_cert),
        )?;
    }
    let pairing = enrolment.map(|enroller| {
        PairingServer::with_interceptor(PairingService { enroller }, move |req: Request<()>| {
            token.check(req)
        })
    });
    builder
        .add_service(service)
        .add_optional_service(pairing)
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
    /// A daemon agent's own CA, which signs the certificates of coordinators that pair.
    pub enrolment: Option<Arc<Enroller>>,
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
            enrolment: None,
        })
    }
}

/// Enrolment of coordinators that hold the pairing string.
struct PairingService {
    enroller: Arc<Enroller>,
}

#[tonic::async_trait]
impl Pairing for PairingService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let req = request.into_inner();
        let client_cert_pem =
            self.enroller
                .sign(&req.csr_pem, &req.label)
                .map_err(|e| match e {
                    EnrolError::BadRequest(_) => Status::invalid_argument(e.to_string()),
                    EnrolError::Agent(_) => Status::internal(e.to_string()),
                })?;
        eprintln!(
            "enrolled a coordinator ({}): it may now call this agent",
            req.label
        );
        Ok(Response::new(EnrollResponse {
            client_cert_pem,
            hostname: sysinfo::System::host_name().unwrap_or_default(),
        }))
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
            engine_kinds: multitenant::config::Engine::KINDS
                .iter()
                .map(|&k| k.to_owned())
                .collect(),
            mps: self.runs.mps_readiness(),
        }))
    }

    async fn doctor(
        &self,
        request: Request<DoctorRequest>,
    ) -> Result<Response<DoctorResponse>, Status> {
        let req = request.into_inner();
        let (checks, refusals) = self
            .runs
            .doctor(&req.config_yaml, &req.node)
            .await
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(DoctorResponse {
            checks: checks
                .into_iter()
                .map(|c| DoctorCheck {
                    status: c.status.name().into(),
                    name: c.name.into(),
                    detail: c.detail,
                })
                .collect(),
            refusals: refusals
                .into_iter()
                .map(|(trial, reasons)| TrialRefusal { trial, reasons })
                .collect(),
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
            status: RunStatus::from(&state).into(),
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
        let status = match run.state() {
            RunState::Running => RunStatus::Stopped,
            other => RunStatus::from(&other),
        };
        Ok(Response::new(StopRunResponse {
            status: status.into(),
        }))
    }

    async fn confirm_run(
        &self,
        request: Request<ConfirmRunRequest>,
    ) -> Result<Response<ConfirmRunResponse>, Status> {
        let req = request.into_inner();
        let copies = req
            .streams
            .into_iter()
            .map(|d| (d.path, d.sha256_hex))
            .collect();
        let ended_ago = self
            .runs
            .confirm(&req.run_id, &copies)
            .map_err(|e| match e {
                ConfirmError::NotFound(_) => Status::not_found(e.to_string()),
                ConfirmError::Refused(_) => Status::failed_precondition(e.to_string()),
                ConfirmError::Record { .. } => Status::internal(e.to_string()),
            })?;
        eprintln!(
            "run {}: a coordinator confirmed its copy of every stream",
            req.run_id
        );
        let retention = self.runs.retention().describe_for(ended_ago);
        // A run past its time goes now, not at the next hourly sweep.
        let runs = self.runs.clone();
        tokio::task::spawn_blocking(move || {
            for line in runs.sweep() {
                eprintln!("{line}");
            }
        });
        Ok(Response::new(ConfirmRunResponse { retention }))
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

/// Property tests: calls of any shape are answered, never a panic, and an event stream resumed
/// from any cursors serves each stream's lines from exactly there. Failures proptest finds are
/// kept under `agent/proptest-regressions/` and replayed first on every later run.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use tokio_stream::StreamExt;

    use super::*;
    use crate::gpu::NodeGpus;
    use multitenant::proto::v1::StreamCursor;

    /// A run of one simulated tenant that ends within a second.
    const TINY: &str = "name: p\nworkloads:\n  w: {arrival: {kind: constant, rate: 50}, data: {prompt_tokens: 4, output_tokens: 4}, warmup: 0s, duration: 300ms}\nnodes:\n  - {name: n, trials: [solo], tenants: [{name: a, engine: {kind: simulated}, workload: w}]}\n";

    fn service(dir: &std::path::Path) -> AgentService {
        let gpu = NodeGpus::unavailable("property tests run without a GPU");
        let runs = RunManager::new(dir.to_owned(), gpu, "no-such-mps-control".into());
        AgentService::new(Arc::new(runs))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Any text, and text made of YAML's own punctuation, which the loader must parse or
    /// refuse.
    fn yamlish() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z_:{}\\[\\],.\"'&*!|>#0-9 \n-]{0,300}",
            // A config without workloads, its names and kinds drawn: never a valid run.
            "name: x\nnodes: \\[\\{name: [a-z]{0,3}, trials: \\[[a-z]{0,6}\\], tenants: \\[\\{name: a, engine: \\{kind: [a-z]{0,9}\\}, workload: w\\}\\]\\}\\]\n",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn a_start_request_of_any_shape_is_refused_with_its_reason(
            run_id in any::<String>(),
            config_yaml in yamlish(),
            node in any::<String>(),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let service = service(dir.path());
            let request = StartRunRequest { run_id, config_yaml, node };
            let answer = runtime().block_on(service.start_run(Request::new(request)));
            let status = answer.expect_err("no generated request is a whole valid run");
            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            prop_assert!(!status.message().is_empty());
            prop_assert!(!service.runs.has_had_runs(), "nothing was started");
        }

        #[test]
        fn a_doctor_request_of_any_shape_is_refused_with_its_reason(
            config_yaml in yamlish(),
            node in any::<String>(),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let service = service(dir.path());
            let request = DoctorRequest { config_yaml, node };
            let answer = runtime().block_on(service.doctor(Request::new(request)));
            let status = answer.expect_err("no generated config names a node it has");
            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            prop_assert!(!status.message().is_empty());
        }

        #[test]
        fn a_call_about_a_run_that_is_not_there_is_not_found_by_its_id(
            run_id in any::<String>(),
            cursors in prop::collection::vec((any::<String>(), any::<u64>()), 0..4),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let service = service(dir.path());
            let named = format!("{run_id:?}");
            let cursors = cursors
                .into_iter()
                .map(|(path, next_seq)| StreamCursor { path, next_seq })
                .collect();
            let stream = StreamEventsRequest { run_id: run_id.clone(), cursors };
            let statuses = runtime().block_on(async {
                [
                    service.get_run(Request::new(GetRunRequest { run_id: run_id.clone() })).await.err(),
                    service.stop_run(Request::new(StopRunRequest { run_id: run_id.clone() })).await.err(),
                    service.stream_events(Request::new(stream)).await.err(),
                ]
            });
            for status in statuses {
                let status = status.expect("refused");
                prop_assert_eq!(status.code(), tonic::Code::NotFound);
                prop_assert!(status.message().contains(&named), "{}", status.message());
            }
        }
    }

    #[test]
    fn any_cursors_resume_every_stream_exactly_from_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime();
        let service = service(dir.path());
        let start = StartRunRequest {
            run_id: "p".into(),
            config_yaml: TINY.into(),
            node: "n".into(),
        };
        rt.block_on(service.start_run(Request::new(start)))
            .expect("start");
        rt.block_on(async {
            for _ in 0..300 {
                let get = GetRunRequest { run_id: "p".into() };
                let run = service.get_run(Request::new(get)).await.expect("get");
                let run = run.into_inner();
                if run.status() != RunStatus::Running {
                    assert_eq!(run.status(), RunStatus::Finished, "{}", run.error);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the run did not end within 30 s");
        });
        let files: Vec<(String, Vec<u8>)> = service
            .runs
            .get("p")
            .expect("the run")
            .streams
            .all()
            .iter()
            .map(|s| {
                let path = dir.path().join("p").join(s.rel_path());
                (s.rel_path().to_owned(), std::fs::read(path).expect("read"))
            })
            .collect();
        assert!(
            files.len() >= 3,
            "agent, host and tenant streams: {}",
            files.len()
        );
        // A pick names a stream by its index (one past the last: a path the run lacks) and a
        // cursor, up to past the stream's end.
        let picks = prop::collection::vec((0..=files.len(), 0u64..40), 0..6);
        let mut runner = TestRunner::new(Config {
            cases: 64,
            failure_persistence: None,
            ..Config::default()
        });
        let checked = runner.run(&picks, |picks| {
            let cursors: Vec<StreamCursor> = picks
                .iter()
                .map(|&(i, next_seq)| StreamCursor {
                    path: files.get(i).map_or("no/such.jsonl".into(), |f| f.0.clone()),
                    next_seq,
                })
                .collect();
            // The last cursor of a path counts, as the agent reads them.
            let from: HashMap<String, u64> = cursors
                .iter()
                .map(|c| (c.path.clone(), c.next_seq))
                .collect();
            let request = StreamEventsRequest {
                run_id: "p".into(),
                cursors,
            };
            let chunks = rt.block_on(async {
                let answer = service.stream_events(Request::new(request)).await;
                let mut stream = answer.expect("stream").into_inner();
                let mut chunks = Vec::new();
                let wait = Duration::from_secs(10);
                while let Some(chunk) = tokio::time::timeout(wait, stream.next())
                    .await
                    .expect("the stream of an ended run ends")
                {
                    chunks.push(chunk.expect("chunk"));
                }
                chunks
            });
            prop_assert!(
                chunks.iter().all(|c| files.iter().any(|f| f.0 == c.path)),
                "only the run's streams are sent"
            );
            for (path, bytes) in &files {
                let first = from.get(path).copied().unwrap_or(0);
                let want: Vec<u8> = bytes
                    .split_inclusive(|&b| b == b'\n')
                    .skip(usize::try_from(first).unwrap_or(usize::MAX))
                    .flatten()
                    .copied()
                    .collect();
                let (mut got, mut next) = (Vec::new(), first);
                for chunk in chunks.iter().filter(|c| &c.path == path) {
                    prop_assert_eq!(chunk.first_seq, next, "{}", path);
                    next += chunk.line_count;
                    got.extend_from_slice(&chunk.data);
                }
                prop_assert!(got == want, "{path} from line {first}");
            }
            Ok(())
        });
        if let Err(e) = checked {
            panic!("{e}");
        }
    }
}
