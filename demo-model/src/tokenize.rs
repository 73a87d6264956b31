//! The toy tokenizer and the deterministic reply length (the rule is in the crate doc).

/// The reply cycles through these words. None holds punctuation, so the toy tokenizer
/// counts a reply of `k` words as exactly `k` tokens.
const REPLY_WORDS: [&str; 16] = [
    "hello", "from", "the", "demo", "model", "every", "word", "you", "read", "here", "is", "one",
    "token", "the", "gateway", "meters",
];

/// What the reply length is derived from: the toy token count and the character count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptStats {
    pub tokens: u64,
    pub chars: u64,
}

/// Toy token count of one text: whitespace-separated words plus ASCII punctuation characters.
pub fn count_tokens(text: &str) -> u64 {
    let words = text.split_whitespace().count();
    let punctuation = text.chars().filter(char::is_ascii_punctuation).count();
    (words + punctuation) as u64
}

/// Stats of a chat prompt, given the text parts of each message:
/// the parts' tokens, plus 3 per message, plus 1.
pub fn chat_prompt(messages: &[Vec<&str>]) -> PromptStats {
    let mut stats = PromptStats {
        tokens: 1,
        chars: 0,
    };
    for parts in messages {
        stats.tokens += 3;
        for text in parts {
            stats.tokens += count_tokens(text);
            stats.chars += text.chars().count() as u64;
        }
    }
    stats
}

/// Stats of one completions prompt: its tokens plus 1.
pub fn completion_prompt(prompt: &str) -> PromptStats {
    PromptStats {
        tokens: count_tokens(prompt) + 1,
        chars: prompt.chars().count() as u64,
    }
}

/// Words the model would write for choice `index` if nothing capped it: 5 to 44.
pub fn natural_length(stats: PromptStats, index: u32) -> u32 {
    let spread = (stats.tokens * 7 + stats.chars + 11 * u64::from(index)) % 40;

    // `spread` is below 40, so the conversion cannot fail.
    5 + u32::try_from(spread).unwrap_or(0)
}

/// The reply of choice `index`: `len` words, each choice starting at a different word.
pub fn reply_words(len: u32, index: u32) -> Vec<&'static str> {
    let start = index as usize * 3;
    REPLY_WORDS
        .iter()
        .copied()
        .cycle()
        .skip(start % REPLY_WORDS.len())
        .take(len as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_and_punctuation() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("   \n\t "), 0);
        assert_eq!(count_tokens("hello world"), 2);
        assert_eq!(count_tokens("Hello, world!"), 4);
        assert_eq!(count_tokens("  spaced\tout\nwords  "), 3);

        // A word made only of punctuation counts as a word and as its characters.
        assert_eq!(count_tokens("wait ..."), 5);

        // Non-ASCII punctuation is part of a word, not a token of its own.
        assert_eq!(count_tokens("¿qué tal?"), 3);
    }

    #[test]
    fn chat_adds_three_per_message_and_one() {
        let stats = chat_prompt(&[vec!["You are terse."], vec!["Hi!"]]);
        assert_eq!(stats.tokens, (3 + 1) + (1 + 1) + 3 * 2 + 1);
        assert_eq!(stats.chars, 14 + 3);

        assert_eq!(chat_prompt(&[]).tokens, 1);
        assert_eq!(chat_prompt(&[vec![]]).tokens, 4);

        // Parts are counted one by one: joining them would merge the edge words.
        assert_eq!(chat_prompt(&[vec!["a", "b"]]).tokens, 2 + 3 + 1);
    }

    #[test]
    fn completion_prompt_adds_one() {
        let stats = completion_prompt("Say this is a test.");
        assert_eq!(stats.tokens, 5 + 1 + 1);
        assert_eq!(stats.chars, 19);
    }

    #[test]
    fn natural_length_follows_the_rule() {
        let stats = PromptStats {
            tokens: 12,
            chars: 50,
        };
        assert_eq!(natural_length(stats, 0), 5 + (12 * 7 + 50) % 40);
        assert_eq!(natural_length(stats, 2), 5 + (12 * 7 + 50 + 22) % 40);
        for tokens in 0..200 {
            let len = natural_length(PromptStats { tokens, chars: 3 }, 1);
            assert!((5..=44).contains(&len));
        }
    }

    #[test]
    fn reply_has_the_asked_number_of_words_and_tokens() {
        for len in [0, 1, 5, 16, 17, 44] {
            for index in 0..4 {
                let text = reply_words(len, index).join(" ");
                assert_eq!(text.split_whitespace().count(), len as usize);
                assert_eq!(count_tokens(&text), u64::from(len));
            }
        }
        assert_ne!(reply_words(5, 0), reply_words(5, 1));
    }
}
