//! The OpenAI shapes: chat completions, completions and embeddings, as OpenAI, vLLM, TGI,
//! llama.cpp server, SGLang and Ollama's `/v1` speak them.
//!
//! Request bodies give the admission estimate (prompt, output cap, number of choices);
//! response bodies and stream chunks give the usage the model server reported and the text
//! it generated. A stream reports usage only in a chunk of its own at the end, and only when
//! the request set `stream_options.include_usage` (see `include_usage` for how the filter
//! makes sure it does); servers that keep continuous usage repeat it in every chunk, and the
//! last one counts.

use serde::Deserialize;

use super::estimate::{Content, Generated, PER_CONVERSATION, PER_MESSAGE};
use super::json::{self, clamp, count, flag, lenient, object};
use super::{estimate, Reading, RequestEstimate, Usage};

/// Which OpenAI endpoint a request was for; it decides how the request is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

/// The fields of a request body that metering needs.
#[derive(Deserialize, Default)]
struct Request {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    messages: Option<Vec<Message>>,
    #[serde(default, deserialize_with = "lenient")]
    prompt: Option<Prompt>,
    #[serde(default, deserialize_with = "lenient")]
    input: Option<Prompt>,
    #[serde(default, deserialize_with = "count")]
    max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    max_completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    n: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    best_of: Option<u64>,
    #[serde(default, deserialize_with = "flag")]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<Content>,
}

/// A completions `prompt` or an embeddings `input`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u64>),
    TokenLists(Vec<Vec<u64>>),
}

/// Estimates a request. `None` if the body is not a JSON object.
pub fn estimate_request(
    endpoint: Endpoint,
    body: &[u8],
    default_max_tokens: u64,
) -> Option<RequestEstimate> {
    let req: Request = json::parse_object(body)?;

    let input_tokens = match endpoint {
        Endpoint::Chat => req.messages.as_deref().map_or(0, chat_tokens),
        Endpoint::Completions => req.prompt.as_ref().map_or(0, prompt_tokens),
        Endpoint::Embeddings => req.input.as_ref().map_or(0, prompt_tokens),
    };
    let choices = match endpoint {
        Endpoint::Embeddings => 0,
        // `best_of` candidates are all generated and billed, `n` of them returned.
        _ => req.n.unwrap_or(1).max(req.best_of.unwrap_or(1)).max(1),
    };
    let per_choice = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(default_max_tokens);

    Some(RequestEstimate {
        model: req.model,
        input_tokens,
        output_tokens: per_choice.saturating_mul(choices),
        stream: req.stream.unwrap_or(false),
    })
}

fn chat_tokens(messages: &[Message]) -> u64 {
    let text: u64 = messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(Content::tokens)
        .sum();
    text + PER_MESSAGE * messages.len() as u64 + PER_CONVERSATION
}

fn prompt_tokens(p: &Prompt) -> u64 {
    match p {
        Prompt::Text(t) => estimate::text_tokens(t),
        Prompt::Texts(ts) => ts.iter().map(|t| estimate::text_tokens(t)).sum(),
        Prompt::Tokens(ts) => ts.len() as u64,
        Prompt::TokenLists(ls) => ls.iter().map(|l| l.len() as u64).sum(),
    }
}

/// A response body or one stream chunk.
#[derive(Deserialize)]
struct Reply {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "object")]
    usage: Option<WireUsage>,
    #[serde(default, deserialize_with = "lenient")]
    choices: Option<Vec<Choice>>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default, deserialize_with = "object")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default, deserialize_with = "object")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default, deserialize_with = "lenient")]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default, deserialize_with = "lenient")]
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            input_tokens: clamp(u.prompt_tokens),
            output_tokens: clamp(u.completion_tokens),
            cached_input_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .map(clamp),
            cache_write_input_tokens: None,
            reasoning_tokens: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .map(clamp),
        }
    }
}

#[derive(Deserialize)]
struct Choice {
    /// A whole answer's message.
    #[serde(default, deserialize_with = "object")]
    message: Option<Said>,
    /// A stream chunk's piece of the message.
    #[serde(default, deserialize_with = "object")]
    delta: Option<Said>,
    /// Completions.
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
}

/// Generated text in a message or delta: the answer, the reasoning some servers return
/// apart (vLLM and SGLang `reasoning_content`, Ollama and OpenRouter `reasoning`), and the
/// arguments of tool calls.
#[derive(Deserialize)]
struct Said {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    reasoning_content: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    reasoning: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Deserialize)]
struct ToolCall {
    #[serde(default, deserialize_with = "object")]
    function: Option<Function>,
}

#[derive(Deserialize)]
struct Function {
    #[serde(default, deserialize_with = "lenient")]
    arguments: Option<String>,
}

impl Said {
    fn count(&self, generated: &mut Generated) {
        for text in [&self.content, &self.reasoning_content, &self.reasoning]
            .into_iter()
            .flatten()
        {
            generated.add(text);
        }
        for call in self.tool_calls.iter().flatten() {
            if let Some(args) = call.function.as_ref().and_then(|f| f.arguments.as_deref()) {
                generated.add(args);
            }
        }
    }
}

