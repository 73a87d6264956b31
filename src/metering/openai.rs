//! The OpenAI shapes: chat completions, completions and embeddings.
//!
//! Request bodies give the admission estimate (prompt, output cap, number of choices);
//! response bodies and stream chunks give the usage the model server reported. Fields are
//! read leniently: a field of an unexpected type is treated as absent, so a request the model
//! server will reject anyway still gets an estimate rather than an error here.

use serde::Deserialize;

use super::estimate::{self, PER_CONVERSATION, PER_MESSAGE};
use super::{RequestEstimate, Usage};

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
    #[serde(default, deserialize_with = "lenient")]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
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

/// Deserializes a value, or `None` if it is null or of another shape.
fn lenient<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = serde_json::Value::deserialize(de)?;
    Ok(T::deserialize(value).ok())
}

/// A count as Python servers read it (pydantic in lax mode): an integer, a float with no
/// fraction, or a string holding an integer. Anything else is absent.
fn count<'de, D>(de: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde_json::Value;
    Ok(match Value::deserialize(de)? {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            // Saturating cast: a float past u64 reads as the largest count.
            (f >= 0.0 && f.fract() == 0.0).then_some(f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// Like `lenient`, for a struct that must come from a JSON object: serde would also fill a
/// struct from an array by position, and `"usage": [1, 0]` is not a usage report.
fn object<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = serde_json::Value::deserialize(de)?;
    if !value.is_object() {
        return Ok(None);
    }
    Ok(T::deserialize(value).ok())
}

/// Which OpenAI endpoint a request was for; it decides how the request is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

/// Estimates a request. `None` if the body is not a JSON object.
pub fn estimate_request(
    endpoint: Endpoint,
    body: &[u8],
    default_max_tokens: u64,
) -> Option<RequestEstimate> {
    if !starts_object(body) {
        return None;
    }
    // Through a map first, so that a key given twice counts once, with its last value, as
    // in the Python servers this estimate stands in front of (serde's derive would refuse).
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let req = Request::deserialize(value).ok()?;

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

/// serde would also read a struct from a JSON array; only an object is a request or a
/// response.
fn starts_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Finds the usage object in the last bytes of a JSON body too large to keep whole.
///
/// OpenAI-shaped servers put `usage` last, at the top level. The last `"usage":` whose
/// quote is not escaped (inside generated text it would be written `\"usage\"`) and that
/// is followed by an object is taken as the report.
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = tail.len();
    while let Some(at) = tail.get(..end)?.windows(KEY.len()).rposition(|w| w == KEY) {
        end = at;
        if at > 0 && tail.get(at - 1) == Some(&b'\\') {
            continue;
        }
        let rest = tail.get(at + KEY.len()..)?;
        let rest = rest.get(rest.iter().position(|b| !b.is_ascii_whitespace())?..)?;
        let Some(value) = rest.strip_prefix(b":") else {
            continue;
        };
        let mut values =
            serde_json::Deserializer::from_slice(value).into_iter::<serde_json::Value>();
        if let Some(Ok(v)) = values.next() {
            if v.is_object() {
                if let Ok(u) = WireUsage::deserialize(v) {
                    return Some(u.into());
                }
            }
        }
    }
    None
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
            reasoning_tokens: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .map(clamp),
        }
    }
}

/// The largest token count a record carries (2^53, exact in every JSON reader). A server
/// that reports more is broken; its figure is capped rather than let a record be refused.
pub const MAX_REPORTED_TOKENS: u64 = 1 << 53;

fn clamp(n: u64) -> u64 {
    n.min(MAX_REPORTED_TOKENS)
}

