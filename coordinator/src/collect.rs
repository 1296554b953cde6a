//! Copies a run's streams from an agent into the experiment folder, byte for byte.
//!
//! The local copy is append-only and its line count is the cursor: after a broken stream the
//! collector asks the agent to resume from the lines it holds, so nothing is lost or doubled.
//! At the end every stream is checked against the agent's line count, size and SHA-256.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use multitenant::events::Line;
use multitenant::proto::v1::{
    ConfirmRunRequest, EventChunk, GetRunRequest, GetRunResponse, RunStatus, StreamCursor,
    StreamDigest, StreamEventsRequest,
};
use sha2::{Digest, Sha256};

use crate::agent_client::Client;
use crate::console::say;
use crate::progress::Progress;

/// How long nothing may listen at the agent's address (connection refused) before the agent
/// is reported dead: a refusal is an answer from its machine, not a slow network.
const REFUSED_FOR: Duration = Duration::from_secs(2);

/// How long the agent may take to record a confirmation.
const CONFIRM_WITHIN: Duration = Duration::from_secs(30);

/// What collecting a run took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectReport {
    /// Where the run stands on the agent, as its last answer said.
    pub status: RunStatus,
    /// The run's error, if it failed.
    pub error: String,
    /// Streams copied and verified.
    pub streams: usize,
    /// Times the event stream was re-opened after it broke.
    pub resumes: u32,
}

struct LocalStream {
    file: File,
    next_seq: u64,
}

/// Copies the streams of one node's run into `node_dir`.
pub struct Collector<'a> {
    node: String,
    node_dir: PathBuf,
    streams: HashMap<String, LocalStream>,
    progress: &'a Progress,
    /// The run's lease: an agent unreachable for longer has stopped the run by itself.
    lease: Duration,
}

impl<'a> Collector<'a> {
    /// A collector for `node`, writing under `node_dir`, reporting to `progress`; it gives
    /// up on an agent unreachable for longer than `lease`. Streams already in `node_dir`
    /// (from an earlier attempt) are resumed from their line counts.
    pub fn new(node: &str, node_dir: &Path, progress: &'a Progress, lease: Duration) -> Self {
        Self {
            node: node.to_owned(),
            node_dir: node_dir.to_owned(),
            streams: HashMap::new(),
            progress,
            lease,
        }
    }

