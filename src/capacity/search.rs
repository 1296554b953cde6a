//! The capacity search: which probe comes next, and what the probes so far prove.
//!
//! A search scales one number, `scale` (a tenant's request rate alone; the total rate of a
//! fixed mix when shared), and probes it:
//! 1. bracketing: from `start`, doubling after a pass and halving after a fail, until one
//!    scale passed and a higher one failed (or `max` passed, or even `min` failed);
//! 2. bisection of [highest pass, lowest fail] until `(fail − pass) / pass ≤ precision`;
//! 3. a probe whose verdict is not significant (too few requests, or its seconds disagree) is
//!    repeated, up to `repeats` times, each repeat measuring twice as long as the try before;
//!    the final highest pass is repeated once to confirm it, and a confirmation that is not
//!    significant is repeated likewise and decides: a pass followed only by unsure probes that
//!    leaned to failing counts as failed. A scale with a significant pass and a significant
//!    fail *flipped*: it counts as failed (conservative), and the search goes on below it.
//!
//! [`next_probe`] is a pure function of the probes so far, and [`interval`] of the same probes
//! is what analysis recomputes from the JSONL, so the agent's decisions and the summary can
//! never disagree.

use serde::{Deserialize, Serialize};

/// How a search probes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SearchPolicy {
    /// First scale probed.
    pub start: f64,
    /// Lowest scale probed before the search says no scale meets the SLO.
    pub min: f64,
    /// Highest scale probed; a pass there is reported as "≥ max".
    pub max: f64,
    /// Relative width at which bisection stops.
    pub precision: f64,
    /// Extra tries of a probe whose verdict is not significant.
    pub repeats: u32,
    /// Probes at most, repeats included.
    pub max_probes: u32,
    /// Whether a shared search along the mix stops once its GPU-equivalents range decides
    /// the verdict ([`crate::capacity::decided`]); searches recorded before this existed ran
    /// to their precision.
    #[serde(default)]
    pub stop_when_decided: bool,
}

/// What one probe showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum ProbeVerdict {
    /// Every tenant met every bound, with enough requests for each.
    Pass,
    /// A tenant missed a bound, with enough requests to say so.
    Fail {
        /// `tenant: bound measured > limit`, for every bound missed.
        missed: Vec<String>,
    },
    /// Too few requests for a percentile an SLO names: what the figures said, unconfirmed.
    NotSignificant {
        /// Whether every bound held on the requests there were.
        passed: bool,
        /// Which tenant had too few requests, and how many it needed.
        reason: String,
    },
    /// The probe could not measure (an engine crashed, the run stopped): the search ends.
    Broken {
        /// Why.
        reason: String,
    },
}

/// One probe: the scale offered and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The scale offered (requests per second).
    pub scale: f64,
    /// What it showed.
    #[serde(flatten)]
    pub verdict: ProbeVerdict,
}

/// How a search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchEnd {
    /// The interval is as narrow as asked.
    Converged,
    /// The highest scale allowed passed: capacity is at least that.
    AboveMax,
    /// Even the lowest scale allowed failed: no rate meets the SLO.
    NoneMeets,
    /// A probe could not measure; the interval is what was known before it.
    Cut,
    /// The probe budget (`max_probes`) or the node's engine-time budget (`capacity.budget`)
    /// ran out first.
    Budget,
    /// A shared search along the mix whose GPU-equivalents range decided the verdict before
    /// its interval was as narrow as asked ([`crate::capacity::decided`]).
    Decided,
    /// Probes still to come (a search read while it runs, or cut off without an end).
    Unfinished,
}

impl SearchEnd {
    /// The name written into summaries and CSV.
    pub fn name(self) -> &'static str {
        match self {
            SearchEnd::Converged => "converged",
            SearchEnd::AboveMax => "above_max",
            SearchEnd::NoneMeets => "none_meets",
            SearchEnd::Cut => "cut",
            SearchEnd::Budget => "budget",
            SearchEnd::Decided => "decided",
            SearchEnd::Unfinished => "unfinished",
        }
    }
}

