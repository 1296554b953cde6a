//! The JSONL files of a run on the agent's disk: appending events and serving their bytes.
//!
//! The files are the source of truth. Each append writes one whole line and flushes it to the
//! file before returning, so whatever a reader (the gRPC stream, a crash inspector) can see is
//! exactly what is on disk. A line-offset index lets [`StreamFile::read_from`] serve any suffix
//! of a file by sequence number, which is what makes `StreamEvents` resumable. Each stream's
//! SHA-256, once it is closed, is appended to the run folder's `SHA256SUMS` (the format of
//! `sha256sum`, so `sha256sum -c SHA256SUMS` checks the folder), where `coordinator attach`
//! verifies a copy it adopts without the agent.
//!
//! A write that fails (a full disk, above all) leaves no half line: the file is cut back to
//! its last whole line, the stream takes no more lines, and the run's [`WriteFailure`] names
//! the file and the error for the trial to stop on. The run folder holds a small reserve file
//! from its start, given back at that first failure, so that the trial's end can still be
//! recorded on a disk that filled up.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use multitenant::events::{Event, EventWriter, Header};
use multitenant::layout::{StreamName, RESERVE_FILE, SUMS_FILE};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Size of the run folder's [`RESERVE_FILE`]: many times what a trial's end and its streams' checksums take.
const RESERVE_BYTES: usize = 1 << 20;

/// The first write of a run that failed, for every stream of the run to report and the trial
/// to stop on.
pub struct WriteFailure {
    first: OnceLock<String>,
    failed: CancellationToken,
    reserve: Mutex<Option<PathBuf>>,
}

impl WriteFailure {
    /// Keeps [`RESERVE_BYTES`] in `root` (written, not sparse, so that the space is taken).
    fn reserve_in(root: &Path) -> io::Result<Self> {
        let path = root.join(RESERVE_FILE);
        std::fs::write(&path, vec![0u8; RESERVE_BYTES]).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reserve {} KiB in {}: {e}",
                    RESERVE_BYTES >> 10,
                    root.display()
                ),
            )
        })?;
        Ok(Self {
            first: OnceLock::new(),
            failed: CancellationToken::new(),
            reserve: Mutex::new(Some(path)),
        })
    }

    /// No reserve: for the streams of a run that has ended, which take no more lines.
    fn none() -> Self {
        Self {
            first: OnceLock::new(),
            failed: CancellationToken::new(),
            reserve: Mutex::new(None),
        }
    }

    /// Records `reason` if it is the first, gives the reserve back, and wakes the watchers.
    fn record(&self, reason: String) {
        let _ = self.first.set(reason);
        self.release();
        self.failed.cancel();
    }

    /// Removes the reserve file (done at the first failure and when the run ends).
    fn release(&self) {
        if let Some(path) = self
            .reserve
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }

    /// The first failed write, in words (`cannot write <file>: <error>`).
    pub fn reason(&self) -> Option<&str> {
        self.first.get().map(String::as_str)
    }

    /// Cancelled at the first failed write.
    pub fn token(&self) -> &CancellationToken {
        &self.failed
    }
}

/// One stream file of a run.
pub struct StreamFile {
    rel_path: String,
    abs_path: PathBuf,
    /// The run folder's `SHA256SUMS`.
    sums_path: PathBuf,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    failure: Arc<WriteFailure>,
}

struct Inner {
    /// Appends to the file (opened in append mode, unbuffered: each line is one write).
    writer: Option<EventWriter<File>>,
    /// Byte offset of the start of each line; `offsets.len()` lines are on disk.
    offsets: Vec<u64>,
    len: u64,
    sha256_hex: Option<String>,
    /// First write error; later appends are refused with it so no line goes missing silently.
    failed: Option<String>,
}

/// A stream's state, as `GetRun` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSnapshot {
    /// Path relative to the run folder.
    pub rel_path: String,
    /// Lines on disk.
    pub lines: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Checksum of the whole file, once closed.
    pub sha256_hex: Option<String>,
}

