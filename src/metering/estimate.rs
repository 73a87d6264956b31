//! Token estimates for when the real count is not known yet (admission) or never arrives.
//!
//! The rule is deliberately simple and errs high for English: one token per four bytes of
//! UTF-8 text, rounded up. Byte-based rather than character-based so that scripts with many
//! tokens per character (CJK text is close to one token per character, three bytes each)
//! are not under-counted by much. Reservations are replaced by the model server's own figures
//! once the response is in, so this only decides admission and fills in when usage is missing.

/// Tokens added per chat message for role and framing, as common chat templates spend.
pub const PER_MESSAGE: u64 = 4;
/// Tokens that prime the assistant's reply in chat templates.
pub const PER_CONVERSATION: u64 = 3;

/// Estimated tokens of a text.
pub fn text_tokens(text: &str) -> u64 {
    bytes_tokens(text.len())
}

/// Estimated tokens of `n` bytes of text.
pub fn bytes_tokens(n: usize) -> u64 {
    (n as u64).div_ceil(4)
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
}
