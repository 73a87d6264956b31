//! The OpenAI shapes: chat completions, completions and embeddings, as OpenAI, vLLM, TGI,
//! llama.cpp server, SGLang and Ollama's `/v1` speak them; vLLM's `/invocations`, which takes
//! any of the three; and llama.cpp server's own completion format (`/completion`, `/infill`,
//! and `/completions` on llama.cpp), whose answer carries `tokens_evaluated` (the prompt,
//! cached tokens included) and `tokens_predicted` in its last object (`"stop": true`), and
//! the same counts so far in every streamed one.
//!
//! Request bodies give the admission estimate (prompt, output cap, number of choices);
//! response bodies and stream chunks give the usage the model server reported and the text
//! it generated. A stream reports usage only in a chunk of its own at the end, and only when
//! the request set `stream_options.include_usage` (see `include_usage` for how the filter
//! makes sure it does); servers that keep continuous usage repeat it in every chunk, and the
//! last one counts.

use serde::Deserialize;
use serde_json::Value;

use super::estimate::{Content, Generated, PER_CONVERSATION, PER_MESSAGE};
use super::json::{self, cap, clamp, count, flag, lenient, object};
use super::{estimate, Reading, RequestEstimate, Usage};

/// Which OpenAI endpoint a request was for; it decides how the request is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// `/invocations`: chat if the request has `messages`, else completions if it has a
    /// `prompt`, else embeddings if it has an `input`.
    Any,
    /// llama.cpp server's own completions: `n_predict` caps the output before `max_tokens`.
    LlamaCpp,
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
    #[serde(default, deserialize_with = "cap")]
    max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "cap")]
    max_completion_tokens: Option<u64>,
    /// llama.cpp's own cap (`-1`: none).
    #[serde(default, deserialize_with = "cap")]
    n_predict: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    n: Option<u64>,
    /// llama.cpp: completions generated per prompt.
    #[serde(default, deserialize_with = "count")]
    n_cmpl: Option<u64>,
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

