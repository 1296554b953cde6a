//! Synthetic prompts: seeded, unique per request, with drawn prompt and output lengths.
//!
//! Without a tokenizer, a prompt of `n` tokens is `n` words; engines that tokenize differently
//! report the true count in `usage`, which is what the events record.

use multitenant::config::{LengthDist, SyntheticData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const WORDS: &[&str] = &[
    "the",
    "model",
    "serves",
    "tokens",
    "while",
    "another",
    "shares",
    "its",
    "gpu",
    "under",
    "load",
    "measure",
    "latency",
    "throughput",
    "batch",
    "prefill",
    "decode",
    "cache",
    "memory",
    "kernel",
];

/// One request's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The prompt text.
    pub text: String,
    /// Words in it.
    pub words: u32,
    /// `max_tokens` to ask for.
    pub max_tokens: u32,
}

/// Makes the prompt of request `index` of a tenant.
pub struct PromptFactory {
    data: SyntheticData,
    seed: u64,
}

impl PromptFactory {
    /// Prompts for `data`, from `seed`.
    pub fn new(data: SyntheticData, seed: u64) -> Self {
        Self { data, seed }
    }

    /// The prompt of request `index`; the same index always gives the same prompt.
    pub fn prompt(&self, index: u64) -> Prompt {
        let mut rng = StdRng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let words = draw(&self.data.prompt_tokens, &mut rng);
        let max_tokens = draw(&self.data.output_tokens, &mut rng);
        // The first word is unique to the request, so no engine's prefix cache can serve it.
        let mut text = format!("r{index:x}{:08x}", rng.random::<u32>());
        for _ in 1..words {
            text.push(' ');
            text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
        Prompt {
            text,
            words,
            max_tokens,
        }
    }
}

fn draw(dist: &LengthDist, rng: &mut StdRng) -> u32 {
    match *dist {
        LengthDist::Fixed(n) => n,
        LengthDist::Uniform { min, max } => rng.random_range(min..=max),
        LengthDist::Normal {
            mean,
            stddev,
            min,
            max,
        } => {
            let v = Normal::new(mean, stddev).map_or(mean, |n| n.sample(rng));
            (v.round().max(0.0) as u32).clamp(min, max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_have_the_drawn_lengths_and_are_unique() {
        let data = SyntheticData {
            prompt_tokens: LengthDist::Uniform { min: 5, max: 9 },
            output_tokens: LengthDist::Normal {
                mean: 20.0,
                stddev: 5.0,
                min: 10,
                max: 30,
            },
        };
        let f = PromptFactory::new(data, 3);
        let prompts: Vec<Prompt> = (0..500).map(|i| f.prompt(i)).collect();
        for p in &prompts {
            assert_eq!(p.text.split_whitespace().count() as u32, p.words);
            assert!((5..=9).contains(&p.words) && (10..=30).contains(&p.max_tokens));
        }
        let firsts: std::collections::HashSet<&str> = prompts
            .iter()
            .map(|p| p.text.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(firsts.len(), prompts.len());
        assert_eq!(f.prompt(17), prompts[17]);
    }
}
