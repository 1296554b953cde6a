//! `coordinator export --format parquet`: an experiment's events as Parquet tables, for the
//! engines people already query with (DuckDB, polars, Spark).
//!
//! - `requests.parquet`: every request event of every tenant stream, with its node, trial,
//!   mode, stage, tenant and model (and for a LoRA adapter, `served_by`: the tenant whose
//!   engine serves it); times in ns on the node's clock as in the streams, and the
//!   chunk gaps as a list.
//! - `gpu.parquet`: every NVML sample, with its node and trial.
//! - `engine_metrics.parquet`: every scrape of every engine's `/metrics`, one row per figure
//!   (`gauge`, `counter`, and each histogram's `histogram_sum` and `histogram_count`).
//!
//! Each stream is read once, line by line, and rows go out in row groups of [`ROW_GROUP`], so
//! memory stays bounded whatever the experiment's size. Damaged lines are skipped and named,
//! as analysis does.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use multitenant::events::{Event, Header, RequestEvent, StreamReader};
use multitenant::layout::{ExperimentDir, StreamName};
use parquet::basic::{Compression, Repetition, Type as Physical};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// Rows buffered before they are written as one row group.
pub const ROW_GROUP: usize = 64 * 1024;

/// The schema of `requests.parquet`.
const REQUESTS: &str = "message request {
    REQUIRED BYTE_ARRAY node (UTF8);
    REQUIRED BYTE_ARRAY trial (UTF8);
    REQUIRED BYTE_ARRAY mode (UTF8);
    OPTIONAL INT32 stage (INTEGER(32,false));
    REQUIRED BYTE_ARRAY tenant (UTF8);
    REQUIRED BYTE_ARRAY model (UTF8);
    OPTIONAL BYTE_ARRAY served_by (UTF8);
    REQUIRED BOOLEAN simulated;
    REQUIRED BYTE_ARRAY id (UTF8);
    REQUIRED BYTE_ARRAY phase (UTF8);
    REQUIRED INT64 scheduled_ns;
    REQUIRED INT64 sent_ns;
    OPTIONAL INT64 connect_ns;
    OPTIONAL INT64 first_token_ns;
    OPTIONAL INT64 last_token_ns;
    REQUIRED INT64 done_ns;
    REQUIRED INT32 max_tokens (INTEGER(32,false));
    OPTIONAL INT32 prompt_tokens (INTEGER(32,false));
    OPTIONAL INT32 output_tokens (INTEGER(32,false));
    OPTIONAL BYTE_ARRAY token_source (UTF8);
    OPTIONAL INT32 status (INTEGER(32,false));
    OPTIONAL BYTE_ARRAY error_kind (UTF8);
    OPTIONAL BYTE_ARRAY error_message (UTF8);
    OPTIONAL INT64 conversation;
    OPTIONAL INT32 turn (INTEGER(32,false));
    REPEATED INT64 chunk_gaps_us;
}";

/// The schema of `gpu.parquet`.
const GPU: &str = "message gpu_sample {
    REQUIRED BYTE_ARRAY node (UTF8);
    REQUIRED BYTE_ARRAY trial (UTF8);
    REQUIRED BOOLEAN simulated;
    REQUIRED INT64 at_ns;
    REQUIRED INT32 gpu (INTEGER(32,false));
    OPTIONAL INT32 utilization_gpu_pct (INTEGER(32,false));
    OPTIONAL INT32 utilization_memory_pct (INTEGER(32,false));
    OPTIONAL INT64 memory_used_bytes;
    OPTIONAL INT64 memory_total_bytes;
    OPTIONAL INT32 power_mw (INTEGER(32,false));
    OPTIONAL INT64 energy_mj;
    OPTIONAL INT32 sm_clock_mhz (INTEGER(32,false));
    OPTIONAL INT32 memory_clock_mhz (INTEGER(32,false));
    OPTIONAL INT32 temperature_c (INTEGER(32,false));
    OPTIONAL INT64 throttle_reasons;
    OPTIONAL DOUBLE gpm_sm_util_pct;
    OPTIONAL DOUBLE gpm_sm_occupancy_pct;
    OPTIONAL DOUBLE gpm_tensor_util_pct;
    OPTIONAL DOUBLE gpm_dram_bw_util_pct;
}";

/// The schema of `engine_metrics.parquet`.
const ENGINE: &str = "message engine_metric {
    REQUIRED BYTE_ARRAY node (UTF8);
    REQUIRED BYTE_ARRAY trial (UTF8);
    REQUIRED BYTE_ARRAY tenant (UTF8);
    REQUIRED INT64 at_ns;
    REQUIRED BYTE_ARRAY kind (UTF8);
    REQUIRED BYTE_ARRAY name (UTF8);
    REQUIRED DOUBLE value;
}";

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Each file, with its rows.
    pub files: Vec<(PathBuf, u64)>,
    /// Lines skipped and streams left out, each naming its file.
    pub warnings: Vec<String>,
}

