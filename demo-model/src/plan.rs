//! What the model answers, worked out from the request before anything is sent.

use serde::Serialize;

use crate::tokenize::{natural_length, reply_words, PromptStats};

/// OpenAI's usage object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The reply reached its natural length.
    Stop,
    /// `max_tokens` (or `max_completion_tokens`) cut the reply short.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub index: u32,
    pub words: Vec<&'static str>,
    pub finish_reason: FinishReason,
}

impl Choice {
    /// One reply of `natural_length` words for this prompt, cut at `cap` if that is shorter.
    pub fn new(stats: PromptStats, index: u32, cap: Option<u32>) -> Self {
        let natural = natural_length(stats, index);
        let (len, finish_reason) = match cap {
            Some(cap) if cap < natural => (cap, FinishReason::Length),
            _ => (natural, FinishReason::Stop),
        };
        Self {
            index,
            words: reply_words(len, index),
            finish_reason,
        }
    }

    pub fn text(&self) -> String {
        self.words.join(" ")
    }
}

/// The whole answer: the streamed and the plain form are both rendered from it,
/// so they always report the same usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub prompt_tokens: u64,
    pub choices: Vec<Choice>,
}

impl Plan {
    pub fn completion_tokens(&self) -> u64 {
        self.choices.iter().map(|c| c.words.len() as u64).sum()
    }

    pub fn usage(&self) -> Usage {
        let completion_tokens = self.completion_tokens();
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_shortens_and_sets_length() {
        let stats = PromptStats {
            tokens: 10,
            chars: 30,
        };
        let natural = natural_length(stats, 0);

        let free = Choice::new(stats, 0, None);
        assert_eq!(free.words.len() as u32, natural);
        assert_eq!(free.finish_reason, FinishReason::Stop);

        let exact = Choice::new(stats, 0, Some(natural));
        assert_eq!(exact.finish_reason, FinishReason::Stop);

        let capped = Choice::new(stats, 0, Some(3));
        assert_eq!(capped.words.len(), 3);
        assert_eq!(capped.finish_reason, FinishReason::Length);
    }

    #[test]
    fn usage_sums_the_choices() {
        let stats = PromptStats {
            tokens: 7,
            chars: 9,
        };
        let plan = Plan {
            model: "m".into(),
            stream: false,
            include_usage: false,
            prompt_tokens: 7,
            choices: (0..3).map(|i| Choice::new(stats, i, None)).collect(),
        };
        let words: u64 = (0..3).map(|i| u64::from(natural_length(stats, i))).sum();
        assert_eq!(
            plan.usage(),
            Usage {
                prompt_tokens: 7,
                completion_tokens: words,
                total_tokens: 7 + words,
            }
        );
    }
}
