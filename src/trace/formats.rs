//! The trace formats' rows: JSONL (Mooncake's and ours) and CSV (Azure's and BurstGPT's).

use std::io::BufRead;

use super::{Row, Rows, TraceError, TraceFormat, MAX_RECORD_TOKENS, MAX_TIME_NS};

/// The JSON fields of a JSONL format: time (and its unit in ns), prompt and output lengths.
fn jsonl_fields(format: TraceFormat) -> (&'static str, f64, &'static str, &'static str) {
    match format {
        TraceFormat::Mooncake => ("timestamp", 1e6, "input_length", "output_length"),
        _ => ("time_ms", 1e6, "prompt_tokens", "output_tokens"),
    }
}

/// Reads a JSONL trace (Mooncake's or ours) into `rows`.
pub(super) fn read_jsonl(
    reader: impl BufRead,
    format: TraceFormat,
    column: Option<&str>,
    rows: &mut Rows,
) -> Result<(), TraceError> {
    let (time_key, ns_per_unit, prompt_key, output_key) = jsonl_fields(format);
    for (index, line) in reader.split(b'\n').enumerate() {
        let line_no = index as u64 + 1;
        let line = line.map_err(|e| TraceError::Read {
            path: rows.path.clone(),
            message: format!("line {line_no}: {e}"),
        })?;
        let Ok(line) = String::from_utf8(line) else {
            rows.skip(line_no, "not UTF-8 text");
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                rows.skip(line_no, format!("not JSON ({e})"));
                continue;
            }
        };
        let Some(object) = value.as_object() else {
            rows.skip(line_no, "not a JSON object");
            continue;
        };
        let time = match object.get(time_key).and_then(serde_json::Value::as_f64) {
            Some(t) if t.is_finite() => t,
            _ => {
                rows.skip(line_no, format!("no numeric `{time_key}`"));
                continue;
            }
        };
        let lengths = [prompt_key, output_key].map(|key| match object.get(key) {
            Some(v) => json_tokens(v).ok_or_else(|| {
                format!(
                    "`{key}` must be a whole number of tokens in 0..={MAX_RECORD_TOKENS}, got {v}"
                )
            }),
            None => Err(format!("no `{key}`")),
        });
        let [prompt, output] = match lengths {
            [Ok(p), Ok(o)] => [p, o],
            [Err(why), _] | [_, Err(why)] => {
                rows.skip(line_no, why);
                continue;
            }
        };
        let hash_ids = match object.get("hash_ids") {
            None => Vec::new(),
            Some(serde_json::Value::Array(ids)) => {
                match ids.iter().map(serde_json::Value::as_u64).collect() {
                    Some(ids) => ids,
                    None => {
                        rows.skip(line_no, "`hash_ids` must be whole numbers ≥ 0");
                        continue;
                    }
                }
            }
            Some(other) => {
                rows.skip(
                    line_no,
                    format!("`hash_ids` must be a list of block ids, got {other}"),
                );
                continue;
            }
        };
        let key = match column {
            None => None,
            Some(column) => match object.get(column) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    Some(v.to_string())
                }
                _ => {
                    rows.skip(
                        line_no,
                        format!("no `{column}` (the tenant map's column) to route it by"),
                    );
                    continue;
                }
            },
        };
        let time_ns = (time * ns_per_unit).round() as i128;
        push(rows, line_no, time_ns, prompt, output, hash_ids, key);
    }
    Ok(())
}

fn json_tokens(value: &serde_json::Value) -> Option<u64> {
    let n = value.as_f64()?;
    (n.fract() == 0.0 && (0.0..=MAX_RECORD_TOKENS as f64).contains(&n)).then_some(n as u64)
}

/// How a CSV format's columns are called.
struct CsvColumns {
    time: &'static str,
    prompt: &'static str,
    output: &'static str,
}

fn csv_columns(format: TraceFormat) -> CsvColumns {
    match format {
        TraceFormat::Azure => CsvColumns {
            time: "TIMESTAMP",
            prompt: "ContextTokens",
            output: "GeneratedTokens",
        },
        _ => CsvColumns {
            time: "Timestamp",
            prompt: "Request tokens",
            output: "Response tokens",
        },
    }
}