/// Folds one response body or stream chunk into what the response said so far.
fn fold(reading: &mut Reading, reply: Reply) {
    if reading.model.is_none() {
        reading.model = reply.model;
    }
    if let Some(u) = reply.usage {
        reading.usage = Some(u.into());
    }
    for choice in reply.choices.iter().flatten() {
        for said in [&choice.message, &choice.delta].into_iter().flatten() {
            said.count(&mut reading.generated);
        }
        if let Some(text) = &choice.text {
            reading.generated.add(text);
        }
    }
}

/// Reads a whole response body. `None` if it is not a JSON object.
pub fn read_body(json: &[u8]) -> Option<Reading> {
    let mut reading = Reading::default();
    fold(&mut reading, json::parse_reply(json)?);
    Some(reading)
}

/// Reads one stream event (`data: [DONE]` and anything unreadable change nothing).
pub fn read_event(reading: &mut Reading, data: &[u8]) {
    if let Some(reply) = json::parse_reply(data) {
        fold(reading, reply);
    }
}

/// Finds the usage in the last bytes of a body too large to keep whole: OpenAI-shaped
/// servers write `usage` last, at the top level.
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    let value = json::value_in_tail(tail, "usage")?;
    if !value.is_object() {
        return None;
    }
    WireUsage::deserialize(value).ok().map(Usage::from)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::metering::MAX_REPORTED_TOKENS;

    fn est(endpoint: Endpoint, body: &str) -> RequestEstimate {
        estimate_request(endpoint, body.as_bytes(), 100).unwrap()
    }

    #[test]
    fn chat_request() {
        let e = est(
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"system","content":"abcdefgh"},
                {"role":"user","content":[{"type":"text","text":"abcd"},{"type":"image_url","image_url":{"url":"data:..."}}]}],
                "max_tokens":50,"n":2,"stream":true}"#,
        );
        assert_eq!(e.model.as_deref(), Some("m"));
        assert_eq!(e.input_tokens, 2 + 1 + 2 * PER_MESSAGE + PER_CONVERSATION);
        assert_eq!(e.output_tokens, 100);
        assert!(e.stream);
    }

    #[test]
    fn max_completion_tokens_wins_and_default_applies() {
        let e = est(
            Endpoint::Chat,
            r#"{"messages":[],"max_tokens":5,"max_completion_tokens":7}"#,
        );
        assert_eq!(e.output_tokens, 7);
        let e = est(Endpoint::Chat, r#"{"messages":[]}"#);
        assert_eq!(e.output_tokens, 100);
        assert_eq!(e.model, None);
    }

    #[test]
    fn completions_prompt_shapes() {
        for (prompt, tokens) in [
            (r#""abcdefgh""#, 2),
            (r#"["abcd","ab"]"#, 2),
            ("[1,2,3]", 3),
            ("[[1,2],[3]]", 3),
        ] {
            let body = format!(r#"{{"prompt":{prompt}}}"#);
            assert_eq!(
                est(Endpoint::Completions, &body).input_tokens,
                tokens,
                "{prompt}"
            );
        }
        let e = est(
            Endpoint::Completions,
            r#"{"prompt":"x","max_tokens":10,"n":2,"best_of":3}"#,
        );
        assert_eq!(e.output_tokens, 30);
    }

    #[test]
    fn embeddings_reserve_no_output() {
        let e = est(
            Endpoint::Embeddings,
            r#"{"input":["abcd","abcd"],"model":"e"}"#,
        );
        assert_eq!((e.input_tokens, e.output_tokens), (2, 0));
    }

    #[test]
    fn odd_field_types_are_ignored() {
        let e = est(
            Endpoint::Chat,
            r#"{"model":7,"messages":"hi","max_tokens":"lots","n":-1,"stream":"perhaps"}"#,
        );
        assert_eq!(e.model, None);
        assert_eq!(e.input_tokens, 0);
        assert_eq!(e.output_tokens, 100);
        assert!(!e.stream);
        let e = est(
            Endpoint::Chat,
            r#"{"messages":[{"content":null},{"content":5},7]}"#,
        );
        assert_eq!(e.output_tokens, 100);
        assert!(est(Endpoint::Chat, r#"{"stream":"yes"}"#).stream);
    }

    #[test]
    fn not_json_is_none() {
        assert!(estimate_request(Endpoint::Chat, b"", 1).is_none());
        assert!(estimate_request(Endpoint::Chat, b"[1,2]", 1).is_none());
        assert!(estimate_request(Endpoint::Chat, b"\xff\xfe", 1).is_none());
        assert!(estimate_request(Endpoint::Chat, b"{\"messages\": [", 1).is_none());
    }

    #[test]
    fn counts_are_read_as_python_servers_read_them() {
        let e = est(
            Endpoint::Chat,
            r#"{"messages":[],"max_tokens":15000.0,"n":"2"}"#,
        );
        assert_eq!(e.output_tokens, 30_000);
        let e = est(
            Endpoint::Chat,
            r#"{"messages":[],"max_tokens":1,"max_tokens":15000}"#,
        );
        assert_eq!(e.output_tokens, 15_000);
        let e = est(
            Endpoint::Chat,
            r#"{"messages":[],"max_tokens":1.5,"n":-2.0}"#,
        );
        assert_eq!(e.output_tokens, 100);
        let e = est(Endpoint::Chat, r#"{"messages":[],"max_tokens":1e300}"#);
        assert_eq!(e.output_tokens, u64::MAX);
    }

    #[test]
    fn huge_n_saturates() {
        let e = est(
            Endpoint::Chat,
            r#"{"messages":[],"max_tokens":18446744073709551615,"n":3}"#,
        );
        assert_eq!(e.output_tokens, u64::MAX);
    }

    #[test]
    fn response_usage_with_details() {
        // A chat completion as OpenAI returns it (abridged to the fields that matter).
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-08-06",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,
              "prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},
              "completion_tokens_details":{"reasoning_tokens":4,"audio_tokens":0}}}"#;
        let r = read_body(body).unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 19,
                output_tokens: 10,
                cached_input_tokens: Some(3),
                cache_write_input_tokens: None,
                reasoning_tokens: Some(4),
            })
        );
        assert_eq!(r.generated.tokens(), 2);
    }

    #[test]
    fn generated_text_of_every_kind_counts() {
        let mut r = Reading::default();
        read_event(
            &mut r,
            br#"{"choices":[{"delta":{"reasoning_content":"hmm"}},{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#,
        );
        read_event(&mut r, br#"{"choices":[{"text":" once"}]}"#);
        read_event(&mut r, b"[DONE]");
        // Three pieces, 13 bytes.
        assert_eq!(r.generated.tokens(), 4);
        assert_eq!(r.usage, None);
    }

    #[test]
    fn null_usage_and_chunks() {
        let r = read_body(br#"{"model":"m","choices":[{"delta":{"content":"hi"}}],"usage":null}"#)
            .unwrap();
        assert_eq!(r.usage, None);
        let r = read_body(
            br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((5, 2))
        );
    }

    #[test]
    fn embeddings_usage_has_no_completion_tokens() {
        let r = read_body(br#"{"object":"list","data":[],"model":"e","usage":{"prompt_tokens":8,"total_tokens":8}}"#).unwrap();
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((8, 0))
        );
    }

    #[test]
    fn absurd_usage_is_capped() {
        let r = read_body(br#"{"usage":{"prompt_tokens":9007199254740993,"completion_tokens":18446744073709551615}}"#).unwrap();
        let u = r.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens),
            (MAX_REPORTED_TOKENS, MAX_REPORTED_TOKENS)
        );
    }

    #[test]
    fn usage_that_is_not_an_object_is_not_believed() {
        assert_eq!(
            read_body(br#"{"choices":[],"usage":[1,0]}"#).unwrap().usage,
            None
        );
        assert_eq!(read_body(br#"{"usage":"12"}"#).unwrap().usage, None);
        let r = read_body(br#"{"usage":{"prompt_tokens":2,"prompt_tokens_details":[5]}}"#).unwrap();
        assert_eq!(r.usage.unwrap().cached_input_tokens, None);
        assert!(read_body(br#"[{"usage":{"prompt_tokens":1}}]"#).is_none());
    }

    #[test]
    fn usage_is_found_in_the_tail_of_a_large_body() {
        let tail = br#"0.1,0.2]}],"model":"e","usage":{"prompt_tokens":4096,"total_tokens":4096}}"#;
        assert_eq!(usage_in_tail(tail).map(|u| u.input_tokens), Some(4096));
        // Generated text that mentions usage is escaped, and is not taken for the report.
        let tail = br#"{"content":"\"usage\":{\"prompt_tokens\":1}"}}],"usage":{"prompt_tokens":7,"completion_tokens":9}}"#;
        assert_eq!(
            usage_in_tail(tail).map(|u| (u.input_tokens, u.output_tokens)),
            Some((7, 9))
        );
        let tail = br#"{"content":"\"usage\":{\"prompt_tokens\":1}"}}]}"#;
        assert_eq!(usage_in_tail(tail), None);
        assert_eq!(usage_in_tail(br#""usage": [1, 2]}"#), None);
        assert_eq!(usage_in_tail(br#"sage":{"prompt_tokens":1}}"#), None);
        assert_eq!(usage_in_tail(b""), None);
        assert_eq!(usage_in_tail(br#""usage""#), None);
        assert_eq!(usage_in_tail(br#""usage":{"prompt_tokens":3,"#), None);
    }

    #[test]
    fn malformed_usage_is_treated_as_absent() {
        let r = read_body(br#"{"usage":{"prompt_tokens":"many"}}"#).unwrap();
        assert_eq!(r.usage, None);
        let r = read_body(br#"{"usage":{"prompt_tokens":-3,"completion_tokens":1}}"#).unwrap();
        assert_eq!(r.usage, None);
        assert!(read_body(b"not json").is_none());
        assert!(read_body(b"{\"usage\":{\"prompt_tokens\":1").is_none());
    }
}
