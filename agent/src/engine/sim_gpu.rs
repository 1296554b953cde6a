//! The simulated GPU that simulated engines of one trial share, and how they slow each other.
//!
//! Model: each engine is "busy" while it has sequences running. A decode step that would take
//! `t` alone takes `t × factor`, where, with `k` other busy engines:
//! - solo and exclusive: factor 1 (nobody else computes on the GPU);
//! - mps: factor `1 + mps_interference × k` (kernels run side by side and contend for SMs and
//!   memory bandwidth);
//! - timeslice: factor `1 + k` (the GPU serves one context at a time, in turn).

use std::sync::atomic::{AtomicUsize, Ordering};

use multitenant::config::SharingMode;

/// One simulated GPU.
#[derive(Debug)]
pub struct SimGpu {
    mode: SharingMode,
    mps_interference: f64,
    busy_engines: AtomicUsize,
}

impl SimGpu {
    /// A GPU shared under `mode`.
    pub fn new(mode: SharingMode, mps_interference: f64) -> Self {
        Self {
            mode,
            mps_interference,
            busy_engines: AtomicUsize::new(0),
        }
    }

    /// An engine starts having work.
    pub fn enter_busy(&self) {
        self.busy_engines.fetch_add(1, Ordering::SeqCst);
    }

    /// An engine runs out of work.
    pub fn leave_busy(&self) {
        self.busy_engines.fetch_sub(1, Ordering::SeqCst);
    }

    /// How much a busy engine's step is stretched right now.
    pub fn slowdown_factor(&self) -> f64 {
        let others = self.busy_engines.load(Ordering::SeqCst).saturating_sub(1) as f64;
        match self.mode {
            SharingMode::Solo | SharingMode::Exclusive => 1.0,
            SharingMode::Mps => 1.0 + self.mps_interference * others,
            SharingMode::Timeslice => 1.0 + others,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_follow_the_mode_and_other_busy_engines() {
        for (mode, expected) in [
            (SharingMode::Solo, 1.0),
            (SharingMode::Mps, 1.5),
            (SharingMode::Timeslice, 3.0),
        ] {
            let gpu = SimGpu::new(mode, 0.25);
            gpu.enter_busy();
            assert_eq!(gpu.slowdown_factor(), 1.0, "{mode:?}: alone");
            gpu.enter_busy();
            gpu.enter_busy();
            assert_eq!(gpu.slowdown_factor(), expected, "{mode:?}: with two others");
            gpu.leave_busy();
            gpu.leave_busy();
            assert_eq!(gpu.slowdown_factor(), 1.0);
        }
    }
}
