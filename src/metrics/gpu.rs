//! GPU figures of a trial from its NVML samples: means and peaks per GPU over the trial's
//! measurement window, and the energy used in it, from the energy counter (interpolated at the
//! window's edges), never from power readings multiplied out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::GpuSample;

/// One GPU over a trial's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuTrialSummary {
    /// NVML device index.
    pub gpu: u32,
    /// Samples inside the window.
    pub samples: usize,
    /// Mean NVML utilization (a duty cycle: some kernel ran), %.
    pub utilization_mean_pct: Option<f64>,
    /// Mean GPM SM utilization (how many SMs were busy), %, Hopper and newer.
    pub sm_util_mean_pct: Option<f64>,
    /// Mean GPM tensor-pipe utilization, %.
    pub tensor_util_mean_pct: Option<f64>,
    /// Mean GPM DRAM bandwidth utilization, %.
    pub dram_bw_util_mean_pct: Option<f64>,
    /// Highest device memory in use.
    pub memory_used_max_bytes: Option<u64>,
    /// Mean power draw, W.
    pub power_mean_w: Option<f64>,
    /// Energy used in the window, J, from the energy counter.
    pub energy_j: Option<f64>,
    /// Share of samples with a clock-limiting reason other than idle.
    pub throttled_share: Option<f64>,
}

/// NVML's "GPU idle" throttle bit: clocks are low because nothing runs, not a limit.
const THROTTLE_IDLE: u64 = 0x1;

/// Summaries per GPU of `samples` within `window` (`[start, end]` ns).
pub fn summarize(samples: &[GpuSample], window: (u64, u64)) -> Vec<GpuTrialSummary> {
    let mut by_gpu: BTreeMap<u32, Vec<&GpuSample>> = BTreeMap::new();
    for s in samples {
        by_gpu.entry(s.gpu).or_default().push(s);
    }
    by_gpu
        .into_iter()
        .map(|(gpu, mut all)| {
            all.sort_by_key(|s| s.at_ns);
            let inside: Vec<&GpuSample> = all
                .iter()
                .copied()
                .filter(|s| s.at_ns >= window.0 && s.at_ns <= window.1)
                .collect();
            let mean = |pick: &dyn Fn(&GpuSample) -> Option<f64>| {
                let values: Vec<f64> = inside.iter().filter_map(|s| pick(s)).collect();
                (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
            };
            let reasons: Vec<u64> = inside.iter().filter_map(|s| s.throttle_reasons).collect();
            GpuTrialSummary {
                gpu,
                samples: inside.len(),
                utilization_mean_pct: mean(&|s| s.utilization_gpu_pct.map(f64::from)),
                sm_util_mean_pct: mean(&|s| s.gpm_sm_util_pct),
                tensor_util_mean_pct: mean(&|s| s.gpm_tensor_util_pct),
                dram_bw_util_mean_pct: mean(&|s| s.gpm_dram_bw_util_pct),
                memory_used_max_bytes: inside.iter().filter_map(|s| s.memory_used_bytes).max(),
                power_mean_w: mean(&|s| s.power_mw.map(|mw| f64::from(mw) / 1e3)),
                energy_j: energy_between(&all, window.0, window.1).map(|mj| mj / 1e3),
                throttled_share: (!reasons.is_empty()).then(|| {
                    reasons.iter().filter(|&&r| r & !THROTTLE_IDLE != 0).count() as f64
                        / reasons.len() as f64
                }),
            }
        })
        .collect()
}

/// Energy (mJ) used between `start` and `end`, from a GPU's samples sorted by time; `None`
/// unless the samples with an energy counter reach over both edges.
pub fn energy_between(samples: &[&GpuSample], start: u64, end: u64) -> Option<f64> {
    let points: Vec<(u64, u64)> = samples
        .iter()
        .filter_map(|s| Some((s.at_ns, s.energy_mj?)))
        .collect();
    Some(counter_at(&points, end)? - counter_at(&points, start)?)
}

/// The counter at `t`, linearly between the samples around it.
fn counter_at(points: &[(u64, u64)], t: u64) -> Option<f64> {
    let after = points.iter().position(|&(at, _)| at >= t)?;
    let (t1, e1) = points[after];
    if t1 == t {
        return Some(e1 as f64);
    }
    let (t0, e0) = *points.get(after.checked_sub(1)?)?;
    let share = (t - t0) as f64 / (t1 - t0) as f64;
    Some(e0 as f64 + share * (e1 as f64 - e0 as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, energy_mj: u64, util: u32, throttle: u64) -> GpuSample {
        GpuSample {
            at_ns: at_s * 1_000_000_000,
            gpu: 0,
            utilization_gpu_pct: Some(util),
            power_mw: Some(200_000),
            energy_mj: Some(energy_mj),
            throttle_reasons: Some(throttle),
            memory_used_bytes: Some(u64::from(util) << 20),
            ..GpuSample::default()
        }
    }

    #[test]
    fn energy_is_interpolated_at_the_window_edges() {
        // 200 J per second; window 1.5 s to 3.5 s → 400 J.
        let samples: Vec<GpuSample> = (0..5)
            .map(|i| sample(i, i * 200_000, 50, THROTTLE_IDLE))
            .collect();
        let refs: Vec<&GpuSample> = samples.iter().collect();
        assert_eq!(
            energy_between(&refs, 1_500_000_000, 3_500_000_000),
            Some(400_000.0)
        );
        assert_eq!(
            energy_between(&refs, 1_500_000_000, 4_500_000_000),
            None,
            "past the last sample"
        );
        let s = &summarize(&samples, (1_500_000_000, 3_500_000_000))[0];
        assert_eq!(
            (s.samples, s.energy_j, s.power_mean_w),
            (2, Some(400.0), Some(200.0))
        );
        assert_eq!(s.throttled_share, Some(0.0), "idle is not throttling");
        assert_eq!(
            (s.sm_util_mean_pct, s.utilization_mean_pct),
            (None, Some(50.0)),
            "no GPM, no figure"
        );
    }

    #[test]
    fn throttling_and_peaks_are_counted_inside_the_window_only() {
        let samples = vec![
            sample(0, 0, 10, 0x4),
            sample(1, 1, 80, 0x4),
            sample(2, 2, 60, 0),
            sample(3, 3, 99, 0x4),
        ];
        let s = &summarize(&samples, (1_000_000_000, 2_000_000_000))[0];
        assert_eq!(s.throttled_share, Some(0.5));
        assert_eq!(s.memory_used_max_bytes, Some(80 << 20));
        assert_eq!(s.utilization_mean_pct, Some(70.0));
    }
}
