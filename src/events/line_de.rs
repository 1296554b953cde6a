//! Reads a [`Line`] straight from its JSON object, without buffering it first.
//!
//! A derived `#[serde(flatten)]` with an internally tagged event makes serde copy every field
//! of every line into a buffer of its own before reading any of them, which costs more than the
//! parse. Lines as the writer makes them begin with `seq` and `type`: once both are read, the
//! event's own fields are read from the rest of the object, in place. A line whose first keys
//! are others (written by hand, or by another tool) is read the slow way, whole, with the same
//! result.
//!
//! [`parse_line`] reads a request's `chunk_gaps_us`, most of a request line's bytes, by hand
//! before the rest goes to serde: plain digits and commas, which serde's general number parser
//! takes several times longer to read.

use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::Serialize;

use super::event::*;

/// The `type` of a line: which event its other fields are.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Tag {
    Header,
    Request,
    Phase,
    Trial,
    Engine,
    Warning,
    HostSample,
    EngineMetrics,
    Mps,
    ComputeMode,
    GpuSample,
    Prompt,
    TenantInvalid,
    Search,
    Probe,
    ProbeStopped,
    BudgetSpent,
}

impl Tag {
    /// Reads the event of this type from the rest of `map`.
    fn read_rest<'de, A: MapAccess<'de>>(self, map: A) -> Result<Event, A::Error> {
        let rest = MapAccessDeserializer::new(map);
        Ok(match self {
            Tag::Header => Event::Header(Deserialize::deserialize(rest)?),
            Tag::Request => Event::Request(Deserialize::deserialize(rest)?),
            Tag::Phase => Event::Phase(Deserialize::deserialize(rest)?),
            Tag::Trial => Event::Trial(Deserialize::deserialize(rest)?),
            Tag::Engine => Event::Engine(Deserialize::deserialize(rest)?),
            Tag::Warning => Event::Warning(Deserialize::deserialize(rest)?),
            Tag::HostSample => Event::HostSample(Deserialize::deserialize(rest)?),
            Tag::EngineMetrics => Event::EngineMetrics(Deserialize::deserialize(rest)?),
            Tag::Mps => Event::Mps(Deserialize::deserialize(rest)?),
            Tag::ComputeMode => Event::ComputeMode(Deserialize::deserialize(rest)?),
            Tag::GpuSample => Event::GpuSample(Deserialize::deserialize(rest)?),
            Tag::Prompt => Event::Prompt(Deserialize::deserialize(rest)?),
            Tag::TenantInvalid => Event::TenantInvalid(Deserialize::deserialize(rest)?),
            Tag::Search => Event::Search(Deserialize::deserialize(rest)?),
            Tag::Probe => Event::Probe(Deserialize::deserialize(rest)?),
            Tag::ProbeStopped => Event::ProbeStopped(Deserialize::deserialize(rest)?),
            Tag::BudgetSpent => Event::BudgetSpent(Deserialize::deserialize(rest)?),
        })
    }
}

/// A key of a line's object, as far as the fast path cares.
enum Key {
    Seq,
    Type,
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "seq" => Key::Seq,
                    "type" => Key::Type,
                    other => Key::Other(other.to_owned()),
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(LineVisitor)
    }
}

struct LineVisitor;

