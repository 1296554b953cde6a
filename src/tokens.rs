//! Prompts of an exact token count, with the model's own `tokenizer.json`.
//!
//! Tokenizing every prompt on the way to the server would put milliseconds of work between an
//! arrival and its send. Instead, once per tokenizer, the vocabulary is searched for words that
//! are one token each when written after a space (`" model"`), and it is checked that such words
//! add up: a text of k of them after any prefix has the prefix's count plus k. A prompt of n
//! tokens is then a request-unique prefix (tokenized alone: a few characters) followed by n
//! minus its count of those words. Tokenizers whose pre-tokenizer does not split on spaces
//! fail that check and are refused with the reason.
//!
//! The count is the content's, without special tokens: a chat template or a BOS that the
//! server adds on top shows in the server's `usage`.

use std::path::Path;

use rand::Rng;

/// Words tried per prompt when checking that counts add up.
const CHECK_WORDS: usize = 64;

/// A tokenizer that builds prompts of an exact length.
pub struct PromptTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// Words that are one token after a space, each with its leading space.
    words: Vec<String>,
}

/// A tokenizer file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer {path}: {message}")]
pub struct TokenizerError {
    /// The file.
    pub path: String,
    /// Why.
    pub message: String,
}

impl PromptTokenizer {
    /// Reads a Hugging Face `tokenizer.json` and finds its one-token words.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let error = |message: String| TokenizerError {
            path: path.display().to_string(),
            message,
        };
        let tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| error(e.to_string()))?;
        let mut words = Vec::new();
        for id in 0..tokenizer.get_vocab_size(false) as u32 {
            let Ok(text) = tokenizer.decode(&[id], true) else {
                continue;
            };
            let word = text.trim_start();
            let plain = word.len() >= 2 && word.bytes().all(|b| b.is_ascii_lowercase());
            if !plain || text.len() != word.len() + 1 {
                continue;
            }
            let candidate = format!(" {word}");
            if count(&tokenizer, &candidate) == Some(1) {
                words.push(candidate);
            }
        }
        if words.len() < 16 {
            return Err(error(format!(
                "only {} words of its vocabulary are one token after a space; exact prompt lengths need at least 16",
                words.len()
            )));
        }
        let found = Self { tokenizer, words };
        found.check_counts_add_up().map_err(error)?;
        Ok(found)
    }

    /// Tokens in `text`, without special tokens.
    pub fn count(&self, text: &str) -> Option<u32> {
        count(&self.tokenizer, text)
    }

    /// A prompt that starts with `prefix` and has exactly `tokens` tokens, or the prefix's
    /// own count when that is more. Returns the text and its count.
    pub fn prompt(&self, prefix: &str, tokens: u32, rng: &mut impl Rng) -> (String, u32) {
        let prefix_tokens = self.count(prefix).unwrap_or(0);
        let mut text = String::with_capacity(prefix.len() + 8 * tokens as usize);
        text.push_str(prefix);
        for _ in prefix_tokens..tokens {
            text.push_str(&self.words[rng.random_range(0..self.words.len())]);
        }
        (text, prefix_tokens.max(tokens))
    }

    fn check_counts_add_up(&self) -> Result<(), String> {
        let mut rng = rand::rng();
        for prefix in ["r1f", "r2a9c0ffee", "hello"] {
            let (text, expected) = self.prompt(prefix, CHECK_WORDS as u32, &mut rng);
            let got = self.count(&text);
            if got != Some(expected) {
                return Err(format!(
                    "token counts do not add up across words ({expected} expected, {got:?} counted for {:?}…); its pre-tokenizer does not split on spaces, so exact prompt lengths cannot be built",
                    text.chars().take(60).collect::<String>()
                ));
            }
        }
        Ok(())
    }
}

fn count(tokenizer: &tokenizers::Tokenizer, text: &str) -> Option<u32> {
    let encoding = tokenizer.encode(text, false).ok()?;
    u32::try_from(encoding.len()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tokenizers::models::bpe::{BpeTrainer, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{
        AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
        TokenizerImpl,
    };

    /// A byte-level BPE like GPT-2's, Llama 3's or Qwen's, trained here on a few sentences.
    fn byte_level_bpe(dir: &Path) -> std::path::PathBuf {
        let corpus = dir.join("corpus.txt");
        let text = "the model serves tokens while another model shares its gpu under load. \
                    we measure latency and throughput of every batch, prefill and decode step. \
                    the cache holds memory for each kernel and each request of the tenant.\n";
        std::fs::write(&corpus, text.repeat(50)).expect("corpus");
        let mut trainer = BpeTrainer::builder()
            .vocab_size(400)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from("<|end|>", true)])
            .build();
        let mut tokenizer: TokenizerImpl<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        > = TokenizerImpl::new(BPE::default());
        tokenizer
            .with_pre_tokenizer(Some(PreTokenizerWrapper::from(ByteLevel::new(
                false, true, true,
            ))))
            .with_decoder(Some(DecoderWrapper::from(ByteLevel::default())));
        tokenizer
            .train_from_files(&mut trainer, vec![corpus.display().to_string()])
            .expect("train");
        let path = dir.join("tokenizer.json");
        tokenizer.save(&path, false).expect("save");
        path
    }

    #[test]
    fn prompts_have_exactly_the_asked_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = PromptTokenizer::load(&byte_level_bpe(dir.path())).expect("usable");
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (i, n) in [1u32, 7, 32, 512, 4096].into_iter().enumerate() {
            let prefix = format!("r{i:x}{:08x}", rng.random::<u32>());
            let (text, claimed) = t.prompt(&prefix, n, &mut rng);
            assert_eq!(t.count(&text), Some(claimed), "{n}: {text:.80}");
            let prefix_tokens = t.count(&prefix).expect("count");
            assert_eq!(claimed, n.max(prefix_tokens), "{n}");
        }
    }

    #[test]
    fn unreadable_or_unsuitable_tokenizers_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("tokenizer.json");
        std::fs::write(&bad, "{\"not\": \"a tokenizer\"}").expect("write");
        let err = PromptTokenizer::load(&bad).err().expect("refused");
        assert!(
            err.to_string()
                .starts_with(&format!("tokenizer {}: ", bad.display())),
            "{err}"
        );
        let err = PromptTokenizer::load(&dir.path().join("missing.json"))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("missing.json"), "{err}");
    }
}
