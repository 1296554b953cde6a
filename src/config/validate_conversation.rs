//! Validation of multi-turn conversations: `data: {kind: conversation, ...}`.

use std::time::Duration;

use serde::Deserialize;

use super::raw::RawData;
use super::validate::{join, Checker, MAX_TOKENS_PER_LENGTH};
use super::{ConversationData, ThinkTime, MAX_TURNS};

/// Longest think time: a pause of an hour between two questions is a typo in its unit.
const MAX_THINK: Duration = Duration::from_secs(3600);
/// The conversation keys of `data:`, refused beside any other kind.
const CONVERSATION_KEYS: [&str; 3] = ["turns", "think_time", "shared_system_prompt_tokens"];

impl Checker {
    /// Refuses the conversation keys in `data:` of another kind.
    pub(super) fn no_conversation_keys(&mut self, raw: &RawData, path: &str) {
        let set = [
            raw.turns.is_some(),
            raw.think_time.is_some(),
            raw.shared_system_prompt_tokens.is_some(),
        ];
        for (key, _) in CONVERSATION_KEYS.iter().zip(set).filter(|(_, s)| *s) {
            self.problem(
                &join(path, key),
                format!("`{key}` applies to conversations (kind: conversation)"),
            );
        }
    }

    /// Checks a conversation workload's data.
    pub(super) fn conversation(&mut self, raw: RawData, path: &str) -> Option<ConversationData> {
        for (key, set) in [
            ("profile", raw.profile.is_some()),
            ("path", raw.path.is_some()),
        ] {
            if set {
                self.problem(
                    &join(path, key),
                    format!("`{key}` does not apply to conversations, which take turns, think_time, shared_system_prompt_tokens, prompt_tokens, output_tokens and tokenizer"),
                );
            }
        }
        let turns_path = join(path, "turns");
        let turns = self
            .required(raw.turns, &turns_path)
            .and_then(|v| self.length(&v, &turns_path))
            .and_then(|turns| {
                if turns.max() > MAX_TURNS {
                    self.problem(
                        &turns_path,
                        format!(
                            "a conversation has at most {MAX_TURNS} turns, and this one can draw {}",
                            turns.max()
                        ),
                    );
                    return None;
                }
                Some(turns)
            });
        let think_path = join(path, "think_time");
        let think_time = match raw.think_time {
            Some(v) => self.think_time(v, &think_path),
            None => Some(ThinkTime::Fixed(Duration::ZERO)),
        };
        let system_path = join(path, "shared_system_prompt_tokens");
        let system = match raw.shared_system_prompt_tokens.unwrap_or(0) {
            n if (0..=MAX_TOKENS_PER_LENGTH).contains(&n) => u32::try_from(n).ok(),
            n => {
                self.problem(
                    &system_path,
                    format!("must be in 0..={MAX_TOKENS_PER_LENGTH} tokens, got {n}"),
                );
                None
            }
        };
        let prompt_path = join(path, "prompt_tokens");
        let prompt = self
            .required(raw.prompt_tokens, &prompt_path)
            .and_then(|v| self.length(&v, &prompt_path));
        let output_path = join(path, "output_tokens");
        let output = self
            .required(raw.output_tokens, &output_path)
            .and_then(|v| self.length(&v, &output_path));
        let data = ConversationData {
            turns: turns?,
            think_time: think_time?,
            shared_system_prompt_tokens: system?,
            prompt_tokens: prompt?,
            output_tokens: output?,
        };
        let longest = longest_context(&data);
        if longest > MAX_TOKENS_PER_LENGTH as u64 {
            self.problem(
                path,
                format!("the last turn of the longest conversation could carry {longest} tokens of history, more than any model's context ({MAX_TOKENS_PER_LENGTH}); fewer turns or shorter turns"),
            );
            return None;
        }
        Some(data)
    }

    fn think_time(&mut self, value: serde_yaml::Value, path: &str) -> Option<ThinkTime> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Range {
            min: Option<String>,
            max: Option<String>,
            mean: Option<String>,
        }
        let think = if let Some(text) = value.as_str() {
            ThinkTime::Fixed(self.duration(Some(text.to_owned()), path)?)
        } else {
            let range: Range = match serde_yaml::from_value(value) {
                Ok(r) => r,
                Err(e) => {
                    self.problem(
                        path,
                        format!("{e}; write a duration (2s), {{min: 1s, max: 3s}} or {{mean: 2s}}"),
                    );
                    return None;
                }
            };
            let min = self.duration(range.min, &join(path, "min"));
            let max = self.duration(range.max, &join(path, "max"));
            let mean = self.duration(range.mean, &join(path, "mean"));
            match (min, max, mean) {
                (None, None, Some(mean)) => ThinkTime::Exponential { mean },
                (Some(min), Some(max), None) if min <= max => ThinkTime::Uniform { min, max },
                (Some(min), Some(max), None) => {
                    self.problem(path, format!("min {min:?} is longer than max {max:?}"));
                    return None;
                }
                _ => {
                    self.problem(
                        path,
                        "give a duration (2s), {min, max} (uniform) or {mean} (exponential)",
                    );
                    return None;
                }
            }
        };
        if think.max() > MAX_THINK {
            self.problem(
                path,
                format!("a think time can reach {:?}, past the limit of {MAX_THINK:?}; is the unit right?", think.max()),
            );
            return None;
        }
        Some(think)
    }
}

