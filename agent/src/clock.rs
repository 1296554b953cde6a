//! The node's one clock: monotonic nanoseconds since the run's zero.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch, now: the time records on disk carry.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A run's time origin. Every event time of a run is `now_ns()` of the same `RunClock`, so any
/// two times of one node subtract exactly; `zero_wall_ns` ties the origin to UTC.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    zero: Instant,
    zero_wall_ns: u64,
}

impl RunClock {
    /// Starts a clock at this instant.
    pub fn start() -> Self {
        let zero = Instant::now();
        let zero_wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self { zero, zero_wall_ns }
    }

    /// UTC wall-clock nanoseconds of the zero.
    pub fn zero_wall_ns(&self) -> u64 {
        self.zero_wall_ns
    }

    /// Nanoseconds from the zero to `at` (0 for instants before it).
    pub fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.zero).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds from the zero to now.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// The instant `ns` after the zero.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.zero + std::time::Duration::from_nanos(ns)
    }
}
