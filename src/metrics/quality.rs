//! Answers scored against a dataset's expected outputs: exact match and ROUGE-L, so a report
//! can say whether sharing a GPU (or a config change) changed what the models answer, not
//! only how fast.

use serde::{Deserialize, Serialize};

/// Longest input scored, in tokens; longer texts are cut to it (ROUGE-L costs their product).
pub const MAX_TOKENS: usize = 4096;

/// The scores of one tenant's kept answers in one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualitySummary {
    /// Completed requests whose answer was kept (`keep_responses`), any phase.
    pub kept: u64,
    /// Of those, answers with an expected output to score against.
    pub scored: u64,
    /// Share of scored answers that match exactly ([`exact_match`]); `None` when none scored.
    pub exact_match: Option<f64>,
    /// Mean ROUGE-L F1 of scored answers ([`rouge_l`]); `None` when none scored.
    pub rouge_l: Option<f64>,
}

/// Scores kept answers one at a time, for the [`QualitySummary`] of a stream read once.
#[derive(Debug, Clone, Default)]
pub struct QualityAccumulator {
    kept: u64,
    scored: u64,
    exact: u64,
    rouge: f64,
}

impl QualityAccumulator {
    /// Takes one kept answer and its expected output, when the dataset has one.
    pub fn add(&mut self, answer: &str, expected: Option<&str>) {
        self.kept += 1;
        if let Some(expected) = expected {
            self.scored += 1;
            self.exact += u64::from(exact_match(answer, expected));
            self.rouge += rouge_l(answer, expected);
        }
    }

    /// The scores; `None` when no answer was kept.
    pub fn finish(&self) -> Option<QualitySummary> {
        let scored = self.scored;
        let share = |v: f64| (scored > 0).then(|| super::round3(v / scored as f64));
        (self.kept > 0).then(|| QualitySummary {
            kept: self.kept,
            scored,
            exact_match: share(self.exact as f64),
            rouge_l: share(self.rouge),
        })
    }
}

/// Whether `answer` is `expected`, once both are trimmed and every run of whitespace is one
/// space.
pub fn exact_match(answer: &str, expected: &str) -> bool {
    answer.split_whitespace().eq(expected.split_whitespace())
}

/// Tokens as ROUGE's reference implementation (Google's `rouge-score`) makes them: lower-cased
/// runs of letters and digits; here letters and digits of any script, where it keeps ASCII.
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .take(MAX_TOKENS)
        .map(str::to_lowercase)
        .collect()
}

/// ROUGE-L F1 of `answer` against `expected`: with `l` the length of the longest common
/// subsequence of their tokens, precision `l / |answer|`, recall `l / |expected|`, and
/// F1 = 2PR / (P + R). 0 when either has no token.
pub fn rouge_l(answer: &str, expected: &str) -> f64 {
    let (a, e) = (tokens(answer), tokens(expected));
    if a.is_empty() || e.is_empty() {
        return 0.0;
    }
    // Two rows of the LCS table over `e`.
    let mut previous = vec![0u32; e.len() + 1];
    let mut current = vec![0u32; e.len() + 1];
    for token in &a {
        for (j, other) in e.iter().enumerate() {
            current[j + 1] = if token == other {
                previous[j] + 1
            } else {
                current[j].max(previous[j + 1])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    let lcs = f64::from(previous[e.len()]);
    if lcs == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (lcs / a.len() as f64, lcs / e.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_ignores_only_whitespace() {
        assert!(exact_match(" Paris \n", "Paris"));
        assert!(exact_match("a  b\tc", "a b c"));
        assert!(
            !exact_match("paris", "Paris"),
            "case matters for an exact match"
        );
        assert!(!exact_match("Paris.", "Paris"));
    }

    #[test]
    fn rouge_l_on_hand_worked_pairs() {
        // LCS "the cat the mat" = 4 of 6 answer tokens and 4 of 5 expected: P 2/3, R 4/5,
        // F1 = 2·(2/3)·(4/5) / (2/3 + 4/5) = 16/22.
        let f = rouge_l("The cat sat on the mat", "the cat was the mat");
        assert!((f - 16.0 / 22.0).abs() < 1e-12, "{f}");
        assert_eq!(
            rouge_l("tok1 tok2 tok3 tok4", "tok1, tok2; tok3 tok4!"),
            1.0
        );
        // 3 of 4 on both sides: F1 = 0.75.
        assert_eq!(
            rouge_l(" tok1 tok2 tok3 tok4", "tok1 tok2 answer tok4"),
            0.75
        );
        assert_eq!(rouge_l("", "anything"), 0.0);
        assert_eq!(rouge_l("x y", "z"), 0.0);
    }

    #[test]
    fn a_summary_counts_unscored_answers_and_never_scores_nothing() {
        let score = |answers: &[(&str, Option<&str>)]| {
            let mut scores = QualityAccumulator::default();
            for (answer, expected) in answers {
                scores.add(answer, *expected);
            }
            scores.finish()
        };
        let q = score(&[
            (" tok1 tok2", Some("tok1 tok2")),
            (" tok1 tok2", Some("tok1 other")),
            (" tok1", None),
        ])
        .expect("three kept");
        assert_eq!((q.kept, q.scored), (3, 2));
        assert_eq!(q.exact_match, Some(0.5));
        assert_eq!(q.rouge_l, Some(0.75), "(1 + 0.5) / 2");
        let none = score(&[(" tok1", None)]).expect("one kept");
        assert_eq!((none.exact_match, none.rouge_l), (None, None));
        assert!(score(&[]).is_none(), "nothing kept, no scores");
    }
}