fn chat_tokens(messages: &[Message]) -> u64 {
    let text: u64 = messages
        .iter()
        .map(|m| match &m.content {
            Some(Content::Text(t)) => estimate::text_tokens(t),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .map(estimate::text_tokens)
                .sum(),
            None => 0,
        })
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

/// The parts of a response body or stream chunk that carry usage.
#[derive(Deserialize)]
struct UsageCarrier {
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

#[derive(Deserialize)]
struct Choice {
    #[serde(default, deserialize_with = "object")]
    message: Option<ChoiceMessage>,
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<String>,
}

/// What one JSON document (a whole body or one stream chunk) says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub model: Option<String>,
    pub usage: Option<Usage>,
    /// Estimated output tokens from the generated text, for when `usage` is missing.
    pub text_tokens: u64,
}

/// Reads a response body or chunk. `None` if it is not a JSON object.
pub fn read_response(json: &[u8]) -> Option<Reading> {
    if !starts_object(json) {
        return None;
    }
    let c: UsageCarrier = serde_json::from_slice(json).ok()?;
    let text_tokens = c.choices.as_deref().map_or(0, |choices| {
        choices
            .iter()
            .map(|ch| {
                let text = ch
                    .message
                    .as_ref()
                    .and_then(|m| m.content.as_deref())
                    .or(ch.text.as_deref())
                    .unwrap_or("");
                estimate::text_tokens(text)
            })
            .sum()
    });
    Some(Reading {
        model: c.model,
        usage: c.usage.map(Usage::from),
        text_tokens,
    })
}

#[cfg(test)]
mod tests {

    use super::*;

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
        assert_eq!(
            est(Endpoint::Completions, r#"{"prompt":"abcdefgh"}"#).input_tokens,
            2
        );
        assert_eq!(
            est(Endpoint::Completions, r#"{"prompt":["abcd","ab"]}"#).input_tokens,
            2
        );
        assert_eq!(
            est(Endpoint::Completions, r#"{"prompt":[1,2,3]}"#).input_tokens,
            3
        );
        assert_eq!(
            est(Endpoint::Completions, r#"{"prompt":[[1,2],[3]]}"#).input_tokens,
            3
        );
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
            r#"{"model":7,"messages":"hi","max_tokens":"lots","n":-1,"stream":"yes"}"#,
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
        let r = read_response(body).unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 19,
                output_tokens: 10,
                cached_input_tokens: Some(3),
                reasoning_tokens: Some(4),
            })
        );
        assert_eq!(r.text_tokens, 2);
    }

    #[test]
    fn null_usage_and_chunks() {
        let r =
            read_response(br#"{"model":"m","choices":[{"delta":{"content":"hi"}}],"usage":null}"#)
                .unwrap();
        assert_eq!(r.usage, None);
        let r = read_response(
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
        let r = read_response(br#"{"object":"list","data":[],"model":"e","usage":{"prompt_tokens":8,"total_tokens":8}}"#).unwrap();
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((8, 0))
        );
    }

    #[test]
    fn absurd_usage_is_capped() {
        let r = read_response(br#"{"usage":{"prompt_tokens":9007199254740993,"completion_tokens":18446744073709551615}}"#).unwrap();
        let u = r.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens),
            (MAX_REPORTED_TOKENS, MAX_REPORTED_TOKENS)
        );
    }

    #[test]
    fn usage_that_is_not_an_object_is_not_believed() {
        assert_eq!(
            read_response(br#"{"choices":[],"usage":[1,0]}"#)
                .unwrap()
                .usage,
            None
        );
        assert_eq!(read_response(br#"{"usage":"12"}"#).unwrap().usage, None);
        let r =
            read_response(br#"{"usage":{"prompt_tokens":2,"prompt_tokens_details":[5]}}"#).unwrap();
        assert_eq!(r.usage.unwrap().cached_input_tokens, None);
        assert!(read_response(br#"[{"usage":{"prompt_tokens":1}}]"#).is_none());
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
        let r = read_response(br#"{"usage":{"prompt_tokens":"many"}}"#).unwrap();
        assert_eq!(r.usage, None);
        let r = read_response(br#"{"usage":{"prompt_tokens":-3,"completion_tokens":1}}"#).unwrap();
        assert_eq!(r.usage, None);
        assert!(read_response(b"not json").is_none());
        assert!(read_response(b"{\"usage\":{\"prompt_tokens\":1").is_none());
    }
}
