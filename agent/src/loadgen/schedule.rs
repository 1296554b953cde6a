//! Open-loop arrival times: absolute offsets from the load's start, never "sleep after send",
//! so a slow send does not push later arrivals back (no coordinated omission).

use std::time::Duration;

use multitenant::config::Arrival;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp, Gamma};

/// Yields the offset of each arrival from the start, in order.
pub struct ArrivalSchedule {
    kind: OpenLoop,
    rng: StdRng,
    next_ns: f64,
    index: u64,
}

enum OpenLoop {
    Constant { gap_ns: f64 },
    Poisson { gaps: Exp<f64> },
    Gamma { gaps: Gamma<f64> },
}

impl ArrivalSchedule {
    /// The schedule of an open-loop `arrival`, or `None` for a closed-loop one.
    pub fn new(arrival: &Arrival, seed: u64) -> Option<Self> {
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
            Arrival::Concurrency { .. } => return None,
        };
        Some(Self {
            kind,
            rng: StdRng::seed_from_u64(seed),
            next_ns: 0.0,
            index: 0,
        })
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
            OpenLoop::Poisson { gaps } => gaps.sample(&mut self.rng),
            OpenLoop::Gamma { gaps } => gaps.sample(&mut self.rng),
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
        let times: Vec<Duration> = ArrivalSchedule::new(&arrival, 42)
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
        let a: Vec<Duration> = ArrivalSchedule::new(&Arrival::Poisson { rate: 5.0 }, 9)
            .expect("open")
            .take(50)
            .collect();
        let b: Vec<Duration> = ArrivalSchedule::new(&Arrival::Poisson { rate: 5.0 }, 9)
            .expect("open")
            .take(50)
            .collect();
        assert_eq!(a, b);
        assert!(ArrivalSchedule::new(&Arrival::Concurrency { n: 2 }, 9).is_none());
    }
}
