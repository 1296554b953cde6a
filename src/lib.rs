//! `multitenant`: the shared vocabulary of the agent and the coordinator.
//!
//! This crate owns what both sides must agree on and nothing that runs: no tokio runtime and no
//! process spawning live here.
//!
//! - [`config`]: the experiment YAML, parsed strictly and validated into an [`config::Experiment`].
//! - [`dataset`]: ShareGPT and JSONL prompt files, read with every bad entry reported.
//! - [`events`]: the JSONL event format (the spec is in that module's docs), its writer and reader.
//! - [`layout`]: the experiment folder: every path and file name, the one walker of its trial
//!   streams, and `plan.json`.
//! - [`metrics`]: metric definitions of docs/metrics.md on HDR histograms.
//! - [`slo`]: service-level objectives, judged per tenant and trial, and goodput.
//! - [`analysis`]: a folder of JSONL streams in, a [`analysis::Summary`] out; a pure function.
//! - [`capacity`]: the SLO capacity search's policy, its probes' verdicts at a stated
//!   confidence, and the per-node capacity summary and sharing verdict.
//! - [`trace`]: request traces in the formats public traces come in, read with every unusable
//!   row counted, for replay.
//! - [`series`]: the same folder as per-request and per-sample time series, for plots.
//! - [`tokens`]: prompts of an exact token count from a model's `tokenizer.json`.
//! - [`auth`]: the bearer token both sides of the gRPC API use.
//! - [`pairing`]: the pairing string that joins a coordinator to a daemon agent.
//! - [`tls`]: the certificate name and environment variables of coordinator-agent TLS.
//! - [`proto`]: the generated gRPC types of `proto/multitenant/v1`.

pub mod analysis;
pub mod auth;
pub mod capacity;
pub mod config;
pub mod dataset;
pub mod events;
pub mod layout;
pub mod metrics;
pub mod pairing;
pub mod proto;
pub mod series;
pub mod slo;
pub mod tls;
pub mod tokens;
pub mod trace;

/// Version of this build, written into every JSONL header and summary.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
