//! Appends events to a stream as whole lines, numbering them.

use std::io::{self, Write};

use super::{Event, Header, Line};

/// Writes a stream: the header as line 0, then one event per line with increasing `seq`.
///
/// Each event is serialized completely before any byte is written, and written with one
/// `write_all`, so a reader never sees half an event unless the process dies mid-write.
/// Flushing is the caller's choice; [`EventWriter::finish`] flushes.
pub struct EventWriter<W: Write> {
    out: W,
    next_seq: u64,
    buf: Vec<u8>,
}

impl<W: Write> EventWriter<W> {
    /// Starts a stream on `out` by writing `header` as line 0.
    pub fn new(out: W, header: Header) -> io::Result<Self> {
        let mut writer = Self {
            out,
            next_seq: 0,
            buf: Vec::with_capacity(512),
        };
        writer.write(&Event::Header(header))?;
        Ok(writer)
    }

    /// Appends one event; returns its `seq` and the number of bytes of its line.
    pub fn write(&mut self, event: &Event) -> io::Result<(u64, usize)> {
        self.buf.clear();
        let line = Line {
            seq: self.next_seq,
            event: event.clone(),
        };
        serde_json::to_writer(&mut self.buf, &line).map_err(io::Error::other)?;
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)?;
        self.next_seq += 1;
        Ok((line.seq, self.buf.len()))
    }

    /// Pushes buffered bytes to the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The `seq` the next event will get (= lines written so far).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
