//! Request bodies of the two generation endpoints, and their checks.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::error::Category;

use crate::error::ApiError;
use crate::plan::{Choice, Plan};
use crate::tokenize::{chat_prompt, completion_prompt};

/// The model named in answers when the request names none.
pub const DEFAULT_MODEL: &str = "demo-model";

/// OpenAI's upper bound for `n`; it also bounds the work one request can ask for.
const MAX_N: u32 = 128;

/// OpenAI's default `max_tokens` for the legacy completions API.
const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions`. Fields this server does not use are ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    /// Absent or null for an assistant turn that only called tools.
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// A content part; only `{"type": "text", "text": ...}` parts count.
#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl Content {
    fn texts(&self) -> Vec<&str> {
        match self {
            Self::Text(text) => vec![text.as_str()],
            Self::Parts(parts) => parts
                .iter()
                .filter(|part| part.kind == "text")
                .filter_map(|part| part.text.as_deref())
                .collect(),
        }
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub max_tokens: Option<u32>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// Parses a body, telling broken JSON apart from JSON of the wrong shape.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        Category::Data => ApiError::bad_request("invalid_request", err.to_string()),
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {err}"),
        ),
    })
}

fn choice_count(n: Option<u32>) -> Result<u32, ApiError> {
    match n.unwrap_or(1) {
        n @ 1..=MAX_N => Ok(n),
        n => Err(ApiError::bad_request(
            "invalid_n",
            format!("n must be between 1 and {MAX_N}, got {n}"),
        )),
    }
}

fn include_usage(stream: bool, options: Option<&StreamOptions>) -> bool {
    stream && options.and_then(|o| o.include_usage).unwrap_or(false)
}

impl ChatRequest {
    pub fn into_plan(self) -> Result<Plan, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_messages",
                "messages must hold at least one message",
            ));
        }
        let n = choice_count(self.n)?;

        let texts: Vec<Vec<&str>> = self
            .messages
            .iter()
            .map(|m| m.content.as_ref().map(Content::texts).unwrap_or_default())
            .collect();
        let stats = chat_prompt(&texts);

        // With both limits given, the tighter one holds.
        let cap = match (self.max_tokens, self.max_completion_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };

        let stream = self.stream.unwrap_or(false);
        Ok(Plan {
            model: self.model.unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            stream,
            include_usage: include_usage(stream, self.stream_options.as_ref()),
            prompt_tokens: stats.tokens,
            choices: (0..n).map(|index| Choice::new(stats, index, cap)).collect(),
        })
    }
}

impl CompletionRequest {
    pub fn into_plan(self) -> Result<Plan, ApiError> {
        let prompts = match &self.prompt {
            Prompt::One(prompt) => vec![prompt.as_str()],
            Prompt::Many(prompts) => prompts.iter().map(String::as_str).collect(),
        };
        if prompts.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_prompt",
                "prompt must hold at least one string",
            ));
        }
        let n = choice_count(self.n)?;
        if prompts.len() as u64 * u64::from(n) > u64::from(MAX_N) {
            return Err(ApiError::bad_request(
                "invalid_n",
                format!("prompts times n must be at most {MAX_N}"),
            ));
        }
        let cap = self.max_tokens.unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS);

        // As in OpenAI, the choices of prompt `p` have indices `p * n .. (p + 1) * n`.
        let mut prompt_tokens = 0;
        let mut choices = Vec::new();
        let mut index = 0;
        for prompt in prompts {
            let stats = completion_prompt(prompt);
            prompt_tokens += stats.tokens;
            for _ in 0..n {
                choices.push(Choice::new(stats, index, Some(cap)));
                index += 1;
            }
        }

        let stream = self.stream.unwrap_or(false);
        Ok(Plan {
            model: self.model.unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            stream,
            include_usage: include_usage(stream, self.stream_options.as_ref()),
            prompt_tokens,
            choices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Plan, ApiError> {
        parse::<ChatRequest>(body.as_bytes())?.into_plan()
    }

    fn completion(body: &str) -> Result<Plan, ApiError> {
        parse::<CompletionRequest>(body.as_bytes())?.into_plan()
    }

    #[test]
    fn chat_counts_string_and_text_parts_only() {
        let plan = chat(
            r#"{"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:,x"}}
                ]},
                {"role": "assistant", "content": null}
            ]}"#,
        )
        .unwrap();
        assert_eq!(plan.model, DEFAULT_MODEL);
        assert_eq!(plan.prompt_tokens, (2 + 1) + (3 + 1) + 3 * 3 + 1);
        assert_eq!(plan.choices.len(), 1);
        assert!(!plan.stream);
        assert!(!plan.include_usage);
    }

    #[test]
    fn chat_takes_the_tighter_cap() {
        let plan = chat(
            r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4, "max_completion_tokens": 2}"#,
        )
        .unwrap();
        assert_eq!(plan.model, "m");
        assert_eq!(plan.completion_tokens(), 2);
    }

    #[test]
    fn include_usage_needs_stream() {
        let body = r#"{"messages": [{"content": "x"}], "stream_options": {"include_usage": true}}"#;
        assert!(!chat(body).unwrap().include_usage);
        let body = r#"{"messages": [{"content": "x"}], "stream": true,
                       "stream_options": {"include_usage": true}}"#;
        assert!(chat(body).unwrap().include_usage);
    }

    #[test]
    fn completions_default_cap_is_16() {
        let long = "word ".repeat(50);
        let plan = completion(&format!(r#"{{"prompt": "{long}"}}"#)).unwrap();
        assert!(plan.completion_tokens() <= 16);
    }

    #[test]
    fn completions_list_prompt_numbers_choices_per_prompt() {
        let plan =
            completion(r#"{"prompt": ["one two", "three"], "n": 2, "max_tokens": 50}"#).unwrap();
        assert_eq!(plan.prompt_tokens, (2 + 1) + (1 + 1));
        let indices: Vec<u32> = plan.choices.iter().map(|c| c.index).collect();
        assert_eq!(indices, [0, 1, 2, 3]);
    }

    #[test]
    fn rejects_bad_input_with_400() {
        for body in [
            "{",
            "[]",
            r#"{"messages": "hi"}"#,
            r#"{"messages": []}"#,
            r#"{"messages": [{"content": 5}]}"#,
            r#"{"messages": [{"content": "x"}], "n": 0}"#,
            r#"{"messages": [{"content": "x"}], "n": 129}"#,
            r#"{"messages": [{"content": "x"}], "max_tokens": -1}"#,
            r#"{"messages": [{"content": "x"}], "stream": "yes"}"#,
        ] {
            let err = chat(body).unwrap_err();
            assert_eq!(err.status(), 400, "{body}");
        }
        for body in [r#"{"prompt": []}"#, r#"{"prompt": [1, 2]}"#, r#"{}"#] {
            assert_eq!(completion(body).unwrap_err().status(), 400, "{body}");
        }
    }
}
