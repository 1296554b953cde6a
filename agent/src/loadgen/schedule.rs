//! Open-loop arrival times: absolute offsets from the load's start, never "sleep after send",
//! so a slow send does not push later arrivals back (no coordinated omission).

use std::sync::Arc;
use std::time::Duration;

use multitenant::config::{Arrival, Spacing};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp, Exp1, Gamma};

/// Yields the offset of each arrival from the start, in order.
pub struct ArrivalSchedule {
    kind: OpenLoop,
    rng: StdRng,
    next_ns: f64,
    index: u64,
}

enum OpenLoop {
    Constant {
        gap_ns: f64,
    },
    Poisson {
        gaps: Exp<f64>,
    },
    Gamma {
        gaps: Gamma<f64>,
    },
    Ramp {
        ramp: RampCurve,
        spacing: Spacing,
    },
    /// A trace's times (ns from its window's start, in order), divided by `time_scale`.
    Replay {
        times: Arc<[u64]>,
        time_scale: f64,
    },
}

/// A rate held at `from` for `hold_s`, then linear from `from` to `to` over `len_s`, then
/// held at `to`. Arrivals are placed by inverting the expected count `Λ(t) = ∫ rate`: the k-th
/// unit-rate epoch `u` (k itself, or a Poisson process of rate 1) lands at `Λ⁻¹(u)`.
#[derive(Debug, Clone, Copy)]
struct RampCurve {
    from: f64,
    to: f64,
    hold_s: f64,
    len_s: f64,
}

impl RampCurve {
    /// Seconds from the start at which the expected count reaches `u`.
    fn time_of(&self, u: f64) -> f64 {
        let held = self.from * self.hold_s;
        if u <= held {
            return u / self.from;
        }
        let v = u - held;
        let slope = (self.to - self.from) / self.len_s;
        let ramped = self.from * self.len_s + slope * self.len_s * self.len_s / 2.0;
        if v >= ramped {
            return self.hold_s + self.len_s + (v - ramped) / self.to;
        }
        // Solve slope/2 · s² + from · s = v for the s in [0, len_s].
        let s = if slope.abs() < 1e-12 {
            v / self.from
        } else {
            let disc = (self.from * self.from + 2.0 * slope * v).max(0.0);
            (disc.sqrt() - self.from) / slope
        };
        self.hold_s + s.clamp(0.0, self.len_s)
    }
}

impl ArrivalSchedule {
    /// The schedule of an open-loop `arrival` whose warmup lasts `warmup` and whose measured
    /// phase lasts `duration` (a ramp climbs over the measured phase), or `None` for a
    /// closed-loop one and for a trace (whose schedule is [`Self::replay`]).
    pub fn new(arrival: &Arrival, seed: u64, warmup: Duration, duration: Duration) -> Option<Self> {
        let kind = match *arrival {
            Arrival::Constant { rate } => OpenLoop::Constant { gap_ns: 1e9 / rate },
            // Validation guarantees rate > 0 and finite, which Exp accepts.
            Arrival::Poisson { rate } => OpenLoop::Poisson {
                gaps: Exp::new(rate / 1e9).ok()?,
            },
            // Shape k = 1/cv², scale θ = mean / k, so the mean gap is 1/rate whatever the cv.
            Arrival::Gamma { rate, cv } => {
                let shape = 1.0 / (cv * cv);
                OpenLoop::Gamma {
                    gaps: Gamma::new(shape, 1e9 / rate / shape).ok()?,
                }
            }
            Arrival::Ramp { from, to, spacing } => OpenLoop::Ramp {
                ramp: RampCurve {
                    from,
                    to,
                    hold_s: warmup.as_secs_f64(),
                    len_s: duration.as_secs_f64().max(1e-9),
                },
                spacing,
            },
            Arrival::Concurrency { .. } | Arrival::Trace { .. } => return None,
        };
        Some(Self {
            kind,
            rng: StdRng::seed_from_u64(seed),
            next_ns: 0.0,
            index: 0,
        })
    }
}

impl ArrivalSchedule {
    /// The schedule of a trace replay: each record at its time divided by `time_scale`, then
    /// no more.
    pub fn replay(times: Arc<[u64]>, time_scale: f64) -> Self {
        Self {
            kind: OpenLoop::Replay { times, time_scale },
            rng: StdRng::seed_from_u64(0),
            next_ns: 0.0,
            index: 0,
        }
    }
}

