//! Reads a stream back, line by line, tolerating damage: bad lines are skipped and reported,
//! never fatal.

use std::fs::File;
use std::io::{BufRead, BufReader};
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

/// A stream read one line at a time: its header when opened, then its events in file order,
/// skipping what cannot be read. Memory stays at one line (at most [`MAX_LINE_BYTES`]) and a
/// read buffer, whatever the file's size.
pub struct StreamReader {
    path: PathBuf,
    input: BufReader<File>,
    header: Header,
    /// The line being read.
    line: Vec<u8>,
    /// Index of the next line in the file (the header is 0).
    index: u64,
    skips: Skips,
    /// The last thing read was the end, a torn last line or an I/O error.
    ended: Option<String>,
}

/// Bytes read from the file per system call.
const READ_BUFFER: usize = 1 << 20;

/// What one read of a line found.
enum Raw {
    /// A whole line, in the reader's buffer.
    Line,
    /// A whole line of this many bytes, over the bound; not kept.
    TooLong(usize),
    /// The end of the file after this many bytes without a newline.
    Torn(usize),
    /// The end of the file.
    End,
}

/// Reads the next line of `input` into `line`, without its newline, keeping at most
/// [`MAX_LINE_BYTES`] of it.
fn read_raw(input: &mut BufReader<File>, line: &mut Vec<u8>) -> std::io::Result<Raw> {
    line.clear();
    let mut len = 0usize;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if len == 0 { Raw::End } else { Raw::Torn(len) });
        }
        let newline = memchr::memchr(b'\n', available);
        let part = &available[..newline.unwrap_or(available.len())];
        if len + part.len() <= MAX_LINE_BYTES {
            line.extend_from_slice(part);
        } else {
            line.clear();
        }
        len += part.len();
        let used = part.len() + usize::from(newline.is_some());
        input.consume(used);
        if newline.is_some() {
            return Ok(if len > MAX_LINE_BYTES {
                Raw::TooLong(len)
            } else {
                Raw::Line
            });
        }
    }
}

/// Lines skipped: the first [`MAX_NAMED_SKIPS`] named, the rest counted.
#[derive(Default)]
struct Skips {
    named: Vec<String>,
    count: usize,
}

impl Skips {
    fn note(&mut self, warning: String) {
        self.count += 1;
        if self.count <= MAX_NAMED_SKIPS {
            self.named.push(warning);
        }
    }
}

impl StreamReader {
    /// Opens the stream at `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let io_error = |source| ReadError::Io {
            path: path.to_owned(),
            source,
        };
        let no_header = |message: String| ReadError::NoHeader {
            path: path.to_owned(),
            message,
        };
        let file = File::open(path).map_err(io_error)?;
        let mut input = BufReader::with_capacity(READ_BUFFER, file);
        let mut line = Vec::new();
        let header = match read_raw(&mut input, &mut line).map_err(io_error)? {
            Raw::TooLong(len) => {
                return Err(no_header(format!(
                "a first line of {len} bytes, over the {MAX_LINE_BYTES}-byte bound, is no header"
            )))
            }
            Raw::Line if !line.is_empty() => match serde_json::from_slice::<Line>(&line) {
                Ok(Line {
                    event: Event::Header(h),
                    ..
                }) => h,
                Ok(other) => {
                    return Err(no_header(format!(
                        "expected a header line, found a {:?} event",
                        other.event
                    )))
                }
                Err(e) => return Err(no_header(e.to_string())),
            },
            _ => return Err(no_header("the file has no complete first line".into())),
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
        Ok(Self {
            path: path.to_owned(),
            input,
            header,
            line,
            index: 1,
            skips: Skips::default(),
            ended: None,
        })
    }

    /// The stream's header (line 0).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The header and one message per skipped line, each naming `file:line`, once every
    /// event has been read.
    pub fn finish(self) -> (Header, Vec<String>) {
        let shown = self.path.display();
        let mut warnings = self.skips.named;
        if self.skips.count > MAX_NAMED_SKIPS {
            warnings.push(format!(
                "{shown}: {} more lines skipped like the {MAX_NAMED_SKIPS} above",
                self.skips.count - MAX_NAMED_SKIPS
            ));
        }
        warnings.extend(self.ended.filter(|e| !e.is_empty()));
        (self.header, warnings)
    }
}

impl Iterator for StreamReader {
    type Item = Line;

    /// The next readable event; lines that are not one are skipped and noted.
    fn next(&mut self) -> Option<Line> {
        while self.ended.is_none() {
            let index = self.index;
            let line_no = index + 1;
            let shown = self.path.display();
            let raw = read_raw(&mut self.input, &mut self.line);
            self.index += 1;
            match raw {
                Err(e) => {
                    self.ended = Some(format!(
                        "{shown}:{line_no}: cannot read further ({e}); the rest of the file is left out"
                    ))
                }
                Ok(Raw::End) => self.ended = Some(String::new()),
                Ok(Raw::Torn(len)) => {
                    self.ended = Some(format!(
                        "{shown}:{line_no}: truncated last line ({len} bytes without a newline) skipped"
                    ))
                }
                Ok(Raw::TooLong(len)) => self.skips.note(format!(
                    "{shown}:{line_no}: a line of {len} bytes, over the {MAX_LINE_BYTES}-byte bound; line skipped"
                )),
                Ok(Raw::Line) if self.line.is_empty() => {}
                Ok(Raw::Line) => match super::line_de::parse_line(&mut self.line) {
                    Ok(line) if line.seq == index => return Some(line),
                    Ok(line) => self.skips.note(format!(
                        "{shown}:{line_no}: seq {} where {index} was expected; line skipped",
                        line.seq
                    )),
                    Err(e) => self.skips.note(format!(
                        "{shown}:{line_no}: not a valid event ({e}); line skipped"
                    )),
                },
            }
        }
        None
    }
}

/// Reads the whole stream at `path` into memory: for streams known to be small (an agent's
/// lifecycle, a trial's GPU samples) and for tests; large ones are folded through
/// [`StreamReader`].
pub fn read_stream(path: &Path) -> Result<StreamContents, ReadError> {
    let mut reader = StreamReader::open(path)?;
    let events = reader.by_ref().collect();
    let (header, warnings) = reader.finish();
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
