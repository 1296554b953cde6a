//! One tenant of one trial, each of its streams read once, line by line: its request events
//! folded into the accumulator, the SLO's count of good requests and the series for plots;
//! its engine's scrapes into the server's means; its kept answers into their scores. Memory
//! stays at one line and the accumulators, whatever the streams' sizes.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::capacity::confidence::TallyFold;
use crate::events::{
    EngineMetrics, Event, Header, Line, Phase, PromptEvent, ReadError, StreamReader,
};
use crate::layout::{StreamName, TrialDir};
use crate::metrics::quality::{QualityAccumulator, QualitySummary};
use crate::metrics::{round3, TenantAccumulator};
use crate::series::{Timeline, MAX_ANSWERS};

use super::ServerMetrics;

/// A tenant stream as read: its header, the warnings of its own lines, and its figures when it
/// is a tenant stream with a tenant description.
pub(super) struct TenantRead {
    pub header: Header,
    pub warnings: Vec<String>,
    pub measured: Option<Measured>,
}

/// What one tenant's streams give.
pub(super) struct Measured {
    pub requests: RequestFold,
    /// Its engine's means, with the engine stream's warnings.
    pub server: (Option<ServerMetrics>, Vec<String>),
    /// Its kept answers' scores, the first of them, and the prompts stream's warnings.
    pub answers: (Option<QualitySummary>, Vec<PromptEvent>, Vec<String>),
}

/// The request and phase events of a tenant stream, folded.
#[derive(Default)]
pub(super) struct RequestFold {
    pub acc: TenantAccumulator,
    /// Measured requests that met the tenant's SLO.
    pub good: u64,
    pub implausible: Implausible,
    pub timeline: Timeline,
    /// Its SLO's percentile bounds, counted by slots of time, for a probe's verdict.
    pub tallies: TallyFold,
}

/// Reads the tenant stream at `path` and, unless the agent marked the tenant invalid (in
/// `invalidated`), its engine and prompts streams in `trial_dir`.
pub(super) fn read_tenant(
    path: &Path,
    trial_dir: &TrialDir,
    invalidated: &[(String, String)],
) -> Result<TenantRead, ReadError> {
    let end = end_in_tail(path);
    let (mut read, first_end) = fold_requests(path, end)?;
    if first_end != end {
        // The load generator's end was not where a stream as written has it (among the last
        // lines), so requests were judged against the wrong end: once more, with the end read.
        read = fold_requests(path, first_end)?.0;
    }
    let Some((requests, tenant)) = read.measured else {
        return Ok(TenantRead {
            header: read.header,
            warnings: read.warnings,
            measured: None,
        });
    };
    let measured = if invalidated.iter().any(|(t, _)| *t == tenant) {
        None
    } else {
        // An adapter's engine is its base's, whose stream is named by the base.
        let engine_name = read
            .header
            .tenant
            .as_ref()
            .and_then(|t| t.served_by.clone())
            .unwrap_or_else(|| tenant.clone());
        let engine = trial_dir.stream(&StreamName::EngineMetrics(engine_name));
        let prompts = trial_dir.stream(&StreamName::Prompts(tenant));
        Some(Measured {
            server: server_metrics(&engine, requests.acc.measure_start_ns()),
            answers: answer_quality(&prompts),
            requests,
        })
    };
    Ok(TenantRead {
        header: read.header,
        warnings: read.warnings,
        measured,
    })
}

/// One fold of a tenant stream, before its other streams are read.
struct FoldRead {
    header: Header,
    warnings: Vec<String>,
    measured: Option<(RequestFold, String)>,
}

/// Folds the stream at `path` with `end_ns` as the load generator's end; also returns the end
/// the stream records (its first `done` phase), to check that it was the one used.
fn fold_requests(path: &Path, end_ns: Option<u64>) -> Result<(FoldRead, Option<u64>), ReadError> {
    let mut reader = StreamReader::open(path)?;
    let tenant = reader.header().tenant.as_ref().map(|t| t.name.clone());
    let slo = reader.header().tenant.as_ref().and_then(|t| t.slo.clone());
    let is_tenant = reader.header().stream == crate::events::StreamKind::Tenant;
    let mut fold = RequestFold {
        tallies: slo.as_ref().map(TallyFold::new).unwrap_or_default(),
        ..RequestFold::default()
    };
    let mut first_end = None;
    for line in reader.by_ref() {
        if !is_tenant || tenant.is_none() {
            continue;
        }
        match line.event {
            Event::Request(r) => {
                if let Some(why) = r.implausible(end_ns) {
                    fold.implausible.note(line.seq, &r.id, why);
                    continue;
                }
                fold.acc.request(&r);
                fold.tallies.record(&r);
                if r.phase == Phase::Measure {
                    fold.timeline.record(&r);
                    if slo.as_ref().is_some_and(|s| s.request_meets(&r)) {
                        fold.good += 1;
                    }
                }
            }
            Event::Phase(p) => {
                if p.phase == Phase::Done {
                    first_end.get_or_insert(p.at_ns);
                }
                fold.acc.phase_event(&p);
            }
            _ => {}
        }
    }
    let (header, warnings) = reader.finish();
    let measured = match (is_tenant, tenant) {
        (true, Some(tenant)) => Some((fold, tenant)),
        _ => None,
    };
    Ok((
        FoldRead {
            header,
            warnings,
            measured,
        },
        first_end,
    ))
}

/// Bytes at a stream's end searched for the load generator's end.
const TAIL_BYTES: u64 = 64 * 1024;

