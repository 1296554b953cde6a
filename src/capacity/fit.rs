//! Every probe of a search used at once: for each bound of each tenant, a curve of the measured
//! figure against the offered rate that never falls as the rate rises (isotonic regression by
//! pool-adjacent-violators, each probe weighted by its completed requests), the rate at which
//! that curve crosses the bound's limit (linear between the fitted points), and a cliff where
//! the curve goes from half the limit or less to over it while the rate grows by half or
//! less. The bound whose curve
//! crosses first is the **binding** one: what limits the capacity.
//!
//! The fit reads the probes' figures (point estimates); the interval of the search, judged at
//! its stated confidence, stays the capacity. The fit says where inside or near it the limit
//! lies, and why.

use serde::{Deserialize, Serialize};

use super::round3;

/// The widest ratio of rates over which a fitted curve going from half its limit or less to
/// over the limit is a cliff.
///
/// Past a cliff the queue grows without bound, so latency depends on how long a probe ran,
/// not on its rate, and probes there stop once their failure is certain: their figures are
/// those of the first second or two of the overload, far below what a long run reaches. A
/// fixed factor between neighbouring rates (an order of magnitude) therefore misses cliffs;
/// the speed at which the curve crosses the limit does not. On the simulated engines: a cliff
/// engine went from 37 ms to 206 ms over 40 to 55 req/s against a 150 ms bound, a gradual one
/// from 10 to 28 ms over 10 to 30 req/s against 25 ms.
pub const CLIFF_SPAN: f64 = 1.5;

/// One probe's figure for one bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The total rate the probe offered, requests/s.
    pub rate: f64,
    /// What it measured.
    pub value: f64,
    /// How much it counts: its completed requests.
    pub weight: f64,
}

/// One bound's fitted curve and where it crosses its limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundFit {
    /// `tenant: bound`, as the probes' verdicts name it (`a: ttft_ms p90`).
    pub bound: String,
    /// Its limit.
    pub limit: f64,
    /// The fitted curve: `[rate, figure]` at each rate probed, rising.
    pub curve: Vec<[f64; 2]>,
    /// The rate at which the curve reaches the limit; `None` when it stays within it at every
    /// rate probed, and the lowest rate probed when it is over even there.
    pub crosses_at: Option<f64>,
    /// The rates over which the curve goes from half its limit or less to over the limit,
    /// when they are at most [`CLIFF_SPAN`] apart: a cliff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cliff: Option<[f64; 2]>,
}

/// What the fits of one search say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchFit {
    /// The bound that crosses its limit at the lowest rate; `None` when none crosses.
    pub binding: Option<String>,
    /// The rate at which it does.
    pub crosses_at: Option<f64>,
    /// Each bound's fit.
    pub bounds: Vec<BoundFit>,
}