impl Iterator for ArrivalSchedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.index += 1;
        let gap = match &self.kind {
            // Multiplying instead of summing keeps constant arrivals free of rounding drift.
            OpenLoop::Constant { gap_ns } => {
                return Some(Duration::from_nanos(
                    (gap_ns * (self.index - 1) as f64) as u64,
                ));
            }
            OpenLoop::Replay { times, time_scale } => {
                let at = *times.get(self.index as usize - 1)?;
                return Some(Duration::from_nanos((at as f64 / time_scale).round() as u64));
            }
            OpenLoop::Poisson { gaps } => gaps.sample(&mut self.rng),
            OpenLoop::Gamma { gaps } => gaps.sample(&mut self.rng),
            OpenLoop::Ramp { ramp, spacing } => {
                // Here `next_ns` counts unit-rate epochs, not nanoseconds.
                let epoch = match spacing {
                    Spacing::Constant => (self.index - 1) as f64,
                    Spacing::Poisson => {
                        let at = self.next_ns;
                        self.next_ns += Distribution::<f64>::sample(&Exp1, &mut self.rng);
                        at
                    }
                };
                return Some(Duration::from_secs_f64(ramp.time_of(epoch)));
            }
        };
        // This arrival is where the gaps so far sum to; the drawn gap leads to the next one.
        let at = self.next_ns;
        self.next_ns += gap;
        Some(Duration::from_nanos(at as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps_s(arrival: Arrival, n: usize) -> Vec<f64> {
        let times: Vec<Duration> =
            ArrivalSchedule::new(&arrival, 42, Duration::ZERO, Duration::from_secs(1))
                .expect("open loop")
                .take(n + 1)
                .collect();
        times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect()
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced() {
        let gaps = gaps_s(Arrival::Constant { rate: 200.0 }, 1000);
        assert!(
            gaps.iter().all(|g| (g - 0.005).abs() < 1e-8),
            "{:?}",
            &gaps[..5]
        );
    }

    #[test]
    fn poisson_gaps_are_exponential_with_the_asked_mean() {
        let gaps = gaps_s(Arrival::Poisson { rate: 50.0 }, 20_000);
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        // Exponential: mean 1/rate, coefficient of variation 1, P(gap > mean) = e^-1.
        assert!((mean - 0.02).abs() < 0.0006, "mean {mean}");
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.04,
            "cv {}",
            var.sqrt() / mean
        );
        let above = gaps.iter().filter(|&&g| g > 0.02).count() as f64 / gaps.len() as f64;
        assert!((above - (-1f64).exp()).abs() < 0.015, "tail share {above}");
    }

    #[test]
    fn gamma_gaps_have_the_asked_mean_and_burstiness() {
        for cv in [0.5, 2.0] {
            let gaps = gaps_s(Arrival::Gamma { rate: 40.0, cv }, 40_000);
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let sd =
                (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
            assert!((mean - 0.025).abs() < 0.025 * 0.03, "cv {cv}: mean {mean}");
            assert!(
                (sd / mean - cv).abs() < cv * 0.05,
                "cv {cv}: measured cv {}",
                sd / mean
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a: Vec<Duration> = ArrivalSchedule::new(
            &Arrival::Poisson { rate: 5.0 },
            9,
            Duration::ZERO,
            Duration::ZERO,
        )
        .expect("open")
        .take(50)
        .collect();
        let b: Vec<Duration> = ArrivalSchedule::new(
            &Arrival::Poisson { rate: 5.0 },
            9,
            Duration::ZERO,
            Duration::ZERO,
        )
        .expect("open")
        .take(50)
        .collect();
        assert_eq!(a, b);
        assert!(ArrivalSchedule::new(
            &Arrival::Concurrency { n: 2 },
            9,
            Duration::ZERO,
            Duration::ZERO
        )
        .is_none());
    }

    #[test]
    fn a_replay_sends_each_record_at_its_scaled_time_then_ends() {
        let times: Arc<[u64]> = vec![0, 1_000_000, 1_000_000, 25_000_005].into();
        let at: Vec<Duration> = ArrivalSchedule::replay(times, 10.0).collect();
        assert_eq!(
            at,
            [0, 100_000, 100_000, 2_500_001].map(Duration::from_nanos),
            "scaled to the nanosecond, ties kept, and finite"
        );
    }

    /// Counts arrivals per second of a ramp and holds each bin against the rate curve's
    /// integral over it: `from` during warmup, then linear to `to`.
    #[test]
    fn ramp_arrivals_follow_the_rate_curve() {
        let (warmup, duration) = (Duration::from_secs(2), Duration::from_secs(10));
        for spacing in [Spacing::Constant, Spacing::Poisson] {
            let arrival = Arrival::Ramp {
                from: 100.0,
                to: 600.0,
                spacing,
            };
            let end = warmup + duration;
            let times: Vec<f64> = ArrivalSchedule::new(&arrival, 7, warmup, duration)
                .expect("open loop")
                .take_while(|t| *t < end)
                .map(|t| t.as_secs_f64())
                .collect();
            assert!(
                times.windows(2).all(|w| w[0] <= w[1]),
                "{spacing:?}: out of order"
            );
            for second in 0..12 {
                let expected = if second < 2 {
                    100.0
                } else {
                    // Mean rate over [s, s+1) of the linear part: the rate at its middle.
                    100.0 + 50.0 * (f64::from(second - 2) + 0.5)
                };
                let s = f64::from(second);
                let got = times.iter().filter(|&&t| t >= s && t < s + 1.0).count() as f64;
                // Constant spacing is exact to one arrival; Poisson within 4 standard deviations.
                let tolerance = match spacing {
                    Spacing::Constant => 1.0,
                    Spacing::Poisson => 4.0 * expected.sqrt(),
                };
                assert!(
                    (got - expected).abs() <= tolerance,
                    "{spacing:?}: second {second}: {got} arrivals, expected {expected}"
                );
            }
            let total = times.len() as f64;
            // 2 s at 100/s plus 10 s averaging 350/s.
            let tolerance = if spacing == Spacing::Constant {
                1.0
            } else {
                4.0 * 3700f64.sqrt()
            };
            assert!(
                (total - 3700.0).abs() <= tolerance,
                "{spacing:?}: {total} arrivals"
            );
        }
    }
}
