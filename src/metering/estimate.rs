//! Token estimates for when the real count is not known yet (admission) or never arrives.
//!
//! The rule is deliberately simple and errs high for English: one token per four bytes of
//! UTF-8 text, rounded up. Byte-based rather than character-based so that scripts with many
//! tokens per character (CJK text is close to one token per character, three bytes each)
//! are not under-counted by much. Reservations are replaced by the model server's own figures
//! once the response is in, so this only decides admission and fills in when usage is missing.

use serde::Deserialize;

use super::json::lenient;

/// Tokens added per chat message for role and framing, as common chat templates spend.
pub const PER_MESSAGE: u64 = 4;
/// Tokens that prime the assistant's reply in chat templates.
pub const PER_CONVERSATION: u64 = 3;

/// Message content as the chat APIs write it: a string, or a list of parts of which only the
/// text ones count (an image part costs what the model server says, not its URL's length).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
}

impl Content {
    pub fn tokens(&self) -> u64 {
        let mut n = 0;
        self.each_text(|t| n += text_tokens(t));
        n
    }

    pub fn each_text(&self, mut f: impl FnMut(&str)) {
        match self {
            Content::Text(t) => f(t),
            Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).for_each(f),
        }
    }
}

/// Estimated tokens of a text.
pub fn text_tokens(text: &str) -> u64 {
    bytes_tokens(text.len())
}

/// Estimated tokens of `n` bytes of text.
pub fn bytes_tokens(n: usize) -> u64 {
    (n as u64).div_ceil(4)
}

/// Generated text seen in a response, for when its usage never comes.
///
/// The estimate is the larger of the byte rule and the number of pieces: a stream sends at
/// least one token per non-empty piece (servers flush per token or per few tokens), so a
/// stream of one-letter tokens is not under-counted by the byte rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generated {
    pieces: u64,
    bytes: u64,
}

impl Generated {
    /// Counts one piece of generated text (a stream delta, or a whole answer).
    pub fn add(&mut self, text: &str) {
        self.add_len(text.len());
    }

    pub fn add_len(&mut self, len: usize) {
        if len > 0 {
            self.pieces = self.pieces.saturating_add(1);
            self.bytes = self.bytes.saturating_add(len as u64);
        }
    }

    pub fn tokens(&self) -> u64 {
        self.pieces.max(self.bytes.div_ceil(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("a"), 1);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        assert_eq!(text_tokens("日本語"), 3);
    }

    #[test]
    fn generated_text_counts_pieces_or_bytes() {
        let mut g = Generated::default();
        assert_eq!(g.tokens(), 0);
        for piece in ["a", "", "b", "c"] {
            g.add(piece);
        }
        assert_eq!(g.tokens(), 3);
        g.add(&"x".repeat(40));
        assert_eq!(g.tokens(), 11);
    }
}