impl SearchFit {
    /// The fits of every bound, `(name, limit, readings)`; the binding one named.
    pub fn of(bounds: Vec<(String, f64, Vec<Reading>)>) -> Self {
        let bounds: Vec<BoundFit> = bounds
            .into_iter()
            .filter(|(_, _, readings)| !readings.is_empty())
            .map(|(bound, limit, readings)| BoundFit::of(bound, limit, readings))
            .collect();
        let binding = bounds
            .iter()
            .filter_map(|b| Some((b, b.crosses_at?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        Self {
            binding: binding.map(|(b, _)| b.bound.clone()),
            crosses_at: binding.map(|(_, at)| at),
            bounds,
        }
    }

    /// `binding: b: tpot_ms p90 (crosses 25 at 26.9 req/s; a cliff from 26 to 28)`, or `None`
    /// when no bound crosses within the rates probed.
    pub fn describe(&self) -> Option<String> {
        let name = self.binding.as_ref()?;
        let fit = self.bounds.iter().find(|b| &b.bound == name)?;
        let cliff = fit
            .cliff
            .map(|[low, high]| format!("; a cliff from {low:.3} to {high:.3}"))
            .unwrap_or_default();
        Some(format!(
            "binding: {name} (crosses {} at {:.3} req/s{cliff})",
            fit.limit, fit.crosses_at?
        ))
    }
}

impl BoundFit {
    /// The isotonic fit of `readings` against `limit`.
    pub fn of(bound: String, limit: f64, readings: Vec<Reading>) -> Self {
        let curve = isotonic(readings);
        Self {
            bound,
            limit,
            crosses_at: crossing(&curve, limit).map(round3),
            cliff: cliff(&curve, limit),
            curve: curve.iter().map(|p| [p.rate, round3(p.value)]).collect(),
        }
    }
}

/// The non-decreasing curve closest to `readings` in weighted least squares, one point per
/// rate: readings at one rate are pooled first, then neighbours that fall are pooled until none
/// does (pool adjacent violators). Each point keeps its rate; its value is its pool's mean.
pub fn isotonic(mut readings: Vec<Reading>) -> Vec<Reading> {
    readings.retain(|r| r.rate.is_finite() && r.value.is_finite() && r.weight > 0.0);
    readings.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    // Every rate's readings pooled into one point first, so that the order of ties is moot.
    let mut rates: Vec<(f64, Pool)> = Vec::new();
    for r in readings {
        let pool = Pool::of(r);
        match rates.last_mut() {
            Some((rate, last)) if *rate == r.rate => {
                *last = Pool {
                    rates: 1,
                    ..last.merged(pool)
                }
            }
            _ => rates.push((r.rate, pool)),
        }
    }
    // Pool adjacent violators: a point below the pool before it joins that pool.
    let mut pools: Vec<Pool> = Vec::new();
    for (_, pool) in &rates {
        pools.push(*pool);
        while pools.len() > 1 && pools[pools.len() - 2].mean > pools[pools.len() - 1].mean {
            let top = pools.pop().expect("two pools");
            let below = pools.pop().expect("two pools");
            pools.push(below.merged(top));
        }
    }
    let mut at = rates.into_iter().map(|(rate, _)| rate);
    let mut curve = Vec::new();
    for pool in pools {
        curve.extend(at.by_ref().take(pool.rates).map(|rate| Reading {
            rate,
            value: pool.mean,
            weight: pool.weight,
        }));
    }
    curve
}

/// Readings pooled: their weighted mean, their weight, and how many rates they span.
#[derive(Debug, Clone, Copy)]
struct Pool {
    mean: f64,
    weight: f64,
    rates: usize,
}

impl Pool {
    fn of(r: Reading) -> Self {
        Self {
            mean: r.value,
            weight: r.weight,
            rates: 1,
        }
    }

    /// `self` and `other` as one pool, spanning the rates of both.
    fn merged(self, other: Pool) -> Pool {
        let weight = self.weight + other.weight;
        Pool {
            mean: (self.mean * self.weight + other.mean * other.weight) / weight,
            weight,
            rates: self.rates + other.rates,
        }
    }
}

/// Where a rising `curve` reaches `limit`: linear between the last point within it and the
/// first over it; the lowest rate when even that is over; `None` when no point is over.
fn crossing(curve: &[Reading], limit: f64) -> Option<f64> {
    let over = curve.iter().position(|p| p.value > limit)?;
    let Some(below) = over.checked_sub(1).map(|i| curve[i]) else {
        return Some(curve[0].rate);
    };
    let above = curve[over];
    let t = (limit - below.value) / (above.value - below.value);
    Some(below.rate + t * (above.rate - below.rate))
}

/// The last rate at which the rising `curve` is within half of `limit` and the first at which
/// it is over `limit`, when they are at most [`CLIFF_SPAN`] apart.
fn cliff(curve: &[Reading], limit: f64) -> Option<[f64; 2]> {
    let over = curve.iter().position(|p| p.value > limit)?;
    let low = curve[..over]
        .iter()
        .rev()
        .find(|p| p.value <= limit / 2.0)?;
    let high = curve[over];
    (high.rate <= CLIFF_SPAN * low.rate).then_some([low.rate, high.rate])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(points: &[(f64, f64)]) -> Vec<Reading> {
        points
            .iter()
            .map(|&(rate, value)| Reading {
                rate,
                value,
                weight: 1.0,
            })
            .collect()
    }

    fn values(curve: &[Reading]) -> Vec<f64> {
        curve.iter().map(|p| p.value).collect()
    }

    #[test]
    fn the_fit_never_falls_and_pools_what_does() {
        // The solo probes: 25 req/s both passed (134 ms) and failed (213 ms).
        let fit = isotonic(readings(&[
            (20.0, 38.0),
            (40.0, 5214.0),
            (30.0, 536.0),
            (25.0, 134.0),
            (27.5, 400.0),
            (26.25, 281.0),
            (25.0, 213.0),
            (22.5, 42.0),
            (23.75, 158.0),
            (22.5, 41.0),
        ]));
        let rates: Vec<f64> = fit.iter().map(|p| p.rate).collect();
        assert_eq!(rates, [20.0, 22.5, 23.75, 25.0, 26.25, 27.5, 30.0, 40.0]);
        // Each rate pools its readings (25: 173.5), and the means already rise.
        assert_eq!(
            values(&fit),
            [38.0, 41.5, 158.0, 173.5, 281.0, 400.0, 536.0, 5214.0]
        );
        // A fall is pooled with what is before it: 10, 30, 20 → 10, 25, 25.
        let fit = isotonic(readings(&[(1.0, 10.0), (2.0, 30.0), (3.0, 20.0)]));
        assert_eq!(values(&fit), [10.0, 25.0, 25.0]);
        // A second reading at a rate can make it fall below the rate before: pooled too.
        let fit = isotonic(readings(&[(1.0, 10.0), (2.0, 30.0), (2.0, -22.0)]));
        assert_eq!(values(&fit), [6.0, 6.0]);
        // Weights count: a long probe pulls its pool further.
        let mut r = readings(&[(1.0, 10.0), (2.0, 30.0), (3.0, 20.0)]);
        r[2].weight = 3.0;
        assert_eq!(values(&isotonic(r)), [10.0, 22.5, 22.5]);
    }

    #[test]
    fn the_binding_bound_is_the_one_that_crosses_first_and_a_tenfold_jump_is_a_cliff() {
        let fit = SearchFit::of(vec![
            (
                "a: ttft_ms p99".into(),
                150.0,
                readings(&[(20.0, 38.0), (30.0, 60.0), (32.0, 1300.0), (40.0, 5000.0)]),
            ),
            (
                "a: tpot_ms p90".into(),
                25.0,
                readings(&[(20.0, 10.0), (30.0, 20.0), (40.0, 30.0)]),
            ),
            ("a: e2e_ms p50".into(), 1000.0, readings(&[(20.0, 100.0)])),
        ]);
        // TTFT crosses 150 a tenth of the way from 30 (60 ms) to 32 (1,300 ms); TPOT at 35.
        let ttft = &fit.bounds[0];
        assert_eq!(ttft.crosses_at, Some(30.145));
        assert_eq!(ttft.cliff, Some([30.0, 32.0]));
        assert_eq!(fit.bounds[1].crosses_at, Some(35.0));
        assert_eq!(fit.bounds[1].cliff, None);
        // From under half the bound at 40 to over it at 55 (the probes past the cliff stopped
        // early, so the curve rises no more than 6-fold): a cliff. From under half at 10 to over
        // at 30: gradual.
        let stopped = BoundFit::of(
            "a: ttft_ms p90".into(),
            150.0,
            readings(&[
                (20.0, 31.0),
                (40.0, 37.0),
                (50.0, 93.0),
                (55.0, 206.0),
                (80.0, 351.0),
            ]),
        );
        assert_eq!(stopped.cliff, Some([40.0, 55.0]));
        let gradual = BoundFit::of(
            "b: tpot_ms p90".into(),
            25.0,
            readings(&[
                (10.0, 9.6),
                (20.0, 16.7),
                (25.0, 24.6),
                (30.0, 28.5),
                (40.0, 32.4),
            ]),
        );
        assert_eq!(gradual.cliff, None);
        assert_eq!(fit.bounds[2].crosses_at, None);
        assert_eq!(fit.binding.as_deref(), Some("a: ttft_ms p99"));
        assert_eq!(
            fit.describe().as_deref(),
            Some("binding: a: ttft_ms p99 (crosses 150 at 30.145 req/s; a cliff from 30.000 to 32.000)")
        );
        // Over at the lowest rate probed: it crosses there, no lower.
        let over = BoundFit::of("b: x".into(), 1.0, readings(&[(4.0, 2.0), (8.0, 3.0)]));
        assert_eq!(over.crosses_at, Some(4.0));
        // Nothing crosses: no binding bound.
        let within = SearchFit::of(vec![("b: x".into(), 10.0, readings(&[(4.0, 2.0)]))]);
        assert_eq!((within.binding.as_deref(), within.describe()), (None, None));
    }
}
