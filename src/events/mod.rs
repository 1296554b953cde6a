//! The JSONL event format: what the agent writes and every analysis reads.
//!
//! # Files
//! One file per stream, under `<trial>/` of a node's folder (names from
//! [`crate::layout::StreamName`]): `<tenant>.jsonl` (request events of one tenant),
//! `agent.jsonl` (trial, engine, MPS and phase lifecycle, warnings), `host.jsonl` (host
//! samples), `gpu.jsonl` (NVML samples, only where NVML works), `<tenant>.prompts.jsonl` (the
//! prompt of every request the tenant sent, with the kept answers and their expected outputs,
//! appended as each request ends, so in the order requests ended) and, for engines with a
//! Prometheus endpoint,
//! `<tenant>.engine.jsonl` (scrapes of its `/metrics`; one engine serving LoRA adapter tenants
//! has one such stream, named by its base tenant, also in an adapter's solo trial).
//!
//! # Lines
//! Every line is one JSON object ending in `\n`, with a `seq` (the line's index in its file, the
//! header being 0) and a `type`:
//!
//! - `header` (line 0 only): `schema_version` (`"MAJOR.MINOR"`), `tool_version`, `experiment`,
//!   `run_id`, `node`, `trial`, `mode` (`solo|mps|timeslice|exclusive`), `stream`
//!   (`tenant|agent|host|gpu|engine_metrics|prompts`), `zero_wall_ns` (UTC wall-clock
//!   nanoseconds of the run's monotonic zero), `simulated` (whether anything in the stream
//!   comes from the simulated engine), `stage` (1-based, for a stage of a sweep) and, for tenant
//!   streams, `tenant` (name, model, engine kind, workload, API, arrival, offered rate,
//!   streaming, forced length, SLO, and the milliseconds of warm-up plus measurement planned,
//!   `planned_ms`, from schema 1.2, `shared_prefixes`, why its prompts share text, from
//!   schema 1.4, and, from schema 1.6, engine kind `adapter` with `served_by`, the base tenant
//!   whose engine serves it).
//! - `request`: one finished request, see [`RequestEvent`]; from schema 1.3 a request that
//!   waited for a new connection records the connect in `connect_ns`, and its `sent_ns` is the
//!   instant the connection was ready; from schema 1.4 a turn of a conversation carries its
//!   `conversation` (0-based) and `turn` (1-based); from schema 1.5 the header's API may be
//!   `embeddings`, whose requests ask for no output (`max_tokens` 0) and deliver none.
//! - `phase`: the load generator entered `warmup`, `measure`, `drain` or `done`; on `drain` of
//!   an open-loop load, `scheduled` counts the arrivals its schedule placed in the measure
//!   phase (schema 1.1; absent before); on `done`, `connections` says how the load used its
//!   connections: `preopened` before it started and `peak_in_flight`, the most requests in
//!   flight at once (schema 1.6).
//! - `prompt` (prompts streams): one request's prompt, see [`PromptEvent`].
//! - `trial`, `engine`, `mps`, `warning`, `tenant_invalid`, `host_sample`, `gpu_sample`,
//!   `engine_metrics`: lifecycle and samples, see [`Event`].
//! - `compute_mode` (schema 1.7): what the agent did with the GPU's compute mode for a trial
//!   of real engines (kept, set, restored, or refused with why), see [`ComputeModeEvent`].
//! - `search`, `probe` and `probe_stopped`: a capacity search and its probes; a probe records
//!   how long it waited for the engines' queues to empty (`queue_wait_ms`, schema 1.7), and a
//!   probe stopped early because a bound was already missed for certain says why.
//! - `budget_spent` (schema 1.8): a search's folder records that its next probe would have
//!   taken the node's searches past `capacity.budget`, with the engine time spent, the budget
//!   and the probe's length; the search ends with what it knew.
//!
//! All times are nanoseconds on the node's monotonic clock since the run's zero (`*_ns`), so
//! differences between any two times of one node are exact; `chunk_gaps_us` are microseconds.
//!
//! # Compatibility
//! A reader accepts any minor version of its major and ignores fields it does not know; a newer
//! major is refused with a message naming the file. Writers flush whole lines; a reader skips a
//! truncated or malformed line with a warning naming `file:line`.

mod event;
mod line_de;
mod reader;
#[cfg(test)]
pub(crate) mod testing;
mod writer;

pub use event::*;
pub use reader::{
    read_stream, ReadError, StreamContents, StreamReader, MAX_LINE_BYTES, MAX_NAMED_SKIPS,
};
pub use writer::EventWriter;

/// Major version of the schema: bumped when a reader of the old version would misread a file.
pub const SCHEMA_MAJOR: u32 = 1;
/// Full schema version written into headers.
pub const SCHEMA_VERSION: &str = "1.8";
