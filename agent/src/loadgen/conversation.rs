//! Multi-turn conversations: what each turn asks, how long its user thinks, and the history
//! a turn carries.
//!
//! Everything drawn comes from the tenant's seed and the conversation's number (and the
//! turn's), so a conversation asks the same questions whatever order the run reaches it in.
//! Only the answers, the engine's, are not known in advance: they are carried into the history
//! as received.

use std::time::Duration;

use multitenant::config::{ConversationData, ThinkTime, EXPONENTIAL_THINK_CUT};
use multitenant::tokens::PromptTokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};

use super::prompts::{draw, text_of, Prompt};

/// Who said a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The system prompt.
    System,
    /// A question.
    User,
    /// An answer.
    Assistant,
}

impl Role {
    /// The role as the chat API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

/// Where a request stands in its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnOf {
    /// The conversation's number among the tenant's (0-based, in the order they started).
    pub conversation: u64,
    /// The turn (1-based).
    pub turn: u32,
}

/// The conversations of one tenant.
pub struct Conversations {
    data: ConversationData,
    tokenizer: Option<PromptTokenizer>,
    seed: u64,
    system: Option<String>,
}

/// Salts that keep the draws of one conversation apart.
const TURNS_SALT: u64 = 0x7475_726e;
const THINK_SALT: u64 = 0x7468_696e;
const QUESTION_SALT: u64 = 0x7175_6573;
const SYSTEM_SALT: u64 = 0x7379_7374;

impl Conversations {
    /// The conversations `data` describes, drawn from `seed`, exact in length with `tokenizer`.
    pub fn new(data: ConversationData, tokenizer: Option<PromptTokenizer>, seed: u64) -> Self {
        let system = (data.shared_system_prompt_tokens > 0).then(|| {
            let mut rng = rng(seed, SYSTEM_SALT, 0, 0);
            text_of(
                "system",
                data.shared_system_prompt_tokens,
                tokenizer.as_ref(),
                &mut rng,
            )
            .0
        });
        Self {
            data,
            tokenizer,
            seed,
            system,
        }
    }

    /// The history every conversation starts from: the shared system prompt, if any.
    pub fn opening(&self) -> Vec<Message> {
        self.system
            .iter()
            .map(|text| Message {
                role: Role::System,
                content: text.clone(),
            })
            .collect()
    }

    /// The most turns a conversation can have.
    pub fn most_turns(&self) -> u32 {
        self.data.turns.max()
    }

    /// How many turns conversation `conversation` has.
    pub fn turns(&self, conversation: u64) -> u32 {
        draw(
            &self.data.turns,
            &mut rng(self.seed, TURNS_SALT, conversation, 0),
        )
    }

    /// The question of `turn`: new text only (the history goes before it), unique to the
    /// conversation from its first word, with the answer length it asks for.
    pub fn question(&self, turn: TurnOf) -> Prompt {
        let mut rng = rng(self.seed, QUESTION_SALT, turn.conversation, turn.turn);
        let length = draw(&self.data.prompt_tokens, &mut rng);
        let max_tokens = draw(&self.data.output_tokens, &mut rng);
        let prefix = format!(
            "c{:x}t{}q{:08x}",
            turn.conversation,
            turn.turn,
            rng.random::<u32>()
        );
        let (text, words, tokens) = text_of(&prefix, length, self.tokenizer.as_ref(), &mut rng);
        Prompt {
            text,
            words,
            tokens,
            max_tokens,
            origin: format!("conversation {} turn {}", turn.conversation + 1, turn.turn),
            expected: None,
        }
    }

    /// How long the user thinks after the answer to `turn` before asking the next.
    pub fn think(&self, turn: TurnOf) -> Duration {
        let mut rng = rng(self.seed, THINK_SALT, turn.conversation, turn.turn);
        match self.data.think_time {
            ThinkTime::Fixed(d) => d,
            ThinkTime::Uniform { min, max } => {
                let span = (max - min).as_secs_f64();
                min + Duration::from_secs_f64(rng.random::<f64>() * span)
            }
            ThinkTime::Exponential { mean } => {
                let cut = (mean * EXPONENTIAL_THINK_CUT).as_secs_f64();
                let drawn = Exp::new(1.0 / mean.as_secs_f64().max(1e-9))
                    .map_or(mean.as_secs_f64(), |e| e.sample(&mut rng));
                Duration::from_secs_f64(drawn.min(cut))
            }
        }
    }
}

fn rng(seed: u64, salt: u64, conversation: u64, turn: u32) -> StdRng {
    let mixed = seed
        ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93)
        ^ conversation.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(turn).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    StdRng::seed_from_u64(mixed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitenant::config::LengthDist;

    fn data(think_time: ThinkTime) -> ConversationData {
        ConversationData {
            turns: LengthDist::Uniform { min: 2, max: 6 },
            think_time,
            shared_system_prompt_tokens: 50,
            prompt_tokens: LengthDist::Fixed(12),
            output_tokens: LengthDist::Uniform { min: 4, max: 9 },
        }
    }

    #[test]
    fn draws_are_seeded_per_conversation_and_questions_are_unique() {
        let c = Conversations::new(data(ThinkTime::Fixed(Duration::from_millis(5))), None, 7);
        let opening = c.opening();
        assert_eq!(opening.len(), 1);
        assert_eq!(opening[0].role, Role::System);
        assert_eq!(opening[0].content.split_whitespace().count(), 50);
        let again = Conversations::new(data(ThinkTime::Fixed(Duration::ZERO)), None, 7);
        assert_eq!(again.opening(), opening, "one system prompt for the tenant");
        let turns: Vec<u32> = (0..200).map(|k| c.turns(k)).collect();
        assert!(turns.iter().all(|t| (2..=6).contains(t)), "{turns:?}");
        assert!(turns.contains(&2) && turns.contains(&6), "{turns:?}");
        let mut firsts = std::collections::HashSet::new();
        for k in 0..200 {
            for turn in 1..=2 {
                let q = c.question(TurnOf {
                    conversation: k,
                    turn,
                });
                assert_eq!((q.words, q.text.split_whitespace().count()), (12, 12));
                assert!((4..=9).contains(&q.max_tokens));
                assert!(firsts.insert(q.text.split(' ').next().map(str::to_owned)));
            }
        }
        let turn = TurnOf {
            conversation: 3,
            turn: 2,
        };
        assert_eq!(c.question(turn), again.question(turn));
        assert_eq!(c.question(turn).origin, "conversation 4 turn 2");
    }

    #[test]
    fn think_times_follow_their_distribution_and_are_cut() {
        let mean = Duration::from_millis(100);
        let c = Conversations::new(data(ThinkTime::Exponential { mean }), None, 1);
        let draws: Vec<f64> = (0..4_000)
            .map(|k| {
                c.think(TurnOf {
                    conversation: k,
                    turn: 1,
                })
                .as_secs_f64()
            })
            .collect();
        let average = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((average - 0.1).abs() < 0.01, "mean {average}");
        assert!(draws.iter().all(|&d| d <= 1.0 + 1e-9), "cut at ten means");
        let (min, max) = (Duration::from_millis(20), Duration::from_millis(30));
        let u = Conversations::new(data(ThinkTime::Uniform { min, max }), None, 1);
        for k in 0..500 {
            let d = u.think(TurnOf {
                conversation: k,
                turn: 3,
            });
            assert!(d >= min && d <= max, "{d:?}");
        }
    }
}