    /// Follows run `run_id` until the agent has sent everything, then verifies the copies.
    pub async fn collect(
        &mut self,
        client: &mut Client,
        run_id: &str,
    ) -> anyhow::Result<CollectReport> {
        let mut attempts: u32 = 0;
        let mut resumes = 0;
        let mut unreachable = Unreachable::default();
        loop {
            let cursors = self
                .streams
                .iter()
                .map(|(path, s)| StreamCursor {
                    path: path.clone(),
                    next_seq: s.next_seq,
                })
                .collect();
            let request = StreamEventsRequest {
                run_id: run_id.to_owned(),
                cursors,
            };
            let broken = match client.stream_events(request).await {
                Ok(response) => {
                    attempts = 0;
                    unreachable = Unreachable::default();
                    let mut chunks = response.into_inner();
                    loop {
                        match chunks.message().await {
                            Ok(Some(chunk)) => self.apply(chunk)?,
                            Ok(None) => break None,
                            Err(status) => break Some(status),
                        }
                    }
                }
                Err(status)
                    if status.code() == tonic::Code::Unauthenticated
                        || status.code() == tonic::Code::NotFound =>
                {
                    bail!(
                        "node {}: the agent refused the event stream: {}",
                        self.node,
                        status.message()
                    )
                }
                Err(status) => Some(status),
            };
            let Some(status) = broken else { break };
            attempts += 1;
            resumes += 1;
            let reason = crate::agent_client::with_sources(&status);
            if let Some(verdict) = unreachable.judge(&reason, self.lease) {
                bail!("node {}: {verdict} (last error: {reason})", self.node);
            }
            tracing::warn!(
                "node {}: event stream broke ({}); resuming",
                self.node,
                status.message()
            );
            say!(
                "  {}: event stream broke ({}); resuming from the lines held",
                self.node,
                status.message()
            );
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts.min(20)))).await;
        }
        let run = client
            .get_run(GetRunRequest {
                run_id: run_id.to_owned(),
            })
            .await
            .with_context(|| {
                format!(
                    "node {}: asking the agent for the run's final state",
                    self.node
                )
            })?
            .into_inner();
        let digests = self.verify(&run)?;
        let streams = run.streams.len();
        let status = self.status_of(run.status)?;
        if status != RunStatus::Running && digests.len() == streams {
            self.confirm(client, run_id, digests).await;
        }
        Ok(CollectReport {
            status,
            error: run.error,
            streams,
            resumes,
        })
    }

    /// The run status an agent answered, read at the edge: an unknown or missing one is an
    /// agent of another version, said so.
    fn status_of(&self, wire: i32) -> anyhow::Result<RunStatus> {
        match RunStatus::try_from(wire) {
            Ok(RunStatus::Unspecified) => bail!(
                "node {}: the agent gave no run status: it is older than this coordinator ({}); install the agent of this version on the node",
                self.node,
                multitenant::TOOL_VERSION
            ),
            Ok(status) => Ok(status),
            Err(_) => bail!(
                "node {}: the agent gave run status {wire}, which this coordinator ({}) does not know: use the coordinator of the agent's version",
                self.node,
                multitenant::TOOL_VERSION
            ),
        }
    }

    /// Appends one chunk, skipping lines already held.
    fn apply(&mut self, chunk: EventChunk) -> anyhow::Result<()> {
        let rel = checked_rel_path(&chunk.path)
            .with_context(|| format!("node {}: bad stream path from the agent", self.node))?;
        if !self.streams.contains_key(&chunk.path) {
            let stream = self.open(&rel)?;
            self.streams.insert(chunk.path.clone(), stream);
        }
        let Some(stream) = self.streams.get_mut(&chunk.path) else {
            return Ok(());
        };
        let newlines = chunk.data.iter().filter(|&&b| b == b'\n').count() as u64;
        if newlines != chunk.line_count || chunk.data.last().is_some_and(|&b| b != b'\n') {
            bail!(
                "node {}: chunk of {} from seq {} claims {} lines but holds {newlines} whole lines",
                self.node,
                chunk.path,
                chunk.first_seq,
                chunk.line_count
            );
        }
        if chunk.first_seq > stream.next_seq {
            bail!(
                "node {}: {} jumped from line {} to {}: lines are missing",
                self.node,
                chunk.path,
                stream.next_seq,
                chunk.first_seq
            );
        }
        let skip = (stream.next_seq - chunk.first_seq) as usize;
        let mut data: &[u8] = &chunk.data;
        for _ in 0..skip.min(newlines as usize) {
            let end = data
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| i + 1);
            data = &data[end..];
        }
        if data.is_empty() {
            return Ok(());
        }
        stream
            .file
            .write_all(data)
            .with_context(|| format!("writing {}", rel.display()))?;
        stream.file.flush()?;
        stream.next_seq = chunk.first_seq + chunk.line_count;
        for raw in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(line) = serde_json::from_slice::<Line>(raw) {
                self.progress.observe(&self.node, &chunk.path, &line);
            }
        }
        Ok(())
    }

    fn open(&self, rel: &Path) -> anyhow::Result<LocalStream> {
        let path = self.node_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let next_seq = match File::open(&path) {
            Ok(existing) => {
                let lines = BufReader::new(existing).split(b'\n').count() as u64;
                let len = std::fs::metadata(&path)?.len();
                if len > 0 && std::fs::read(&path)?.last() != Some(&b'\n') {
                    bail!(
                        "{} ends inside a line; move it aside before resuming",
                        path.display()
                    );
                }
                lines
            }
            Err(_) => 0,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(LocalStream { file, next_seq })
    }

    /// Tells the agent that this copy of its ended run is whole, so that its retention may
    /// delete the run; a refusal only means the agent keeps it, and is said.
    async fn confirm(&self, client: &mut Client, run_id: &str, streams: Vec<StreamDigest>) {
        // Only a copy on disk is one: the agent may delete its own as soon as it hears.
        if let Err(e) = self.sync(&streams) {
            say!(
                "  {}: the copy could not be synced to disk ({e:#}); the agent is not told it may delete the run",
                self.node
            );
            return;
        }
        let request = ConfirmRunRequest {
            run_id: run_id.to_owned(),
            streams,
        };
        // The run is collected whatever the answer: a confirmation never holds up the end.
        let answer = tokio::time::timeout(CONFIRM_WITHIN, client.confirm_run(request)).await;
        let Ok(answer) = answer else {
            say!(
                "  {}: the agent did not answer the copy's confirmation within {} s; it keeps the run",
                self.node,
                CONFIRM_WITHIN.as_secs()
            );
            return;
        };
        match answer {
            Ok(answer) => {
                let retention = answer.into_inner().retention;
                if !retention.is_empty() {
                    say!(
                        "  {}: the agent recorded that this folder holds a verified copy of the run; {retention}",
                        self.node
                    );
                }
            }
            // An agent from before confirmations keeps every run.
            Err(status) if status.code() == tonic::Code::Unimplemented => {}
            Err(status) => say!(
                "  {}: the agent did not take the copy's confirmation ({}); it keeps the run",
                self.node,
                status.message()
            ),
        }
    }

    /// Syncs the local copy of each of `streams`, and the folders that name them, to disk.
    fn sync(&self, streams: &[StreamDigest]) -> anyhow::Result<()> {
        let mut folders = std::collections::BTreeSet::new();
        for stream in streams {
            let path = self.node_dir.join(checked_rel_path(&stream.path)?);
            File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", path.display()))?;
            folders.extend(path.parent().map(Path::to_owned));
        }
        for folder in folders {
            File::open(&folder)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", folder.display()))?;
        }
        Ok(())
    }

    /// Checks every stream the agent has against the local copy; returns the SHA-256 of each
    /// copy of a closed stream.
    fn verify(&self, run: &GetRunResponse) -> anyhow::Result<Vec<StreamDigest>> {
        let mut digests = Vec::new();
        for s in &run.streams {
            let rel = checked_rel_path(&s.path)?;
            let path = self.node_dir.join(&rel);
            let local = std::fs::read(&path)
                .with_context(|| format!("node {}: {} was never received", self.node, s.path))?;
            let lines = local.iter().filter(|&&b| b == b'\n').count() as u64;
            if lines != s.lines || local.len() as u64 != s.bytes {
                bail!(
                    "node {}: {} holds {lines} lines / {} bytes here but {} / {} on the agent",
                    self.node,
                    s.path,
                    local.len(),
                    s.lines,
                    s.bytes
                );
            }
            if s.closed {
                let sha = hex::encode(Sha256::digest(&local));
                if sha != s.sha256_hex {
                    bail!(
                        "node {}: {} differs from the agent's copy (SHA-256 {sha} vs {})",
                        self.node,
                        s.path,
                        s.sha256_hex
                    );
                }
                digests.push(StreamDigest {
                    path: s.path.clone(),
                    sha256_hex: sha,
                });
            }
        }
        Ok(digests)
    }
}

