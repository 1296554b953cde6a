//! Server-sent events: bytes in, the `data` payloads of complete events out.
//!
//! Follows the WHATWG event-stream rules the OpenAI servers use: lines end in `\n` or `\r\n`,
//! an empty line ends an event, `data:` lines (one optional space after the colon) are joined
//! with `\n`, comment lines (`:`) and other fields are ignored. Bytes are kept until an event is
//! complete, so an event split across network reads is parsed once, when its last byte arrives.

/// Largest event accepted; a stream that sends more without an event boundary is broken.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// Why the byte stream is not valid SSE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// An event grew past [`MAX_EVENT_BYTES`].
    #[error("an SSE event exceeded {MAX_EVENT_BYTES} bytes without ending")]
    TooLarge,
    /// A line is not UTF-8.
    #[error("an SSE line is not valid UTF-8")]
    NotUtf8,
}

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the `data` of every event completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, SseError> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(rel) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + rel;
            let mut line = &self.pending[start..end];
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    events.push(data);
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
            start = end + 1;
        }
        self.pending.drain(..start);
        let held = self.pending.len() + self.data.as_ref().map_or(0, String::len);
        if held > MAX_EVENT_BYTES {
            return Err(SseError::TooLarge);
        }
        Ok(events)
    }

    /// True when bytes of an unfinished event are held (a stream that ends now was cut).
    pub fn has_partial_event(&self) -> bool {
        !self.pending.is_empty() || self.data.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_are_parsed_once_complete() {
        let stream = b"data: {\"a\":1}\n\n: comment\r\nevent: x\r\ndata: one\r\ndata: two\r\n\r\ndata:[DONE]\n\n";
        for split in 0..stream.len() {
            let mut p = SseParser::default();
            let mut got = p.feed(&stream[..split]).expect("valid");
            got.extend(p.feed(&stream[split..]).expect("valid"));
            assert_eq!(got, ["{\"a\":1}", "one\ntwo", "[DONE]"], "split at {split}");
            assert!(!p.has_partial_event());
        }
    }

    #[test]
    fn a_cut_stream_and_bad_bytes_are_reported() {
        let mut p = SseParser::default();
        assert!(p.feed(b"data: {\"choi").expect("valid").is_empty());
        assert!(p.has_partial_event());
        assert_eq!(
            SseParser::default().feed(b"data: \xff\n\n"),
            Err(SseError::NotUtf8)
        );
        let mut big = SseParser::default();
        assert_eq!(
            big.feed(&vec![b'x'; MAX_EVENT_BYTES + 1]),
            Err(SseError::TooLarge)
        );
    }
}

/// Property tests: generated event streams cut at generated points, and arbitrary bytes.
/// Failures proptest finds are kept under `agent/proptest-regressions/` and replayed first on
/// every later run.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// `(payload, CRLF line ends, a comment line before it)` per event.
    fn events() -> impl Strategy<Value = Vec<(String, bool, bool)>> {
        prop::collection::vec(("[^\r\n]{0,40}", any::<bool>(), any::<bool>()), 0..20)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_events_cut_anywhere_are_parsed_exactly_once(
            events in events(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut text = String::new();
            for (data, crlf, comment) in &events {
                let end = if *crlf { "\r\n" } else { "\n" };
                if *comment {
                    text.push_str(": keep-alive");
                    text.push_str(end);
                }
                text.push_str("data: ");
                text.push_str(data);
                text.push_str(end);
                text.push_str(end);
            }
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            points.push(bytes.len());
            let mut parser = SseParser::default();
            let (mut got, mut from) = (Vec::new(), 0);
            for to in points {
                got.extend(parser.feed(&bytes[from..to]).expect("valid SSE"));
                from = to;
            }
            let expected: Vec<String> = events.into_iter().map(|(data, ..)| data).collect();
            prop_assert_eq!(got, expected);
            prop_assert!(!parser.has_partial_event());
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_where_they_are_cut_changes_nothing(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
            cut in any::<prop::sample::Index>(),
        ) {
            let whole = SseParser::default().feed(&bytes);
            let at = cut.index(bytes.len() + 1);
            let mut parser = SseParser::default();
            let cut_in_two = parser.feed(&bytes[..at]).and_then(|mut first| {
                first.extend(parser.feed(&bytes[at..])?);
                Ok(first)
            });
            match (whole, cut_in_two) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "whole {a:?} but cut in two {b:?}"),
            }
        }
    }
}