/// Reads a CSV trace (Azure's or BurstGPT's) into `rows`.
pub(super) fn read_csv(
    reader: impl BufRead,
    format: TraceFormat,
    column: Option<&str>,
    rows: &mut Rows,
) -> Result<(), TraceError> {
    let names = csv_columns(format);
    let mut csv = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let header = csv
        .headers()
        .map_err(|e| TraceError::Read {
            path: rows.path.clone(),
            message: format!("its header: {e}"),
        })?
        .clone();
    let find = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| TraceError::MissingColumn {
                path: rows.path.clone(),
                column: name.to_owned(),
                found: header.iter().collect::<Vec<_>>().join(", "),
                format: format.name(),
            })
    };
    let time_at = find(names.time)?;
    let prompt_at = find(names.prompt)?;
    let output_at = find(names.output)?;
    let key_at = column.map(find).transpose()?;
    let mut record = csv::StringRecord::new();
    loop {
        // Before a read, the position is the next record's: its line, 1-based.
        let line_no = csv.position().line();
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(TraceError::Read {
                    path: rows.path.clone(),
                    message: format!("line {line_no}: {e}"),
                })
            }
            Err(e) => {
                let at = e.position().map_or(line_no, csv::Position::line);
                rows.skip(at, e);
                continue;
            }
        }
        // The line the record starts on: a quoted field may have spanned several.
        let line_no = record.position().map_or(line_no, csv::Position::line);
        let field = |at: usize| record.get(at).unwrap_or("");
        let time_ns = match format {
            TraceFormat::Azure => datetime_ns(field(time_at)),
            _ => field(time_at)
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite())
                .map(|s| (s * 1e9).round() as i128),
        };
        let Some(time_ns) = time_ns else {
            rows.skip(
                line_no,
                format!("{} {:?} is not a time", names.time, field(time_at)),
            );
            continue;
        };
        let lengths = [(names.prompt, prompt_at), (names.output, output_at)].map(|(name, at)| {
            csv_tokens(field(at)).ok_or_else(|| {
                format!(
                    "{name} {:?} is not a whole number of tokens in 0..={MAX_RECORD_TOKENS}",
                    field(at)
                )
            })
        });
        let [prompt, output] = match lengths {
            [Ok(p), Ok(o)] => [p, o],
            [Err(why), _] | [_, Err(why)] => {
                rows.skip(line_no, why);
                continue;
            }
        };
        let key = key_at.map(|at| field(at).to_owned());
        if let (Some(column), Some("")) = (column, key.as_deref()) {
            rows.skip(
                line_no,
                format!("no {column} (the tenant map's column) to route it by"),
            );
            continue;
        }
        push(rows, line_no, time_ns, prompt, output, Vec::new(), key);
    }
    Ok(())
}

fn csv_tokens(text: &str) -> Option<u64> {
    if let Ok(n) = text.parse::<u64>() {
        return (n <= MAX_RECORD_TOKENS).then_some(n);
    }
    json_tokens(&serde_json::Value::from(text.parse::<f64>().ok()?))
}

/// Nanoseconds since the epoch of an Azure trace time: `2023-11-16 18:15:46.6805900`, with
/// an optional UTC offset (`+00:00`) as in the 2024 traces.
fn datetime_ns(text: &str) -> Option<i128> {
    let text = text.trim().replace('T', " ");
    let utc = chrono::DateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f%:z")
        .map(|t| t.naive_utc())
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()?;
    utc.and_utc().timestamp_nanos_opt().map(i128::from)
}

fn push(
    rows: &mut Rows,
    line: u64,
    time_ns: i128,
    prompt_tokens: u64,
    output_tokens: u64,
    hash_ids: Vec<u64>,
    key: Option<String>,
) {
    if prompt_tokens == 0 {
        rows.skip(line, "a prompt of 0 tokens");
        return;
    }
    if !(-MAX_TIME_NS..=MAX_TIME_NS).contains(&time_ns) {
        rows.skip(
            line,
            "its time is out of range (more than 146 years from zero)",
        );
        return;
    }
    rows.rows.push(Row {
        time_ns,
        prompt_tokens,
        output_tokens,
        hash_ids,
        key,
        line,
    });
}
