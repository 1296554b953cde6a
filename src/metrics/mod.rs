//! Metric definitions of docs/metrics.md, computed on HDR histograms.
//!
//! Latencies are recorded in microseconds with 3 significant digits; histograms merge across
//! tenants and nodes, percentiles are never averaged. A metric with no samples is `None`, never
//! zero.

pub mod gpu;
mod histogram;
pub mod quality;
pub mod slowdown;
mod tenant;
pub mod variants;

pub(crate) use histogram::round3;
pub use histogram::{LatencyHistogram, Percentiles};
pub use tenant::{
    Definitions, TenantAccumulator, TenantMetrics, Throughput, TurnTtft, LATE_SEND_MS,
};