/// How long an agent has been out of reach, and whether to go on trying.
#[derive(Debug, Default)]
struct Unreachable {
    /// Since the first failure in a row.
    since: Option<std::time::Instant>,
    /// Since the first refused connection in a row.
    refused_since: Option<std::time::Instant>,
}

impl Unreachable {
    /// Records a failure described by `reason`; says why to give up, or `None` to retry.
    fn judge(&mut self, reason: &str, lease: Duration) -> Option<String> {
        let now = std::time::Instant::now();
        let since = *self.since.get_or_insert(now);
        if reason.contains("Connection refused") {
            let refused = *self.refused_since.get_or_insert(now);
            if now - refused >= REFUSED_FOR {
                return Some(format!(
                    "the agent is gone: nothing listens at its address any more (connection refused for {:.1} s); it died or was killed",
                    (now - refused).as_secs_f64()
                ));
            }
        } else {
            self.refused_since = None;
        }
        (now - since >= lease).then(|| {
            format!(
                "the agent was out of reach for {} s, longer than the run's lease ({} s): it has stopped the run by itself; its files stay on the node",
                (now - since).as_secs(),
                lease.as_secs()
            )
        })
    }
}

/// Accepts `trial/stream.jsonl`-like relative paths only: no `..`, no absolute paths.
fn checked_rel_path(path: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(path);
    let normal = p.components().all(|c| matches!(c, Component::Normal(_)));
    if path.is_empty() || !normal || p.extension().is_none_or(|e| e != "jsonl") {
        bail!("{path:?} is not a relative .jsonl path inside the run folder");
    }
    Ok(p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_is_a_dead_agent_within_seconds_a_slow_one_waits_for_the_lease() {
        let lease = Duration::from_secs(3600);
        let mut refused = Unreachable::default();
        let refusal = "transport error: tcp connect error: Connection refused (os error 111)";
        assert_eq!(
            refused.judge(refusal, lease),
            None,
            "the first refusal retries"
        );
        refused.refused_since = Some(std::time::Instant::now() - REFUSED_FOR);
        let verdict = refused
            .judge(refusal, lease)
            .expect("dead after REFUSED_FOR");
        assert!(verdict.contains("the agent is gone"), "{verdict}");

        let mut slow = Unreachable::default();
        let timeout = "transport error: timed out";
        assert_eq!(slow.judge(timeout, lease), None);
        slow.since = Some(std::time::Instant::now() - Duration::from_secs(600));
        assert_eq!(slow.judge(timeout, lease), None, "within the lease");
        slow.since = Some(std::time::Instant::now() - lease);
        let verdict = slow.judge(timeout, lease).expect("past the lease");
        assert!(verdict.contains("longer than the run's lease"), "{verdict}");
    }

    #[test]
    fn stream_paths_cannot_leave_the_run_folder() {
        assert!(checked_rel_path("mps/a.jsonl").is_ok());
        for bad in [
            "../x.jsonl",
            "/etc/x.jsonl",
            "mps/a.txt",
            "",
            "a/../../b.jsonl",
        ] {
            assert!(checked_rel_path(bad).is_err(), "{bad}");
        }
    }
}