/// What the probes of a search prove.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The highest scale that passed below every failing one; `None` when none passed.
    pub passed: Option<f64>,
    /// The lowest scale that failed; `None` when none failed.
    pub failed: Option<f64>,
    /// How the search ended.
    pub end: SearchEnd,
    /// Probes run, repeats included.
    pub probes: u32,
    /// Scales that passed once and failed once (counted as failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flipped: Vec<f64>,
    /// Probes whose verdict was not significant.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_significant: u32,
    /// What failed at the lowest failing scale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_bounds: Vec<String>,
    /// Why the search was cut, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
    /// How far the node's engine-time budget was spent, when it ended the search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_spent: Option<String>,
}

impl Interval {
    /// The interval in words, in requests per second: `[52.000, 56.000)`, `≥ 200.000 (the
    /// search's maximum)`, `none: 0.250 failed`, never a capacity of 0.
    pub fn describe(&self) -> String {
        let text = match (self.passed, self.failed, self.end) {
            (Some(p), _, SearchEnd::AboveMax) => format!("≥ {p:.3} (the search's maximum)"),
            (Some(p), Some(f), _) => format!("[{p:.3}, {f:.3})"),
            (Some(p), None, _) => format!("≥ {p:.3}"),
            (None, Some(f), _) => format!("none: even {f:.3} failed"),
            (None, None, _) => "none: nothing measured".to_owned(),
        };
        match (&self.cut, self.end, &self.budget_spent) {
            (Some(reason), _, _) => format!("{text}; cut: {reason}"),
            (None, SearchEnd::Budget, Some(_)) => format!("{text}; engine-time budget spent"),
            (None, SearchEnd::Budget, None) => format!("{text}; probe budget spent"),
            (None, SearchEnd::Decided, _) => format!("{text}; stopped once decided"),
            _ => text,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Two scales closer than this are the same scale (rates are printed to 3 decimals).
const SAME: f64 = 1e-9;

/// What the probes at one scale say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScaleVerdict {
    Pass,
    Fail,
    /// Only insignificant probes, which may be repeated; `passed` is what they said.
    Unsure {
        passed: bool,
        tries: u32,
    },
}

/// Per distinct scale (ascending): its verdict, and whether it flipped.
fn by_scale(probes: &[Probe]) -> Vec<(f64, ScaleVerdict, bool)> {
    let mut scales: Vec<f64> = probes.iter().map(|p| p.scale).collect();
    scales.sort_by(f64::total_cmp);
    scales.dedup_by(|a, b| (*a - *b).abs() <= SAME);
    scales
        .into_iter()
        .map(|s| {
            let here: Vec<&ProbeVerdict> = probes
                .iter()
                .filter(|p| (p.scale - s).abs() <= SAME)
                .map(|p| &p.verdict)
                .collect();
            let passes = here
                .iter()
                .filter(|v| matches!(v, ProbeVerdict::Pass))
                .count();
            let fails = here
                .iter()
                .filter(|v| matches!(v, ProbeVerdict::Fail { .. }))
                .count();
            // The unsure probes since the last significant one: a pass whose confirmation
            // was unsure is decided again, by the (longer) repeats.
            let trailing: Vec<bool> = here
                .iter()
                .rev()
                .map_while(|v| match v {
                    ProbeVerdict::NotSignificant { passed, .. } => Some(*passed),
                    _ => None,
                })
                .collect();
            let verdict = if fails > 0 {
                ScaleVerdict::Fail
            } else if passes > 0 && trailing.is_empty() {
                ScaleVerdict::Pass
            } else {
                ScaleVerdict::Unsure {
                    passed: trailing.iter().all(|p| *p),
                    tries: u32::try_from(trailing.len()).unwrap_or(u32::MAX),
                }
            };
            (s, verdict, passes > 0 && fails > 0)
        })
        .collect()
}

/// How many probes at `scale` were not significant: a probe there measures 2 to that power
/// times its length (the repeats of an unsure scale lengthen).
pub fn unsure_probes_at(probes: &[Probe], scale: f64) -> u32 {
    let unsure = probes
        .iter()
        .filter(|p| (p.scale - scale).abs() <= SAME)
        .filter(|p| matches!(p.verdict, ProbeVerdict::NotSignificant { .. }))
        .count();
    u32::try_from(unsure).unwrap_or(u32::MAX)
}

/// The interval the probes prove, with `policy`'s repeats deciding when an unsure scale
/// stops being retried and counts by what it said.
pub fn interval(probes: &[Probe], policy: &SearchPolicy) -> Interval {
    let scales = by_scale(probes);
    let settled = |v: ScaleVerdict| match v {
        ScaleVerdict::Pass => Some(true),
        ScaleVerdict::Fail => Some(false),
        ScaleVerdict::Unsure { passed, tries } if tries > policy.repeats => Some(passed),
        ScaleVerdict::Unsure { .. } => None,
    };
    let failed = scales
        .iter()
        .find(|(_, v, _)| settled(*v) == Some(false))
        .map(|(s, _, _)| *s);
    let passed = scales
        .iter()
        .filter(|(s, v, _)| settled(*v) == Some(true) && failed.is_none_or(|f| *s < f))
        .map(|(s, _, _)| *s)
        .next_back();
    let failed_bounds = failed
        .map(|f| {
            probes
                .iter()
                .filter(|p| (p.scale - f).abs() <= SAME)
                .flat_map(|p| match &p.verdict {
                    ProbeVerdict::Fail { missed } => missed.clone(),
                    ProbeVerdict::NotSignificant { reason, .. } => vec![reason.clone()],
                    _ => Vec::new(),
                })
                .collect()
        })
        .unwrap_or_default();
    let cut = probes.iter().find_map(|p| match &p.verdict {
        ProbeVerdict::Broken { reason } => Some(reason.clone()),
        _ => None,
    });
    let mut interval = Interval {
        passed,
        failed,
        end: SearchEnd::Unfinished,
        probes: u32::try_from(probes.len()).unwrap_or(u32::MAX),
        flipped: scales
            .iter()
            .filter(|(_, _, f)| *f)
            .map(|(s, _, _)| *s)
            .collect(),
        not_significant: u32::try_from(
            probes
                .iter()
                .filter(|p| matches!(p.verdict, ProbeVerdict::NotSignificant { .. }))
                .count(),
        )
        .unwrap_or(u32::MAX),
        failed_bounds,
        cut,
        budget_spent: None,
    };
    interval.end = match next_step(&scales, &interval, probes, policy) {
        Step::Done(end) => end,
        Step::Probe(_) => SearchEnd::Unfinished,
    };
    interval
}

/// The next scale to probe, or `None` when the search is over.
pub fn next_probe(probes: &[Probe], policy: &SearchPolicy) -> Option<f64> {
    let scales = by_scale(probes);
    let interval = interval(probes, policy);
    match next_step(&scales, &interval, probes, policy) {
        Step::Probe(scale) => Some(scale),
        Step::Done(_) => None,
    }
}

enum Step {
    Probe(f64),
    Done(SearchEnd),
}

fn next_step(
    scales: &[(f64, ScaleVerdict, bool)],
    interval: &Interval,
    probes: &[Probe],
    policy: &SearchPolicy,
) -> Step {
    match wanted_step(scales, interval, probes, policy) {
        // The budget counts only when another probe is wanted: a search whose last allowed
        // probe settled it ended by what it found.
        Step::Probe(_) if probes.len() >= policy.max_probes as usize => {
            Step::Done(SearchEnd::Budget)
        }
        step => step,
    }
}

fn wanted_step(
    scales: &[(f64, ScaleVerdict, bool)],
    interval: &Interval,
    probes: &[Probe],
    policy: &SearchPolicy,
) -> Step {
    if interval.cut.is_some() {
        return Step::Done(SearchEnd::Cut);
    }
    let Some(last) = probes.last() else {
        return Step::Probe(policy.start.clamp(policy.min, policy.max));
    };
    // An unsure scale is tried again before anything else is decided from it.
    if let ProbeVerdict::NotSignificant { .. } = last.verdict {
        let tries = scales
            .iter()
            .find(|(s, _, _)| (s - last.scale).abs() <= SAME)
            .map(|(_, v, _)| *v);
        if let Some(ScaleVerdict::Unsure { tries, .. }) = tries {
            if tries <= policy.repeats {
                return Step::Probe(last.scale);
            }
        }
    }
    match (interval.passed, interval.failed) {
        (None, None) => Step::Probe(policy.start.clamp(policy.min, policy.max)),
        (Some(pass), None) => {
            if pass >= policy.max - SAME {
                Step::Done(SearchEnd::AboveMax)
            } else {
                Step::Probe((pass * 2.0).min(policy.max))
            }
        }
        (None, Some(fail)) => {
            if fail <= policy.min + SAME {
                Step::Done(SearchEnd::NoneMeets)
            } else {
                Step::Probe((fail / 2.0).max(policy.min))
            }
        }
        (Some(pass), Some(fail)) => {
            if (fail - pass) / pass > policy.precision {
                return Step::Probe((pass + fail) / 2.0);
            }
            let at_pass: Vec<&ProbeVerdict> = probes
                .iter()
                .filter(|p| (p.scale - pass).abs() <= SAME)
                .map(|p| &p.verdict)
                .collect();
            let passes = at_pass
                .iter()
                .filter(|v| ***v == ProbeVerdict::Pass)
                .count();
            // Confirmed by a second pass; or given up on after the repeats allowed (then the
            // scale stands on what it showed, counted in `not_significant`).
            let tried_enough = at_pass.len() > 1 + policy.repeats as usize;
            if passes >= 2 || tried_enough || policy.repeats == 0 {
                Step::Done(SearchEnd::Converged)
            } else {
                Step::Probe(pass)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SearchPolicy {
        SearchPolicy {
            start: 4.0,
            min: 0.5,
            max: 64.0,
            precision: 0.1,
            repeats: 1,
            stop_when_decided: true,
            max_probes: 30,
        }
    }

    /// Runs the search against a tenant whose true capacity is `capacity`.
    fn search(capacity: f64, policy: &SearchPolicy) -> (Vec<Probe>, Interval) {
        let mut probes = Vec::new();
        while let Some(scale) = next_probe(&probes, policy) {
            let verdict = if scale <= capacity {
                ProbeVerdict::Pass
            } else {
                ProbeVerdict::Fail {
                    missed: vec!["a: ttft_ms p99 9.00 > 5".into()],
                }
            };
            probes.push(Probe { scale, verdict });
            assert!(probes.len() <= 30, "the search ends: {probes:?}");
        }
        let interval = interval(&probes, policy);
        (probes, interval)
    }

    #[test]
    fn brackets_then_bisects_to_the_asked_precision_and_confirms_the_pass() {
        let (probes, found) = search(13.0, &policy());
        let scales: Vec<f64> = probes.iter().map(|p| p.scale).collect();
        assert_eq!(&scales[..3], &[4.0, 8.0, 16.0], "doubling from the start");
        assert_eq!(found.end, SearchEnd::Converged);
        let (pass, fail) = (found.passed.expect("a pass"), found.failed.expect("a fail"));
        assert!(pass <= 13.0 && 13.0 < fail, "{found:?}");
        assert!((fail - pass) / pass <= 0.1, "{found:?}");
        let confirmations = probes.iter().filter(|p| p.scale == pass).count();
        assert_eq!(confirmations, 2, "the highest pass is confirmed once");
        assert_eq!(found.failed_bounds, ["a: ttft_ms p99 9.00 > 5"]);
    }

    #[test]
    fn capacity_above_the_maximum_is_at_least_the_maximum() {
        let found = search(1000.0, &policy()).1;
        assert_eq!(
            (found.passed, found.failed, found.end),
            (Some(64.0), None, SearchEnd::AboveMax)
        );
    }

    #[test]
    fn an_slo_no_rate_meets_is_said_so_never_capacity_zero() {
        let found = search(0.1, &policy()).1;
        assert_eq!(found.passed, None);
        assert_eq!(found.failed, Some(0.5));
        assert_eq!(found.end, SearchEnd::NoneMeets);
    }

    #[test]
    fn an_insignificant_probe_is_repeated_and_a_flip_counts_as_a_fail() {
        let p = policy();
        let unsure = ProbeVerdict::NotSignificant {
            passed: true,
            reason: "a: 20 requests, p99 needs 500".into(),
        };
        let mut probes = vec![Probe {
            scale: 4.0,
            verdict: unsure.clone(),
        }];
        assert_eq!(
            next_probe(&probes, &p),
            Some(4.0),
            "repeated at the same scale"
        );
        probes.push(Probe {
            scale: 4.0,
            verdict: unsure,
        });
        assert_eq!(
            next_probe(&probes, &p),
            Some(8.0),
            "after the repeats it counts as it said"
        );
        // Each try there lengthens the next by a doubling; other scales are not counted.
        assert_eq!(unsure_probes_at(&probes, 4.0), 2);
        assert_eq!(unsure_probes_at(&probes, 8.0), 0);
        let fail = ProbeVerdict::Fail {
            missed: vec!["x".into()],
        };
        let flipped = vec![
            Probe {
                scale: 4.0,
                verdict: ProbeVerdict::Pass,
            },
            Probe {
                scale: 8.0,
                verdict: fail.clone(),
            },
            Probe {
                scale: 4.0,
                verdict: fail,
            },
        ];
        let found = interval(&flipped, &p);
        assert_eq!(found.flipped, [4.0]);
        // A pass whose confirmation came back unsure is probed again; once the repeats are
        // spent on probes that leaned to failing, the scale counts as failed.
        let leaning = ProbeVerdict::NotSignificant {
            passed: false,
            reason: "a: ttft_ms p90: 24 of 52 over 150 ms: not decided at 95%".into(),
        };
        let mut confirming = vec![
            Probe {
                scale: 4.0,
                verdict: ProbeVerdict::Pass,
            },
            Probe {
                scale: 4.4,
                verdict: ProbeVerdict::Fail {
                    missed: vec!["x".into()],
                },
            },
            Probe {
                scale: 4.0,
                verdict: leaning.clone(),
            },
        ];
        assert_eq!(
            next_probe(&confirming, &p),
            Some(4.0),
            "the confirmation again"
        );
        confirming.push(Probe {
            scale: 4.0,
            verdict: leaning,
        });
        let found = interval(&confirming, &p);
        assert_eq!((found.passed, found.failed), (None, Some(4.0)), "{found:?}");
        assert_eq!(next_probe(&confirming, &p), Some(2.0));
        assert_eq!((found.passed, found.failed), (None, Some(4.0)));
        assert_eq!(
            next_probe(&flipped, &p),
            Some(2.0),
            "the search goes on below the flip"
        );
    }

    #[test]
    fn the_budget_ends_only_a_search_that_wants_another_probe() {
        let mut p = policy();
        p.max_probes = 2;
        let above = vec![
            Probe {
                scale: 32.0,
                verdict: ProbeVerdict::Pass,
            },
            Probe {
                scale: 64.0,
                verdict: ProbeVerdict::Pass,
            },
        ];
        assert_eq!(
            interval(&above, &p).end,
            SearchEnd::AboveMax,
            "settled on its last probe"
        );
        let open = vec![
            Probe {
                scale: 4.0,
                verdict: ProbeVerdict::Pass
            };
            2
        ];
        assert_eq!(interval(&open, &p).end, SearchEnd::Budget);
    }

    #[test]
    fn an_unsure_confirmation_is_not_retried_forever() {
        let unsure = ProbeVerdict::NotSignificant {
            passed: true,
            reason: "few".into(),
        };
        let fail = ProbeVerdict::Fail {
            missed: vec!["x".into()],
        };
        let mut probes = vec![
            Probe {
                scale: 10.0,
                verdict: ProbeVerdict::Pass,
            },
            Probe {
                scale: 10.5,
                verdict: fail,
            },
        ];
        let p = policy();
        assert_eq!(next_probe(&probes, &p), Some(10.0), "the pass is confirmed");
        probes.push(Probe {
            scale: 10.0,
            verdict: unsure.clone(),
        });
        assert_eq!(
            next_probe(&probes, &p),
            Some(10.0),
            "an unsure confirmation is repeated"
        );
        probes.push(Probe {
            scale: 10.0,
            verdict: unsure,
        });
        assert_eq!(next_probe(&probes, &p), None, "then the search ends");
        assert_eq!(interval(&probes, &p).end, SearchEnd::Converged);
    }

    #[test]
    fn a_broken_probe_ends_the_search_with_what_was_known() {
        let probes = vec![
            Probe {
                scale: 4.0,
                verdict: ProbeVerdict::Pass,
            },
            Probe {
                scale: 8.0,
                verdict: ProbeVerdict::Broken {
                    reason: "engine exited".into(),
                },
            },
        ];
        let found = interval(&probes, &policy());
        assert_eq!(found.end, SearchEnd::Cut);
        assert_eq!((found.passed, found.failed), (Some(4.0), None));
        assert_eq!(next_probe(&probes, &policy()), None);
    }
}