/// Writes the Parquet tables of the experiment folder `dir` into `out`.
pub fn export_parquet(dir: &Path, out: &Path) -> anyhow::Result<Exported> {
    let experiment = ExperimentDir::new(dir);
    if !experiment.is_experiment() {
        bail!(
            "{} holds no nodes/ folder: is it an experiment folder?",
            dir.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut requests = Table::create(&out.join("requests.parquet"), REQUESTS)?;
    let mut gpu = Table::create(&out.join("gpu.parquet"), GPU)?;
    let mut engine = Table::create(&out.join("engine_metrics.parquet"), ENGINE)?;
    let mut warnings = Vec::new();
    for node_dir in experiment.nodes()? {
        for trial_dir in node_dir.trials_in_run_order()? {
            for stream in trial_dir.streams()? {
                let table = match stream.name {
                    StreamName::Tenant(_) => &mut requests,
                    StreamName::Gpu => &mut gpu,
                    StreamName::EngineMetrics(_) => &mut engine,
                    _ => continue,
                };
                let mut reader = match StreamReader::open(&stream.path) {
                    Ok(reader) => reader,
                    Err(e) => {
                        warnings.push(format!("{e}; stream left out"));
                        continue;
                    }
                };
                let header = reader.header().clone();
                for line in reader.by_ref() {
                    match line.event {
                        Event::Request(r) => request_row(table, &header, &r)?,
                        Event::GpuSample(s) => gpu_row(table, &header, &s)?,
                        Event::EngineMetrics(m) => engine_rows(table, &header, &m)?,
                        _ => {}
                    }
                }
                warnings.extend(reader.finish().1);
            }
        }
    }
    Ok(Exported {
        files: vec![requests.finish()?, gpu.finish()?, engine.finish()?],
        warnings,
    })
}

fn request_row(table: &mut Table, h: &Header, r: &RequestEvent) -> anyhow::Result<()> {
    let tenant = h.tenant.as_deref();
    table
        .row()
        .text(Some(&h.node))
        .text(Some(&h.trial))
        .text(Some(h.mode.name()))
        .int(h.stage.map(i64::from))
        .text(tenant.map(|t| t.name.as_str()).or(Some("")))
        .text(tenant.map(|t| t.model.as_str()).or(Some("")))
        .text(tenant.and_then(|t| t.served_by.as_deref()))
        .flag(h.simulated)
        .text(Some(&r.id))
        .text(Some(r.phase.name()))
        .int(Some(ns(r.scheduled_ns)))
        .int(Some(ns(r.sent_ns)))
        .int(r.connect_ns.map(ns))
        .int(r.first_token_ns.map(ns))
        .int(r.last_token_ns.map(ns))
        .int(Some(ns(r.done_ns)))
        .int(Some(i64::from(r.max_tokens)))
        .int(r.prompt_tokens.map(i64::from))
        .int(r.output_tokens.map(i64::from))
        .text(r.token_source.map(|s| s.name()))
        .int(r.status.map(i64::from))
        .text(r.error.as_ref().map(|e| e.kind.as_str()))
        .text(r.error.as_ref().map(|e| e.message.as_str()))
        .int(r.conversation.map(ns))
        .int(r.turn.map(i64::from))
        .list(&r.chunk_gaps_us)
        .end()
}

fn gpu_row(
    table: &mut Table,
    h: &Header,
    s: &multitenant::events::GpuSample,
) -> anyhow::Result<()> {
    table
        .row()
        .text(Some(&h.node))
        .text(Some(&h.trial))
        .flag(h.simulated)
        .int(Some(ns(s.at_ns)))
        .int(Some(i64::from(s.gpu)))
        .int(s.utilization_gpu_pct.map(i64::from))
        .int(s.utilization_memory_pct.map(i64::from))
        .int(s.memory_used_bytes.map(ns))
        .int(s.memory_total_bytes.map(ns))
        .int(s.power_mw.map(i64::from))
        .int(s.energy_mj.map(ns))
        .int(s.sm_clock_mhz.map(i64::from))
        .int(s.memory_clock_mhz.map(i64::from))
        .int(s.temperature_c.map(i64::from))
        .int(s.throttle_reasons.map(ns))
        .float(s.gpm_sm_util_pct)
        .float(s.gpm_sm_occupancy_pct)
        .float(s.gpm_tensor_util_pct)
        .float(s.gpm_dram_bw_util_pct)
        .end()
}

fn engine_rows(
    table: &mut Table,
    h: &Header,
    m: &multitenant::events::EngineMetrics,
) -> anyhow::Result<()> {
    let tenant = h.tenant.as_deref().map_or("", |t| t.name.as_str());
    let figures = m
        .gauges
        .iter()
        .map(|(name, v)| ("gauge", name, *v))
        .chain(m.counters.iter().map(|(name, v)| ("counter", name, *v)))
        .chain(m.histograms.iter().flat_map(|(name, h)| {
            [
                ("histogram_sum", name, h.sum),
                ("histogram_count", name, h.count),
            ]
        }));
    for (kind, name, value) in figures {
        table
            .row()
            .text(Some(&h.node))
            .text(Some(&h.trial))
            .text(Some(tenant))
            .int(Some(ns(m.at_ns)))
            .text(Some(kind))
            .text(Some(name))
            .float(Some(value))
            .end()?;
    }
    Ok(())
}

/// A u64 of the streams (ns, bytes, counters) as Parquet's signed INT64: values past
/// `i64::MAX` (292 years of ns) do not occur, and are held at it.
fn ns(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One Parquet file being written: its columns' buffered values, flushed as a row group every
/// [`ROW_GROUP`] rows.
struct Table {
    path: PathBuf,
    writer: SerializedFileWriter<File>,
    columns: Vec<Column>,
    buffered: usize,
    rows: u64,
}

/// The buffered values of one column, by its schema.
struct Column {
    name: String,
    physical: Physical,
    repetition: Repetition,
    values: Values,
    definitions: Vec<i16>,
    repetitions: Vec<i16>,
}

/// A column's values, of its physical type (INT32 columns buffer as i64 and are written as
/// the bits of a u32, their logical type).
enum Values {
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Flags(Vec<bool>),
    Texts(Vec<ByteArray>),
}

impl Table {
    fn create(path: &Path, message: &str) -> anyhow::Result<Self> {
        let schema = Arc::new(parse_message_type(message).context("the export's own schema")?);
        let columns = schema
            .get_fields()
            .iter()
            .map(|field| {
                let physical = field.get_physical_type();
                let values = match physical {
                    Physical::INT64 | Physical::INT32 => Values::Ints(Vec::new()),
                    Physical::DOUBLE => Values::Floats(Vec::new()),
                    Physical::BOOLEAN => Values::Flags(Vec::new()),
                    _ => Values::Texts(Vec::new()),
                };
                Column {
                    name: field.name().to_owned(),
                    physical,
                    repetition: field.get_basic_info().repetition(),
                    values,
                    definitions: Vec::new(),
                    repetitions: Vec::new(),
                }
            })
            .collect();
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let writer = SerializedFileWriter::new(file, schema, Arc::new(properties))
            .with_context(|| format!("starting {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            writer,
            columns,
            buffered: 0,
            rows: 0,
        })
    }

    /// A row to add, column by column; [`Row::end`] adds it.
    fn row(&mut self) -> Row<'_> {
        Row {
            table: self,
            at: 0,
            error: None,
        }
    }

    fn row_done(&mut self) -> anyhow::Result<()> {
        self.buffered += 1;
        self.rows += 1;
        if self.buffered >= ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered rows as one row group.
    fn flush(&mut self) -> anyhow::Result<()> {
        if self.buffered == 0 {
            return Ok(());
        }
        let path = self.path.display().to_string();
        let mut group = self
            .writer
            .next_row_group()
            .with_context(|| format!("writing {path}"))?;
        for column in &mut self.columns {
            let mut out = group
                .next_column()
                .with_context(|| format!("writing {path}"))?
                .with_context(|| format!("{path}: the schema has fewer columns than rows"))?;
            let definitions =
                (column.repetition != Repetition::REQUIRED).then_some(&column.definitions[..]);
            let repetitions =
                (column.repetition == Repetition::REPEATED).then_some(&column.repetitions[..]);
            let written = match (&column.values, column.physical) {
                (Values::Ints(ints), Physical::INT32) => {
                    // Every INT32 column holds a u32 (or smaller) and is annotated unsigned:
                    // its bits are stored as they are, so values past i32::MAX read back.
                    let ints: Vec<i32> = ints.iter().map(|&v| v as u32 as i32).collect();
                    out.typed::<Int32Type>()
                        .write_batch(&ints, definitions, repetitions)
                }
                (Values::Ints(ints), _) => {
                    out.typed::<Int64Type>()
                        .write_batch(ints, definitions, repetitions)
                }
                (Values::Floats(floats), _) => {
                    out.typed::<DoubleType>()
                        .write_batch(floats, definitions, repetitions)
                }
                (Values::Flags(flags), _) => {
                    out.typed::<BoolType>()
                        .write_batch(flags, definitions, repetitions)
                }
                (Values::Texts(texts), _) => {
                    out.typed::<ByteArrayType>()
                        .write_batch(texts, definitions, repetitions)
                }
            };
            written.with_context(|| format!("writing column {} of {path}", column.name))?;
            out.close()
                .with_context(|| format!("writing column {} of {path}", column.name))?;
            column.clear();
        }
        group.close().with_context(|| format!("writing {path}"))?;
        self.buffered = 0;
        Ok(())
    }

    /// Writes what is buffered and the file's footer: the file and its rows.
    fn finish(mut self) -> anyhow::Result<(PathBuf, u64)> {
        self.flush()?;
        self.writer
            .close()
            .with_context(|| format!("finishing {}", self.path.display()))?;
        Ok((self.path, self.rows))
    }
}

impl Column {
    fn clear(&mut self) {
        match &mut self.values {
            Values::Ints(v) => v.clear(),
            Values::Floats(v) => v.clear(),
            Values::Flags(v) => v.clear(),
            Values::Texts(v) => v.clear(),
        }
        self.definitions.clear();
        self.repetitions.clear();
    }

    /// Notes whether the row has a value here (`OPTIONAL` columns).
    fn defined(&mut self, present: bool) {
        if self.repetition == Repetition::OPTIONAL {
            self.definitions.push(i16::from(present));
        }
    }
}

/// One row being added, column by column in schema order.
struct Row<'a> {
    table: &'a mut Table,
    at: usize,
    error: Option<String>,
}

impl Row<'_> {
    /// The next column's buffers (`definitions`, the values), or why there is none.
    fn next(&mut self) -> Option<&mut Column> {
        let at = self.at;
        self.at += 1;
        let count = self.table.columns.len();
        let column = self.table.columns.get_mut(at);
        if column.is_none() {
            self.error
                .get_or_insert(format!("a value past the schema's {count} columns"));
        }
        column
    }

    /// Notes that the column just taken is not of the `given` kind.
    fn mismatch(&mut self, given: &str) {
        let column = &self.table.columns[self.at - 1];
        let error = format!(
            "column {} is {:?}, given {given}",
            column.name, column.physical
        );
        self.error.get_or_insert(error);
    }

    /// Gives the next column its value through `push`, which says whether the column is of the
    /// `kind` it can take.
    fn put(mut self, kind: &str, push: impl FnOnce(&mut Column) -> bool) -> Self {
        if self.next().map(push) == Some(false) {
            self.mismatch(kind);
        }
        self
    }

    fn int(self, value: Option<i64>) -> Self {
        self.put("an integer", |c| match &mut c.values {
            Values::Ints(ints) => {
                ints.extend(value);
                c.defined(value.is_some());
                true
            }
            _ => false,
        })
    }

    fn float(self, value: Option<f64>) -> Self {
        self.put("a float", |c| match &mut c.values {
            Values::Floats(floats) => {
                floats.extend(value);
                c.defined(value.is_some());
                true
            }
            _ => false,
        })
    }

    fn flag(self, value: bool) -> Self {
        self.put("a flag", |c| match &mut c.values {
            Values::Flags(flags) => {
                flags.push(value);
                true
            }
            _ => false,
        })
    }

    fn text(self, value: Option<&str>) -> Self {
        self.put("a text", |c| match &mut c.values {
            Values::Texts(texts) => {
                texts.extend(value.map(|v| ByteArray::from(v.as_bytes().to_vec())));
                c.defined(value.is_some());
                true
            }
            _ => false,
        })
    }

    /// A `REPEATED` column's values of this row: none is one level at 0.
    fn list(self, values: &[u64]) -> Self {
        self.put("a list of integers", |c| match &mut c.values {
            Values::Ints(ints) => {
                ints.extend(values.iter().map(|&v| ns(v)));
                if values.is_empty() {
                    c.definitions.push(0);
                    c.repetitions.push(0);
                }
                for i in 0..values.len() {
                    c.definitions.push(1);
                    c.repetitions.push(i16::from(i > 0));
                }
                true
            }
            _ => false,
        })
    }

    /// Adds the row, once every column got its value of its kind.
    fn end(self) -> anyhow::Result<()> {
        if let Some(error) = self.error {
            bail!("export row: {error}");
        }
        let columns = self.table.columns.len();
        if self.at != columns {
            bail!("export row: {} values for {columns} columns", self.at);
        }
        self.table.row_done()
    }
}
