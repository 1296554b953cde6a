//! Reads a stream back, tolerating damage: bad lines are skipped and reported, never fatal.

use std::path::{Path, PathBuf};

use super::{Event, Header, Line, SCHEMA_MAJOR};

/// A stream as read: its header, its events and what had to be skipped.
#[derive(Debug, Clone)]
pub struct StreamContents {
    /// Line 0.
    pub header: Header,
    /// Every readable event after the header, in file order.
    pub events: Vec<Line>,
    /// One message per skipped line, each naming `file:line`.
    pub warnings: Vec<String>,
}

impl StreamContents {
    /// The request events, in file order.
    pub fn requests(&self) -> impl Iterator<Item = &super::RequestEvent> {
        self.events.iter().filter_map(|l| match &l.event {
            Event::Request(r) => Some(r),
            _ => None,
        })
    }
}

/// Why a stream could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Line 1 is missing or is not a header.
    #[error("{}:1: {message}", path.display())]
    NoHeader {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        message: String,
    },
    /// The file was written by a newer, incompatible schema.
    #[error("{}:1: schema version {found} is newer than this reader's major version {SCHEMA_MAJOR}; upgrade multitenant to read it", path.display())]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: String,
    },
}

/// Longest line read: longer ones are skipped and named, so one hostile line cannot take the
/// reader's memory (a request event with a million chunk gaps is about 8 MB; a prompt of
/// 100,000 tokens about 1 MB).
pub const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;
/// Skipped lines named one by one per stream; the rest are counted in one more warning.
pub const MAX_NAMED_SKIPS: usize = 20;

/// Reads the stream at `path`.
pub fn read_stream(path: &Path) -> Result<StreamContents, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let shown = path.display();
    let complete_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut lines = bytes[..complete_len].split(|&b| b == b'\n').enumerate();
    let header = match lines.next() {
        Some((_, first)) if first.len() > MAX_LINE_BYTES => {
            return Err(ReadError::NoHeader {
                path: path.to_owned(),
                message: format!(
                    "a first line of {} bytes, over the {MAX_LINE_BYTES}-byte bound, is no header",
                    first.len()
                ),
            })
        }
        Some((_, first)) if !first.is_empty() => match serde_json::from_slice::<Line>(first) {
            Ok(Line {
                event: Event::Header(h),
                ..
            }) => h,
            Ok(other) => {
                return Err(ReadError::NoHeader {
                    path: path.to_owned(),
                    message: format!("expected a header line, found a {:?} event", other.event),
                })
            }
            Err(e) => {
                return Err(ReadError::NoHeader {
                    path: path.to_owned(),
                    message: e.to_string(),
                })
            }
        },
        _ => {
            return Err(ReadError::NoHeader {
                path: path.to_owned(),
                message: "the file has no complete first line".into(),
            })
        }
    };
    let major = header
        .schema_version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_none_or(|m| m > SCHEMA_MAJOR) {
        return Err(ReadError::NewerSchema {
            path: path.to_owned(),
            found: header.schema_version,
        });
    }
    let mut events = Vec::new();
    let mut warnings = Vec::new();
    let mut skipped = 0usize;
    let mut skip = |warning: String| {
        skipped += 1;
        if skipped <= MAX_NAMED_SKIPS {
            warnings.push(warning);
        }
    };
    for (index, raw) in lines {
        if raw.is_empty() {
            continue;
        }
        let line_no = index + 1;
        if raw.len() > MAX_LINE_BYTES {
            skip(format!(
                "{shown}:{line_no}: a line of {} bytes, over the {MAX_LINE_BYTES}-byte bound; line skipped",
                raw.len()
            ));
            continue;
        }
        match serde_json::from_slice::<Line>(raw) {
            Ok(line) if line.seq == index as u64 => events.push(line),
            Ok(line) => skip(format!(
                "{shown}:{line_no}: seq {} where {index} was expected; line skipped",
                line.seq
            )),
            Err(e) => skip(format!(
                "{shown}:{line_no}: not a valid event ({e}); line skipped"
            )),
        }
    }
    if skipped > MAX_NAMED_SKIPS {
        warnings.push(format!(
            "{shown}: {} more lines skipped like the {MAX_NAMED_SKIPS} above",
            skipped - MAX_NAMED_SKIPS
        ));
    }
    if complete_len < bytes.len() {
        let line_no = bytes[..complete_len]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        warnings.push(format!(
            "{shown}:{line_no}: truncated last line ({} bytes without a newline) skipped",
            bytes.len() - complete_len
        ));
    }
    Ok(StreamContents {
        header,
        events,
        warnings,
    })
}

/// Property tests: streams damaged in generated ways. Failures proptest finds are kept under
/// `proptest-regressions/` and replayed first on every later run.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::config::SharingMode;
    use crate::events::testing::completed;
    use crate::events::{StreamKind, SCHEMA_VERSION};

    /// What one line after the header holds.
    #[derive(Debug, Clone)]
    enum Written {
        /// A request event at its place.
        Event,
        /// A request event whose `seq` is not its place.
        WrongSeq,
        /// Bytes, without a newline.
        Bytes(Vec<u8>),
    }

    fn written() -> impl Strategy<Value = Written> {
        prop_oneof![
            4 => Just(Written::Event),
            1 => Just(Written::WrongSeq),
            2 => prop::collection::vec(any::<u8>().prop_filter("one line", |&b| b != b'\n'), 0..300)
                .prop_map(Written::Bytes),
        ]
    }

    fn header_line() -> Vec<u8> {
        let header = Header {
            schema_version: SCHEMA_VERSION.into(),
            tool_version: "proptest".into(),
            experiment: "e".into(),
            run_id: "r".into(),
            node: "n".into(),
            trial: "t".into(),
            mode: SharingMode::Solo,
            stream: StreamKind::Tenant,
            zero_wall_ns: 1,
            simulated: true,
            stage: None,
            tenant: None,
        };
        let mut line = serde_json::to_vec(&Line {
            seq: 0,
            event: Event::Header(header),
        })
        .expect("serialise");
        line.push(b'\n');
        line
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_damaged_stream_yields_exactly_its_whole_valid_lines(
            lines in prop::collection::vec(written(), 0..80),
            tail in prop::collection::vec(any::<u8>().prop_filter("no newline", |&b| b != b'\n'), 0..40),
        ) {
            let mut file = header_line();
            let mut expected = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                let seq = i as u64 + 1;
                match line {
                    Written::Event | Written::WrongSeq => {
                        let event = Event::Request(completed(seq, 5, 1, 3));
                        let written_seq = if matches!(line, Written::Event) { seq } else { seq + 1_000 };
                        let event_line = Line { seq: written_seq, event };
                        file.extend(serde_json::to_vec(&event_line).expect("serialise"));
                        if written_seq == seq {
                            expected.push(event_line);
                        }
                    }
                    Written::Bytes(bytes) => file.extend(bytes),
                }
                file.push(b'\n');
            }
            file.extend(&tail);
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("t.jsonl");
            std::fs::write(&path, &file).expect("write");
            let read = read_stream(&path).expect("a stream with a header reads");
            prop_assert_eq!(read.events, expected);
            prop_assert!(read.warnings.len() <= MAX_NAMED_SKIPS + 2, "{} warnings", read.warnings.len());
            prop_assert_eq!(
                read.warnings.iter().any(|w| w.contains("truncated last line")),
                !tail.is_empty()
            );
        }
    }
}