/// Estimates a request body (a JSON object). `None` if it is not an object.
pub fn estimate_request(
    endpoint: Endpoint,
    body: Value,
    default_max_tokens: u64,
) -> Option<RequestEstimate> {
    // serde would also fill a struct from a list, by position.
    if !body.is_object() {
        return None;
    }
    let req = Request::deserialize(body).ok()?;
    let endpoint = match endpoint {
        Endpoint::Any if req.messages.is_some() => Endpoint::Chat,
        Endpoint::Any if req.prompt.is_some() => Endpoint::Completions,
        Endpoint::Any if req.input.is_some() => Endpoint::Embeddings,
        Endpoint::Any => Endpoint::Chat,
        e => e,
    };

    let input_tokens = match endpoint {
        Endpoint::Chat => req.messages.as_deref().map_or(0, chat_tokens),
        Endpoint::Completions | Endpoint::LlamaCpp => req.prompt.as_ref().map_or(0, prompt_tokens),
        Endpoint::Embeddings | Endpoint::Any => req.input.as_ref().map_or(0, prompt_tokens),
    };
    // A list of prompts is answered once per prompt.
    let prompts = match endpoint {
        Endpoint::Completions | Endpoint::LlamaCpp => req.prompt.as_ref().map_or(1, Prompt::count),
        _ => 1,
    };
    let choices = match endpoint {
        Endpoint::Embeddings | Endpoint::Any => 0,
        // `best_of` candidates are all generated and billed, `n` of them returned.
        _ => [req.n, req.best_of, req.n_cmpl]
            .into_iter()
            .flatten()
            .fold(1, u64::max),
    };
    // Zero is no cap (the servers read `max_completion_tokens or max_tokens`), so the next
    // field or the default applies.
    let per_choice = match endpoint {
        Endpoint::LlamaCpp => req.n_predict.or(req.max_tokens),
        _ => req.max_completion_tokens.or(req.max_tokens),
    }
    .unwrap_or(default_max_tokens);

    Some(RequestEstimate {
        model: req.model,
        input_tokens,
        output_tokens: per_choice.saturating_mul(choices).saturating_mul(prompts),
        stream: req.stream.unwrap_or(false),
        billable: true,
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

impl Prompt {
    /// How many prompts: each is answered on its own.
    fn count(&self) -> u64 {
        match self {
            Prompt::Texts(ts) => ts.len().max(1) as u64,
            Prompt::TokenLists(ls) => ls.len().max(1) as u64,
            Prompt::Text(_) | Prompt::Tokens(_) => 1,
        }
    }
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
    /// llama.cpp's own format: the text (a piece of it in a stream).
    #[serde(default, deserialize_with = "lenient")]
    content: Option<String>,
    /// llama.cpp: `true` in the last object, the one whose counts are final.
    #[serde(default, deserialize_with = "flag")]
    stop: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    tokens_evaluated: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    tokens_predicted: Option<u64>,
    #[serde(default, deserialize_with = "object")]
    timings: Option<Timings>,
}

/// llama.cpp's `timings`: `cache_n` prompt tokens were reused from its cache.
#[derive(Deserialize)]
struct Timings {
    #[serde(default, deserialize_with = "lenient")]
    cache_n: Option<u64>,
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
    } else if let Some(input) = reply.tokens_evaluated {
        let cached = reply
            .timings
            .and_then(|t| t.cache_n)
            .filter(|&c| c <= input);
        let input = Usage {
            input_tokens: clamp(input),
            cached_input_tokens: cached.map(clamp),
            ..Usage::default()
        };
        match reply.tokens_predicted.filter(|_| reply.stop == Some(true)) {
            // One last object per prompt: several prompts add up.
            Some(output) => {
                let so_far = reading.usage.unwrap_or_default();
                reading.usage = Some(Usage {
                    input_tokens: clamp(so_far.input_tokens.saturating_add(input.input_tokens)),
                    output_tokens: clamp(so_far.output_tokens.saturating_add(output)),
                    cached_input_tokens: match (
                        so_far.cached_input_tokens,
                        input.cached_input_tokens,
                    ) {
                        (None, None) => None,
                        (a, b) => Some(clamp(a.unwrap_or(0).saturating_add(b.unwrap_or(0)))),
                    },
                    ..Usage::default()
                });
            }
            None if reading.usage.is_none() => reading.input = Some(input),
            None => {}
        }
    }
    if let Some(text) = &reply.content {
        reading.generated.add(text);
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

/// Reads a whole response body that may also be a list of answers (llama.cpp's, to several
/// prompts). `None` if it is neither an object nor a list of them.
pub fn read_bodies(json: &[u8]) -> Option<Reading> {
    let mut reading = Reading::default();
    for reply in json::parse_replies(json)? {
        fold(&mut reading, reply);
    }
    Some(reading)
}

/// Reads one stream event (`data: [DONE]` and anything unreadable change nothing).
pub fn read_event(reading: &mut Reading, data: &[u8]) {
    if let Some(reply) = json::parse_reply(data) {
        fold(reading, reply);
    }
}

/// Finds the usage in the last bytes of a body too large to keep whole: OpenAI-shaped
/// servers write `usage` last, at the top level; llama.cpp its counts among its last keys
/// (they are sorted).
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    let Some(value) = json::value_in_tail(tail, "usage") else {
        let count = |key| json::value_in_tail(tail, key)?.as_u64();
        if json::value_in_tail(tail, "stop") != Some(Value::Bool(true)) {
            return None;
        }
        return Some(Usage {
            input_tokens: clamp(count("tokens_evaluated")?),
            output_tokens: clamp(count("tokens_predicted")?),
            ..Usage::default()
        });
    };
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
        estimate_request(endpoint, serde_json::from_str(body).unwrap(), 100).unwrap()
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
    fn a_zero_cap_is_no_cap() {
        // `max_completion_tokens or max_tokens`: a zero falls through to the next field.
        for (body, want) in [
            (r#"{"max_completion_tokens":0,"max_tokens":5000}"#, 5000),
            (r#"{"max_completion_tokens":"0","max_tokens":5000}"#, 5000),
            (r#"{"max_completion_tokens":0}"#, 100),
            (r#"{"max_completion_tokens":0,"max_tokens":0}"#, 100),
            (r#"{"max_tokens":0,"n":2}"#, 200),
        ] {
            assert_eq!(est(Endpoint::Chat, body).output_tokens, want, "{body}");
        }
        let e = est(Endpoint::Completions, r#"{"prompt":"x","max_tokens":0}"#);
        assert_eq!(e.output_tokens, 100);
        // llama.cpp: `n_predict` first; `-1` (no limit) and `0` are no cap.
        for (body, want) in [
            (r#"{"prompt":"x","n_predict":64,"max_tokens":8}"#, 64),
            (r#"{"prompt":"x","n_predict":-1,"max_tokens":8}"#, 8),
            (r#"{"prompt":"x","n_predict":0}"#, 100),
            (r#"{"prompt":"x","n_predict":-1}"#, 100),
        ] {
            assert_eq!(est(Endpoint::LlamaCpp, body).output_tokens, want, "{body}");
        }
    }

    #[test]
    fn a_list_of_prompts_is_answered_once_each() {
        let e = est(
            Endpoint::Completions,
            r#"{"prompt":["abcd","abcd","abcd"],"max_tokens":10,"n":2}"#,
        );
        assert_eq!((e.input_tokens, e.output_tokens), (3, 60));
        let e = est(
            Endpoint::LlamaCpp,
            r#"{"prompt":[[1,2],[3]],"n_predict":10,"n_cmpl":3}"#,
        );
        assert_eq!((e.input_tokens, e.output_tokens), (3, 60));
    }

    #[test]
    fn invocations_are_told_apart_by_their_fields() {
        let chat = est(
            Endpoint::Any,
            r#"{"messages":[{"role":"user","content":"abcd"}],"max_tokens":9}"#,
        );
        assert_eq!(
            (chat.input_tokens, chat.output_tokens),
            (1 + PER_MESSAGE + PER_CONVERSATION, 9)
        );
        let completion = est(
            Endpoint::Any,
            r#"{"prompt":"abcdefgh","max_tokens":9,"n":2}"#,
        );
        assert_eq!((completion.input_tokens, completion.output_tokens), (2, 18));
        let embedding = est(Endpoint::Any, r#"{"input":["abcd","abcd"]}"#);
        assert_eq!((embedding.input_tokens, embedding.output_tokens), (2, 0));
    }

    #[test]
    fn llamacpp_own_format() {
        // `/completion` as llama.cpp answers it (keys sorted, as nlohmann::json writes them).
        let body = br#"{"content":" Paris.","generation_settings":{"n_predict":-1,"stop":[]},"has_new_line":false,"id_slot":0,"index":0,"model":"gpt-3.5-turbo","prompt":"<s> The capital of France is","stop":true,"stop_type":"eos","stopping_word":"","timings":{"cache_n":3,"predicted_n":3,"prompt_n":4},"tokens":[],"tokens_cached":9,"tokens_evaluated":7,"tokens_predicted":3,"truncated":false}"#;
        let r = read_bodies(body).unwrap();
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 7,
                output_tokens: 3,
                cached_input_tokens: Some(3),
                ..Usage::default()
            })
        );
        assert_eq!(r.model.as_deref(), Some("gpt-3.5-turbo"));
        assert_eq!(r.generated.tokens(), 2);
        // Several prompts: a list of answers, whose counts add up.
        let list = format!(
            "[{},{}]",
            std::str::from_utf8(body).unwrap(),
            std::str::from_utf8(body).unwrap()
        );
        let r = read_bodies(list.as_bytes()).unwrap();
        assert_eq!(
            r.usage
                .map(|u| (u.input_tokens, u.output_tokens, u.cached_input_tokens)),
            Some((14, 6, Some(6)))
        );
        assert!(read_body(list.as_bytes()).is_none());
        assert_eq!(
            usage_in_tail(&body[body.len() - 200..]).map(|u| u.total()),
            Some(10)
        );

        // A stream: each piece carries the counts so far; the last one (`stop`) is final.
        let mut r = Reading::default();
        read_event(&mut r, br#"{"content":" Paris","id_slot":0,"index":0,"stop":false,"tokens":[],"tokens_evaluated":7,"tokens_predicted":1}"#);
        assert_eq!(r.usage, None);
        assert_eq!(r.input.map(|u| u.input_tokens), Some(7));
        read_event(&mut r, br#"{"content":".","id_slot":0,"index":0,"stop":false,"tokens":[],"tokens_evaluated":7,"tokens_predicted":2}"#);
        read_event(&mut r, br#"{"content":"","id_slot":0,"index":0,"model":"m","stop":true,"stop_type":"eos","timings":{"cache_n":0,"predicted_n":3,"prompt_n":7},"tokens":[],"tokens_evaluated":7,"tokens_predicted":3}"#);
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((7, 3))
        );
        assert_eq!(r.generated.tokens(), 2);
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
    fn not_an_object_is_none() {
        for v in [
            serde_json::json!([1, 2]),
            serde_json::json!("x"),
            Value::Null,
        ] {
            assert!(estimate_request(Endpoint::Chat, v, 1).is_none());
        }
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