/// The most tokens the last turn of a conversation can carry: the system prompt and every
/// turn's question and answer at their largest.
fn longest_context(data: &ConversationData) -> u64 {
    let per_turn = u64::from(data.prompt_tokens.max()) + u64::from(data.output_tokens.max());
    u64::from(data.shared_system_prompt_tokens) + u64::from(data.turns.max()) * per_turn
}

#[cfg(test)]
mod tests {
    use crate::config::{DataSource, Experiment, LengthDist, ThinkTime};
    use std::time::Duration;

    fn with(data: &str) -> String {
        format!(
            "name: c\nworkloads:\n  w: {{arrival: {{kind: poisson, rate: 2}}, data: {data}, duration: 5s}}\nnodes:\n  - name: n\n    tenants:\n      - {{name: a, engine: {{kind: simulated}}, workload: w}}\n"
        )
    }

    #[test]
    fn a_conversation_resolves_with_its_think_time() {
        let e = Experiment::from_yaml(
            &with("{kind: conversation, turns: {min: 2, max: 5}, think_time: {mean: 1500ms}, shared_system_prompt_tokens: 300, prompt_tokens: 40, output_tokens: 20}"),
            "c.yaml",
        )
        .expect("valid");
        let DataSource::Conversation(c) = &e.workloads["w"].data else {
            panic!("not a conversation: {:?}", e.workloads["w"].data);
        };
        assert_eq!(c.turns, LengthDist::Uniform { min: 2, max: 5 });
        assert_eq!(
            c.think_time,
            ThinkTime::Exponential {
                mean: Duration::from_millis(1500)
            }
        );
        assert_eq!(c.shared_system_prompt_tokens, 300);
        let said = e.workloads["w"].data.shared_prefixes().expect("says so");
        assert!(
            said.contains("2..=5 turns") && said.contains("300-token system prompt"),
            "{said}"
        );
        let plain = Experiment::from_yaml(
            &with("{kind: conversation, turns: 3, prompt_tokens: 4, output_tokens: 4}"),
            "c.yaml",
        )
        .expect("valid");
        let DataSource::Conversation(c) = &plain.workloads["w"].data else {
            panic!("not a conversation");
        };
        assert_eq!(
            (c.think_time, c.shared_system_prompt_tokens),
            (ThinkTime::Fixed(Duration::ZERO), 0)
        );
    }

    #[test]
    fn bad_conversations_are_refused_with_their_paths() {
        let cases = [
            (
                "{kind: conversation, turns: 65, prompt_tokens: 4, output_tokens: 4}",
                "workloads.w.data.turns: a conversation has at most 64 turns",
            ),
            (
                "{kind: conversation, prompt_tokens: 4, output_tokens: 4}",
                "workloads.w.data.turns: required key is missing",
            ),
            (
                "{kind: conversation, turns: 2, think_time: {min: 3s, max: 1s}, prompt_tokens: 4, output_tokens: 4}",
                "workloads.w.data.think_time: min 3s is longer than max 1s",
            ),
            (
                "{kind: conversation, turns: 2, think_time: 2h, prompt_tokens: 4, output_tokens: 4}",
                "past the limit of 3600s",
            ),
            (
                "{kind: conversation, turns: 2, think_time: {mean: 1s, max: 2s}, prompt_tokens: 4, output_tokens: 4}",
                "give a duration (2s), {min, max} (uniform) or {mean} (exponential)",
            ),
            (
                "{kind: conversation, turns: 64, prompt_tokens: 20000, output_tokens: 20000}",
                "could carry 2560000 tokens of history",
            ),
            (
                "{kind: conversation, turns: 2, path: x.jsonl, prompt_tokens: 4, output_tokens: 4}",
                "workloads.w.data.path: `path` does not apply to conversations",
            ),
            (
                "{prompt_tokens: 4, output_tokens: 4, turns: 3}",
                "workloads.w.data.turns: `turns` applies to conversations (kind: conversation)",
            ),
            (
                "{kind: conversation, turns: 2, shared_system_prompt_tokens: -1, prompt_tokens: 4, output_tokens: 4}",
                "shared_system_prompt_tokens: must be in 0..=1000000 tokens, got -1",
            ),
        ];
        for (data, expected) in cases {
            let err = Experiment::from_yaml(&with(data), "c.yaml")
                .expect_err(data)
                .to_string();
            assert!(err.contains(expected), "{data}: {err}");
        }
    }
}