impl StreamFile {
    /// Appends one event as a whole line, written through to the file. A write that fails
    /// is cut back out of the file, refuses every later append, and is recorded as the
    /// run's [`WriteFailure`].
    pub fn append(&self, event: &Event) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(err) = &inner.failed {
            return Err(io::Error::other(format!(
                "{}: an earlier write failed: {err}",
                self.rel_path
            )));
        }
        let Some(writer) = inner.writer.as_mut() else {
            return Err(io::Error::other(format!("{} is closed", self.rel_path)));
        };
        match writer.write(event) {
            Ok((_, n)) => {
                let start = inner.len;
                inner.offsets.push(start);
                inner.len += n as u64;
                drop(inner);
                self.changed.send_modify(|v| *v += 1);
                Ok(())
            }
            Err(e) => {
                let mut reason = format!("cannot write {}: {e}", self.rel_path);
                // Part of the line may have reached the disk: cut it off, so the file ends
                // with its last whole line, as the index says. Cutting needs no space.
                let cut = File::options()
                    .write(true)
                    .open(&self.abs_path)
                    .and_then(|f| f.set_len(inner.len));
                if let Err(cut) = cut {
                    reason.push_str(&format!(
                        " (and cutting it back to its last whole line failed: {cut})"
                    ));
                }
                inner.failed = Some(reason.clone());
                drop(inner);
                self.failure.record(reason.clone());
                Err(io::Error::new(e.kind(), reason))
            }
        }
    }

    /// Flushes, closes and checksums the file. Closing twice is harmless.
    pub fn close(&self) -> io::Result<()> {
        let mut inner = self.lock();
        let Some(writer) = inner.writer.take() else {
            return Ok(());
        };
        writer.finish()?;
        let sha = sha256_file(&self.abs_path)?;
        // Closed from here on, even if SHA256SUMS cannot take the line: the coordinator's
        // copy is checked against this checksum, and `attach` names a stream SHA256SUMS lacks.
        inner.sha256_hex = Some(sha.clone());
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        append_sum(&self.sums_path, &sha, &self.rel_path)
    }

    /// Path relative to the run folder.
    pub fn rel_path(&self) -> &str {
        &self.rel_path
    }

    /// The stream's current state.
    pub fn snapshot(&self) -> StreamSnapshot {
        let inner = self.lock();
        StreamSnapshot {
            rel_path: self.rel_path.clone(),
            lines: inner.offsets.len() as u64,
            bytes: inner.len,
            sha256_hex: inner.sha256_hex.clone(),
        }
    }

    /// Whole lines from `from_seq` on, at most about `max_bytes` (always at least one line when
    /// any is available): `(line_count, bytes)`, or `None` when there is nothing new.
    pub fn read_from(&self, from_seq: u64, max_bytes: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
        let (start, end, count) = {
            let inner = self.lock();
            let lines = inner.offsets.len() as u64;
            if from_seq >= lines {
                return Ok(None);
            }
            let first = inner.offsets[from_seq as usize];
            let mut last = from_seq + 1;
            while last < lines && inner.offsets[last as usize] - first < max_bytes {
                last += 1;
            }
            let end = if last < lines {
                inner.offsets[last as usize]
            } else {
                inner.len
            };
            (first, end, last - from_seq)
        };
        let mut file = File::open(&self.abs_path)?;
        file.seek(SeekFrom::Start(start))?;
        let mut buf = vec![0; (end - start) as usize];
        file.read_exact(&mut buf)?;
        Ok(Some((count, buf)))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves whole lines on disk; the state stays usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// All stream files of one run, in creation order, with one change counter for followers.
pub struct RunStreams {
    root: PathBuf,
    streams: Mutex<Vec<Arc<StreamFile>>>,
    changed: watch::Sender<u64>,
    failure: Arc<WriteFailure>,
}

impl RunStreams {
    /// Streams rooted at `root` (created if missing), with the run's reserve file in it.
    pub fn new(root: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        let failure = Arc::new(WriteFailure::reserve_in(&root)?);
        Ok(Self {
            root,
            streams: Mutex::new(Vec::new()),
            changed: watch::Sender::new(0),
            failure,
        })
    }

    /// The run's first failed write, if any.
    pub fn failure(&self) -> &WriteFailure {
        &self.failure
    }

    /// Gives the reserve back: the run has ended and writes nothing more.
    pub fn release_reserve(&self) {
        self.failure.release();
    }

    /// The run folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates `rel_path` (e.g. `mps/chat-a.jsonl`) and writes its header.
    pub fn create(&self, rel_path: &str, header: Header) -> io::Result<Arc<StreamFile>> {
        let abs_path = self.root.join(rel_path);
        if let Some(parent) = abs_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::options()
            .append(true)
            .create_new(true)
            .open(&abs_path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", abs_path.display()),
                )
            })?;
        let writer = EventWriter::new(file, header).map_err(|e| {
            // A stream without its whole header is no stream: it goes, and nothing lists it.
            let _ = std::fs::remove_file(&abs_path);
            let reason = format!("cannot write {rel_path}: {e}");
            self.failure.record(reason.clone());
            io::Error::new(e.kind(), reason)
        })?;
        let len = std::fs::metadata(&abs_path)?.len();
        let stream = Arc::new(StreamFile {
            rel_path: rel_path.to_owned(),
            abs_path,
            sums_path: self.root.join(SUMS_FILE),
            inner: Mutex::new(Inner {
                writer: Some(writer),
                offsets: vec![0],
                len,
                sha256_hex: None,
                failed: None,
            }),
            changed: self.changed.clone(),
            failure: self.failure.clone(),
        });
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream.clone());
        self.changed.send_modify(|v| *v += 1);
        Ok(stream)
    }

    /// The streams a run recorded in `root` before this agent process started: every
    /// stream file under it, closed. A stream left open (its agent died mid-run) is cut back to
    /// its last whole line and closed now, so that its checksum joins `SHA256SUMS` too.
    pub fn recover(root: PathBuf) -> io::Result<Self> {
        let sums_path = root.join(SUMS_FILE);
        let sums = std::fs::read_to_string(&sums_path).unwrap_or_default();
        let recorded: std::collections::HashMap<&str, &str> = sums
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(sha, path)| (path, sha))
            .collect();
        let mut paths = Vec::new();
        jsonl_files(&root, &root, &mut paths)?;
        paths.sort();
        let this = Self {
            streams: Mutex::new(Vec::new()),
            changed: watch::Sender::new(0),
            failure: Arc::new(WriteFailure::none()),
            root,
        };
        for rel_path in paths {
            let abs_path = this.root.join(&rel_path);
            let offsets = whole_lines(&abs_path)?;
            let len = std::fs::metadata(&abs_path)?.len();
            let sha256_hex = match recorded.get(rel_path.as_str()) {
                Some(sha) => (*sha).to_owned(),
                None => {
                    let sha = sha256_file(&abs_path)?;
                    append_sum(&sums_path, &sha, &rel_path)?;
                    sha
                }
            };
            this.streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::new(StreamFile {
                    rel_path,
                    abs_path,
                    sums_path: sums_path.clone(),
                    inner: Mutex::new(Inner {
                        writer: None,
                        offsets,
                        len,
                        sha256_hex: Some(sha256_hex),
                        failed: None,
                    }),
                    changed: this.changed.clone(),
                    failure: this.failure.clone(),
                }));
        }
        Ok(this)
    }

    /// Every stream so far.
    pub fn all(&self) -> Vec<Arc<StreamFile>> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A receiver that changes whenever any stream gets a line, is created or is closed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes followers without a data change (e.g. when the run's state changes).
    pub fn poke(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// Appends `sha  rel_path` to `SHA256SUMS`. One write of one line in append mode: closes
/// racing on other streams cannot interleave inside it.
fn append_sum(sums_path: &Path, sha: &str, rel_path: &str) -> io::Result<()> {
    File::options()
        .create(true)
        .append(true)
        .open(sums_path)
        .and_then(|mut sums| sums.write_all(format!("{sha}  {rel_path}\n").as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", sums_path.display())))
}

/// Every stream file (a name [`StreamName`] knows) under `dir`, relative to `root`, dot
/// entries left out.
pub(crate) fn jsonl_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            jsonl_files(root, &path, out)?;
        } else if StreamName::parse(&entry.file_name().to_string_lossy()).is_some() {
            if let Some(rel) = path.strip_prefix(root).ok().and_then(Path::to_str) {
                out.push(rel.to_owned());
            }
        }
    }
    Ok(())
}

/// Start offsets of the whole lines of `path`; a last line without its newline (its writer
/// died inside the write) is cut off the file.
fn whole_lines(path: &Path) -> io::Result<Vec<u64>> {
    let mut file = io::BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut offsets = Vec::new();
    let (mut at, mut line_start) = (0u64, 0u64);
    loop {
        let buf = io::BufRead::fill_buf(&mut file)?;
        if buf.is_empty() {
            break;
        }
        for (i, _) in buf.iter().enumerate().filter(|(_, b)| **b == b'\n') {
            offsets.push(line_start);
            line_start = at + i as u64 + 1;
        }
        let n = buf.len();
        at += n as u64;
        io::BufRead::consume(&mut file, n);
    }
    if line_start < at {
        File::options()
            .write(true)
            .open(path)?
            .set_len(line_start)?;
    }
    Ok(offsets)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitenant::config::SharingMode;
    use multitenant::events::{StreamKind, WarningEvent};

    fn header() -> Header {
        Header {
            schema_version: multitenant::events::SCHEMA_VERSION.into(),
            tool_version: "test".into(),
            experiment: "e".into(),
            run_id: "r".into(),
            node: "n".into(),
            trial: "t".into(),
            mode: SharingMode::Solo,
            stream: StreamKind::Agent,
            zero_wall_ns: 1,
            simulated: true,
            stage: None,
            tenant: None,
        }
    }

    #[test]
    fn serves_any_suffix_by_sequence_number_byte_for_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let streams = RunStreams::new(dir.path().to_owned()).expect("streams");
        let s = streams.create("t/agent.jsonl", header()).expect("create");
        for i in 0..10 {
            s.append(&Event::Warning(WarningEvent {
                at_ns: i,
                message: format!("w{i}"),
            }))
            .expect("append");
        }
        s.close().expect("close");
        let on_disk = std::fs::read(dir.path().join("t/agent.jsonl")).expect("read");
        let (count, all) = s.read_from(0, u64::MAX).expect("read").expect("lines");
        assert_eq!((count, &all), (11, &on_disk));
        let (count, tail) = s.read_from(7, u64::MAX).expect("read").expect("lines");
        assert_eq!(count, 4);
        assert!(on_disk.ends_with(&tail));
        assert!(tail.starts_with(b"{\"seq\":7,"));
        let (count, small) = s.read_from(1, 1).expect("read").expect("lines");
        assert_eq!(count, 1, "a tiny budget still yields one whole line");
        assert!(small.ends_with(b"\n"));
        assert!(s.read_from(11, 10).expect("read").is_none());
        let snap = s.snapshot();
        assert_eq!(snap.lines, 11);
        assert_eq!(snap.bytes, on_disk.len() as u64);
        assert_eq!(snap.sha256_hex.as_deref().map(str::len), Some(64));
        assert!(s
            .append(&Event::Warning(WarningEvent {
                at_ns: 0,
                message: "late".into()
            }))
            .is_err());
    }

    #[test]
    fn closed_streams_are_listed_in_sha256sums_as_sha256sum_writes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let streams = RunStreams::new(dir.path().to_owned()).expect("streams");
        let a = streams.create("t/agent.jsonl", header()).expect("create");
        let b = streams.create("t/host.jsonl", header()).expect("create");
        let open = streams.create("u/agent.jsonl", header()).expect("create");
        a.close().expect("close");
        b.close().expect("close");
        a.close().expect("a second close is harmless");
        let sums = std::fs::read_to_string(dir.path().join(SUMS_FILE)).expect("sums");
        let expected: String = [&a, &b]
            .iter()
            .map(|s| {
                format!(
                    "{}  {}\n",
                    s.snapshot().sha256_hex.expect("closed"),
                    s.rel_path()
                )
            })
            .collect();
        assert_eq!(
            sums,
            expected,
            "one line per closed stream, once, none for {}",
            open.rel_path()
        );
        let check = std::process::Command::new("sha256sum")
            .args(["-c", "--quiet", SUMS_FILE])
            .current_dir(dir.path())
            .status()
            .expect("sha256sum runs");
        assert!(check.success(), "sha256sum -c disagrees");
    }

    #[test]
    fn a_restarted_agent_serves_closed_streams_as_they_were_and_closes_open_ones_at_a_whole_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (closed, open) = {
            let streams = RunStreams::new(dir.path().to_owned()).expect("streams");
            let closed = streams.create("t/agent.jsonl", header()).expect("create");
            let open = streams.create("t/host.jsonl", header()).expect("create");
            for (i, s) in [&closed, &open, &open].into_iter().enumerate() {
                s.append(&Event::Warning(WarningEvent {
                    at_ns: i as u64,
                    message: "w".into(),
                }))
                .expect("append");
            }
            closed.close().expect("close");
            (closed.snapshot(), open.snapshot())
        };
        // The agent died inside a write: half a line at the end of the open stream.
        let host = dir.path().join("t/host.jsonl");
        let whole = std::fs::read(&host).expect("read");
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"seq\":3,\"ki");
        std::fs::write(&host, &torn).expect("tear");
        // Not a stream name: left out.
        std::fs::write(dir.path().join("t/notes.txt"), "x").expect("other file");

        let recovered = RunStreams::recover(dir.path().to_owned()).expect("recover");
        let snaps: Vec<StreamSnapshot> = recovered.all().iter().map(|s| s.snapshot()).collect();
        assert_eq!(snaps.len(), 2, "{snaps:?}");
        assert_eq!(
            snaps[0], closed,
            "a closed stream as it was, checksum from SHA256SUMS"
        );
        assert_eq!((snaps[1].lines, snaps[1].bytes), (open.lines, open.bytes));
        assert_eq!(
            std::fs::read(&host).expect("read"),
            whole,
            "cut to its last whole line"
        );
        let (count, served) = recovered.all()[1]
            .read_from(0, u64::MAX)
            .expect("read")
            .expect("lines");
        assert_eq!((count, served), (3, whole));
        assert!(
            recovered.all()[1]
                .append(&Event::Warning(WarningEvent {
                    at_ns: 9,
                    message: "late".into(),
                }))
                .is_err(),
            "a recovered stream takes no more lines"
        );
        let check = std::process::Command::new("sha256sum")
            .args(["-c", "--quiet", SUMS_FILE])
            .current_dir(dir.path())
            .status()
            .expect("sha256sum runs");
        assert!(
            check.success(),
            "the stream closed on recovery is in SHA256SUMS"
        );
    }
}
