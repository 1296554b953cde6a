//! Integration tests: one binary (see `autotests = false` in Cargo.toml), one module per theme.

mod support;

mod agent_api;
mod agent_auth;
mod analysis_files;
mod answers;
mod capacity;
mod compare;
mod configs;
mod connections;
mod conversations;
mod crashers;
mod damaged_reports;
mod embeddings;
mod end_to_end;
mod engine_supervisor;
mod full_disk;
mod golden;
mod ground_truth;
mod lifetimes;
mod load_shapes;
mod lora;
mod mps;
mod network_faults;
mod pairing;
mod progress_view;
mod real_vllm;
mod report_html;
mod request_faults;
mod skypilot;
mod slos;
mod static_launcher;
mod stream_resume;
mod streaming_analysis;
mod sweeps;
mod trace_replay;