/// The load generator's end (`done` phase) among the stream's last lines, where the load
/// generator writes it once every request has ended; `None` when it is not there. A guess that
/// lets one pass judge every request against the end: [`fold_requests`] checks it.
fn end_in_tail(path: &Path) -> Option<u64> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut tail = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut tail).ok()?;
    let mut lines = tail.split(|&b| b == b'\n');
    if from > 0 {
        // The first piece is the end of a line that began before the tail.
        lines.next();
    }
    let phase = memchr::memmem::Finder::new(br#""type":"phase""#);
    lines
        .filter(|l| phase.find(l).is_some())
        .filter_map(|l| serde_json::from_slice::<Line>(l).ok())
        .find_map(|l| match l.event {
            Event::Phase(p) if p.phase == Phase::Done => Some(p.at_ns),
            _ => None,
        })
}

/// Request events of one stream whose times cannot be true, left out of the figures.
#[derive(Debug, Default)]
pub(super) struct Implausible {
    pub count: u64,
    /// The first: line, request id and why.
    first: Option<(u64, String, &'static str)>,
}

impl Implausible {
    fn note(&mut self, seq: u64, id: &str, why: &'static str) {
        self.count += 1;
        self.first.get_or_insert_with(|| (seq, id.to_owned(), why));
    }

    /// One warning naming the first case by `file:line`, and how many more there are.
    pub fn warning(&self, path: &Path) -> Option<String> {
        let (seq, id, why) = self.first.as_ref()?;
        let more = match self.count {
            1 => String::new(),
            n => format!(", and {} more like it", n - 1),
        };
        Some(format!(
            "{}:{}: request {id} has implausible times ({why}){more}; left out of the figures",
            path.display(),
            seq + 1
        ))
    }
}

/// The engine's means from its stream at `path` (absent: none), between its last scrape at or
/// before `measure_start_ns` (or from zero) and its last scrape; with the stream's warnings.
fn server_metrics(
    path: &Path,
    measure_start_ns: Option<u64>,
) -> (Option<ServerMetrics>, Vec<String>) {
    if !path.is_file() {
        return (None, Vec::new());
    }
    let mut reader = match StreamReader::open(path) {
        Ok(reader) => reader,
        Err(e) => return (None, vec![format!("{e}; engine metrics left out")]),
    };
    let (mut samples, mut start, mut last) = (0usize, None::<EngineMetrics>, None);
    for line in reader.by_ref() {
        let Event::EngineMetrics(scrape) = line.event else {
            continue;
        };
        samples += 1;
        if measure_start_ns.is_some_and(|t| scrape.at_ns <= t) {
            start = Some(scrape.clone());
        }
        last = Some(scrape);
    }
    let (_, warnings) = reader.finish();
    let server = last.map(|last| server_means(samples, start.as_ref(), &last));
    (server, warnings)
}

fn server_means(
    samples: usize,
    start: Option<&EngineMetrics>,
    last: &EngineMetrics,
) -> ServerMetrics {
    let mean_ms = |name: &str| {
        let now = last.histograms.get(name)?;
        now.mean_since(start.and_then(|s| s.histograms.get(name)))
            .map(|seconds| round3(seconds * 1e3))
    };
    let delta = |now: Option<f64>, before: Option<f64>| now.map(|n| n - before.unwrap_or(0.0));
    let counter = |name: &str| {
        delta(
            last.counters.get(name).copied(),
            start.and_then(|s| s.counters.get(name).copied()),
        )
    };
    let e2e = "vllm:e2e_request_latency_seconds";
    ServerMetrics {
        samples,
        ttft_mean_ms: mean_ms("vllm:time_to_first_token_seconds"),
        itl_mean_ms: mean_ms("vllm:inter_token_latency_seconds"),
        tpot_mean_ms: mean_ms("vllm:request_time_per_output_token_seconds"),
        e2e_mean_ms: mean_ms(e2e),
        queue_mean_ms: mean_ms("vllm:request_queue_time_seconds"),
        requests: delta(
            last.histograms.get(e2e).map(|h| h.count),
            start.and_then(|s| s.histograms.get(e2e)).map(|h| h.count),
        ),
        preemptions: counter("vllm:num_preemptions_total"),
        prefix_cache_hit_rate: match (
            counter("vllm:prefix_cache_hits_total"),
            counter("vllm:prefix_cache_queries_total"),
        ) {
            (Some(hits), Some(queries)) if queries > 0.0 => Some(round3(hits / queries)),
            _ => None,
        },
    }
}

/// The scores of a tenant's kept answers from its prompts stream at `path`, and the first
/// [`MAX_ANSWERS`] of them by request number; no scores when it kept none (or the stream is
/// absent or unreadable, which is warned).
fn answer_quality(path: &Path) -> (Option<QualitySummary>, Vec<PromptEvent>, Vec<String>) {
    if !path.is_file() {
        return (None, Vec::new(), Vec::new());
    }
    let mut reader = match StreamReader::open(path) {
        Ok(reader) => reader,
        Err(e) => return (None, Vec::new(), vec![format!("{e}; answers not scored")]),
    };
    let mut scores = QualityAccumulator::default();
    let mut first = Vec::new();
    for line in reader.by_ref() {
        let Event::Prompt(p) = line.event else {
            continue;
        };
        let Some(response) = p.response.as_deref() else {
            continue;
        };
        scores.add(response, p.expected.as_deref());
        first.push(p);
        if first.len() >= 2 * MAX_ANSWERS {
            keep_first_answers(&mut first);
        }
    }
    keep_first_answers(&mut first);
    let (_, warnings) = reader.finish();
    (scores.finish(), first, warnings)
}

/// Keeps the [`MAX_ANSWERS`] prompts of the lowest request numbers (`<tenant>-<n>`), in that
/// order; prompts are written as requests end, so not in it.
fn keep_first_answers(prompts: &mut Vec<PromptEvent>) {
    prompts.sort_by_key(|p| {
        p.id.rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    prompts.truncate(MAX_ANSWERS);
}