impl<'de> Visitor<'de> for LineVisitor {
    type Value = Line;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event line: an object with a `seq` and a `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line, A::Error> {
        let (mut seq, mut tag) = (None, None);
        loop {
            if let (Some(seq), Some(tag)) = (seq, tag) {
                let event = Tag::read_rest(tag, map)?;
                return Ok(Line { seq, event });
            }
            match map.next_key::<Key>()? {
                Some(Key::Seq) => seq = Some(map.next_value::<u64>()?),
                Some(Key::Type) => tag = Some(map.next_value::<Tag>()?),
                Some(Key::Other(first)) => return read_whole(map, first, seq, tag),
                None if seq.is_none() => return Err(de::Error::missing_field("seq")),
                None => return Err(de::Error::missing_field("type")),
            }
        }
    }
}

/// The slow path: a line whose event fields come before its `seq` or `type`, read whole into
/// a JSON object, then as an event.
fn read_whole<'de, A: MapAccess<'de>>(
    mut map: A,
    first: String,
    mut seq: Option<u64>,
    tag: Option<Tag>,
) -> Result<Line, A::Error> {
    let mut fields = serde_json::Map::new();
    if let Some(tag) = tag {
        let tag = serde_json::to_value(tag).map_err(de::Error::custom)?;
        fields.insert("type".into(), tag);
    }
    fields.insert(first, map.next_value()?);
    while let Some(key) = map.next_key::<Key>()? {
        match key {
            Key::Seq => seq = Some(map.next_value()?),
            Key::Type => {
                fields.insert("type".into(), map.next_value()?);
            }
            Key::Other(name) => {
                fields.insert(name, map.next_value()?);
            }
        }
    }
    let seq = seq.ok_or_else(|| de::Error::missing_field("seq"))?;
    let event = Event::deserialize(serde_json::Value::Object(fields)).map_err(de::Error::custom)?;
    Ok(Line { seq, event })
}

/// `"chunk_gaps_us":[` as a request line's top-level key: inside a JSON string its quotes
/// would be escaped, so these bytes occur nowhere else.
const GAPS_KEY: &[u8] = br#""chunk_gaps_us":["#;

/// Parses one line of a stream, `line` (which it may change: a request's chunk gaps are cut
/// out of it once read).
pub(super) fn parse_line(line: &mut Vec<u8>) -> serde_json::Result<Line> {
    let gaps = take_gaps(line);
    let mut parsed: Line = serde_json::from_slice(line)?;
    if let (Some(gaps), Event::Request(r)) = (gaps, &mut parsed.event) {
        r.chunk_gaps_us = gaps;
    }
    Ok(parsed)
}

/// Reads the chunk gaps of a request line when they are written as the writer writes them
/// (unsigned integers, commas, no spaces), and leaves `[]` in their place; `None`, with the
/// line unchanged, for anything else, which serde then reads (or refuses) as before.
fn take_gaps(line: &mut Vec<u8>) -> Option<Vec<u64>> {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(GAPS_KEY));
    let start = FINDER.find(line)? + GAPS_KEY.len();
    let list = &line[start..];
    if list.first() == Some(&b']') {
        return None;
    }
    let mut gaps = Vec::with_capacity(64);
    let mut at = 0;
    loop {
        let first_digit = at;
        let (mut value, digits) = list
            .get(at..at + 8)
            .and_then(|eight| short_number(eight.try_into().ok()?))
            .unwrap_or((0, 0));
        at += digits;
        // A number of 8 digits or more, or one near the end of the line: digit by digit.
        while let Some(digit) = list
            .get(at)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|&d| d <= 9)
        {
            value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
            at += 1;
        }
        match at - first_digit {
            0 => return None,
            // Up to 19 digits cannot overflow a u64; 20 may, and are read again, checked.
            1..=19 => {}
            20 => {
                value = std::str::from_utf8(&list[first_digit..at])
                    .ok()?
                    .parse()
                    .ok()?
            }
            _ => return None,
        }
        gaps.push(value);
        match list.get(at) {
            Some(b',') => at += 1,
            Some(b']') => break,
            _ => return None,
        }
    }
    line.drain(start..start + at);
    Some(gaps)
}

/// The number that `bytes` begin with when it has 1 to 7 digits, and how many: all eight
/// bytes at once (SWAR), with no branch per digit; `None` when it has none or 8 or more.
fn short_number(bytes: [u8; 8]) -> Option<(u64, usize)> {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const THREES: u64 = 0x3030_3030_3030_3030;
    let chunk = u64::from_le_bytes(bytes);
    // Zero exactly in the bytes that are ASCII digits: high nibble 3, and low nibble at most 9
    // (adding 6 keeps it below 16). A carry out of a byte (only from a byte ≥ 0xFA, never a
    // digit) can only disturb bytes after the first one that is not a digit.
    let not_digits =
        ((chunk & HIGH) ^ THREES) | ((chunk.wrapping_add(0x0606_0606_0606_0606) & HIGH) ^ THREES);
    let digits = (not_digits.trailing_zeros() / 8) as usize;
    if digits == 0 || digits == 8 {
        return None;
    }
    // The digits moved to the top bytes, zeros (read as leading '0's) below them, then
    // combined in pairs, fours and eights.
    let mut value = (chunk << (8 * (8 - digits))) & 0x0F0F_0F0F_0F0F_0F0F;
    value = (value.wrapping_mul(10) + (value >> 8)) & 0x00FF_00FF_00FF_00FF;
    value = (value.wrapping_mul(100) + (value >> 16)) & 0x0000_FFFF_0000_FFFF;
    value = value.wrapping_mul(10_000) + (value >> 32);
    Some((value & 0xFFFF_FFFF, digits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::completed;

    #[test]
    fn a_line_reads_the_same_whatever_the_order_of_its_keys() {
        let line = Line {
            seq: 7,
            event: Event::Request(completed(3, 20, 5, 4)),
        };
        let written = serde_json::to_string(&line).expect("serialise");
        assert!(
            written.starts_with(r#"{"seq":7,"type":"request","#),
            "{written}"
        );
        assert_eq!(serde_json::from_str::<Line>(&written).expect("fast"), line);
        // The same fields with `seq` last, and with `type` last.
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&written).expect("object");
        let seq = object.remove("seq").expect("seq");
        object.insert("seq".into(), seq);
        let seq_last = serde_json::to_string(&object).expect("json");
        assert_eq!(serde_json::from_str::<Line>(&seq_last).expect("slow"), line);
        let kind = object.remove("type").expect("type");
        object.insert("type".into(), kind);
        let type_last = serde_json::to_string(&object).expect("json");
        assert!(type_last.ends_with(r#""type":"request"}"#), "{type_last}");
        assert_eq!(
            serde_json::from_str::<Line>(&type_last).expect("slow"),
            line
        );
        // Type first, then seq.
        let type_first = written.replacen(
            r#""seq":7,"type":"request""#,
            r#""type":"request","seq":7"#,
            1,
        );
        assert_eq!(
            serde_json::from_str::<Line>(&type_first).expect("fast"),
            line
        );
    }

    #[test]
    fn chunk_gaps_read_by_hand_are_those_serde_reads() {
        let mut request = completed(3, 20, 5, 6);
        request.chunk_gaps_us = vec![0, 7, 18_446_744_073_709_551_615, 1234];
        let line = Line {
            seq: 2,
            event: Event::Request(request),
        };
        let written = serde_json::to_vec(&line).expect("serialise");
        let mut bytes = written.clone();
        assert_eq!(parse_line(&mut bytes).expect("parsed"), line);
        let cut = br#""chunk_gaps_us":[]"#;
        assert!(
            bytes.windows(cut.len()).any(|w| w == cut),
            "the gaps were cut out"
        );
        // What the hand reader does not take goes to serde whole, and fails or reads as before.
        let text = String::from_utf8(written).expect("utf-8");
        for odd in [
            "[0, 7]",
            "[1.5]",
            "[-1]",
            "[18446744073709551616]",
            "[1,]",
            "[]",
        ] {
            let changed = text.replace("[0,7,18446744073709551615,1234]", odd);
            let mut bytes = changed.clone().into_bytes();
            let ours = parse_line(&mut bytes).map_err(|e| e.to_string());
            let serde = serde_json::from_str::<Line>(&changed).map_err(|e| e.to_string());
            assert_eq!(ours, serde, "{odd}");
        }
    }

    #[test]
    fn short_numbers_read_eight_bytes_at_once_as_digit_by_digit() {
        type Case = (&'static [u8; 8], Option<(u64, usize)>);
        let cases: &[Case] = &[
            (b"1,2,3,4,", Some((1, 1))),
            (b"9876543]", Some((9_876_543, 7))),
            (b"12345678", None),
            (b",1234567", None),
            (b"0]\xff\xff\xff\xff\xff\xff", Some((0, 1))),
            (b"42:9/\xfa\xfa\xfa", Some((42, 2))),
            (b"7\xfa123456", Some((7, 1))),
        ];
        for (bytes, expected) in cases {
            assert_eq!(short_number(**bytes), *expected, "{bytes:?}");
        }
        // Every length and digit, against the standard parser, each followed by any byte.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 7 + 1) as usize;
            let mut bytes = [0u8; 8];
            for (i, b) in bytes.iter_mut().enumerate() {
                let r = (seed >> (i * 8)) as u8;
                *b = if i < len { b'0' + r % 10 } else { r };
            }
            if bytes[len].is_ascii_digit() {
                bytes[len] = b',';
            }
            let text = std::str::from_utf8(&bytes[..len]).expect("digits");
            let expected = text.parse::<u64>().expect("number");
            assert_eq!(short_number(bytes), Some((expected, len)), "{bytes:?}");
        }
    }

    #[test]
    fn a_line_without_seq_or_type_or_of_an_unknown_type_is_refused_by_name() {
        let no_seq =
            serde_json::from_str::<Line>(r#"{"type":"phase","phase":"measure","at_ns":1}"#);
        assert!(no_seq
            .expect_err("refused")
            .to_string()
            .contains("missing field `seq`"));
        let no_type = serde_json::from_str::<Line>(r#"{"seq":1}"#);
        assert!(no_type
            .expect_err("refused")
            .to_string()
            .contains("missing field `type`"));
        let unknown = serde_json::from_str::<Line>(r#"{"seq":1,"type":"lunch","at_ns":1}"#);
        assert!(unknown
            .expect_err("refused")
            .to_string()
            .contains("unknown variant `lunch`"));
        let bad_field =
            serde_json::from_str::<Line>(r#"{"seq":1,"type":"phase","phase":"nap","at_ns":1}"#);
        assert!(bad_field
            .expect_err("refused")
            .to_string()
            .contains("unknown variant `nap`"));
    }
}
