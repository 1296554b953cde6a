//! The JSONL files of a run on the agent's disk: appending events and serving their bytes.
//!
//! The files are the source of truth. Each append writes one whole line and flushes it to the
//! file before returning, so whatever a reader (the gRPC stream, a crash inspector) can see is
//! exactly what is on disk. A line-offset index lets [`StreamFile::read_from`] serve any suffix
//! of a file by sequence number, which is what makes `StreamEvents` resumable.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use multitenant::events::{Event, EventWriter, Header};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// One stream file of a run.
pub struct StreamFile {
    rel_path: String,
    abs_path: PathBuf,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

struct Inner {
    writer: Option<EventWriter<BufWriter<File>>>,
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
    /// Appends one event as a whole line and flushes it.
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
        let written = writer
            .write(event)
            .and_then(|(_, n)| writer.flush().map(|()| n));
        match written {
            Ok(n) => {
                let start = inner.len;
                inner.offsets.push(start);
                inner.len += n as u64;
                drop(inner);
                self.changed.send_modify(|v| *v += 1);
                Ok(())
            }
            Err(e) => {
                inner.failed = Some(e.to_string());
                Err(e)
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
        inner.sha256_hex = Some(sha256_file(&self.abs_path)?);
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        Ok(())
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
}

impl RunStreams {
    /// Streams rooted at `root` (created if missing).
    pub fn new(root: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            streams: Mutex::new(Vec::new()),
            changed: watch::Sender::new(0),
        })
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
            .write(true)
            .create_new(true)
            .open(&abs_path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", abs_path.display()),
                )
            })?;
        let mut writer = EventWriter::new(BufWriter::new(file), header)?;
        writer.flush()?;
        let len = std::fs::metadata(&abs_path)?.len();
        let stream = Arc::new(StreamFile {
            rel_path: rel_path.to_owned(),
            abs_path,
            inner: Mutex::new(Inner {
                writer: Some(writer),
                offsets: vec![0],
                len,
                sha256_hex: None,
                failed: None,
            }),
            changed: self.changed.clone(),
        });
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream.clone());
        self.changed.send_modify(|v| *v += 1);
        Ok(stream)
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
}
