//! Ollama's native API: `POST /api/chat` and `POST /api/generate`.
//!
//! A chat request holds `messages`, a generate request `prompt` (with `system`, and
//! `context`: the tokens of an earlier exchange, sent back as they are); both cap their output
//! with `options.num_predict` (zero or negative: no cap, so the default reservation
//! applies). Unlike the OpenAI shapes, a request streams unless it says `"stream": false`.
//!
//! The answer is one JSON object, or a stream of them, one per line (`application/x-ndjson`),
//! each carrying a piece of text (`message.content` or `response`, and `thinking`). The last
//! one has `"done": true` and the counts: `prompt_eval_count` (input) and `eval_count`
//! (output). Ollama leaves a count out when it is zero (a prompt served from its cache has
//! no `prompt_eval_count`), so a missing count in the final object reads as zero.

use serde::Deserialize;
use serde_json::Value;

use super::estimate::{PER_CONVERSATION, PER_MESSAGE};
use super::json::{self, cap, clamp, flag, lenient, object};
use super::{estimate, Reading, RequestEstimate, Usage};

/// Which Ollama endpoint a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Generate,
}

#[derive(Deserialize)]
struct Request {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    messages: Option<Vec<Message>>,
    #[serde(default, deserialize_with = "lenient")]
    prompt: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    system: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    context: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "object")]
    options: Option<Options>,
    #[serde(default, deserialize_with = "flag")]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Options {
    /// Zero or negative (`-1`: no limit, `-2`: fill the context) is no cap.
    #[serde(default, deserialize_with = "cap")]
    num_predict: Option<u64>,
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
    let input_tokens = match endpoint {
        Endpoint::Chat => {
            let messages = req.messages.as_deref().unwrap_or_default();
            let text: u64 = messages
                .iter()
                .filter_map(|m| m.content.as_deref())
                .map(estimate::text_tokens)
                .sum();
            text + PER_MESSAGE * messages.len() as u64 + PER_CONVERSATION
        }
        Endpoint::Generate => {
            [&req.prompt, &req.system]
                .into_iter()
                .flatten()
                .map(|t| estimate::text_tokens(t))
                .sum::<u64>()
                + req.context.as_ref().map_or(0, |c| c.len() as u64)
        }
    };
    Some(RequestEstimate {
        model: req.model,
        input_tokens,
        output_tokens: req
            .options
            .and_then(|o| o.num_predict)
            .unwrap_or(default_max_tokens),
        stream: req.stream.unwrap_or(true),
        billable: true,
    })
}

/// One answer object: a whole body or one line of a stream.
#[derive(Deserialize)]
struct Reply {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "object")]
    message: Option<Said>,
    #[serde(default, deserialize_with = "lenient")]
    response: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    thinking: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    done: Option<bool>,
    prompt_eval_count: Option<Value>,
    eval_count: Option<Value>,
}

#[derive(Deserialize)]
struct Said {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    thinking: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    tool_calls: Option<Vec<Value>>,
}

/// The counts of a final object: a missing one is zero, a malformed one spoils the report.
fn usage(prompt: Option<&Value>, eval: Option<&Value>) -> Option<Usage> {
    let read = |v: Option<&Value>| match v {
        None => Some(0),
        Some(v) => v.as_u64(),
    };
    Some(Usage {
        input_tokens: clamp(read(prompt)?),
        output_tokens: clamp(read(eval)?),
        ..Usage::default()
    })
}

fn fold(reading: &mut Reading, reply: Reply) {
    if reading.model.is_none() {
        reading.model = reply.model;
    }
    let said = reply.message.as_ref();
    for text in [
        said.and_then(|m| m.content.as_ref()),
        said.and_then(|m| m.thinking.as_ref()),
        reply.response.as_ref(),
        reply.thinking.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        reading.generated.add(text);
    }
    for call in said
        .and_then(|m| m.tool_calls.as_ref())
        .into_iter()
        .flatten()
    {
        reading.generated.add_len(call.to_string().len());
    }
    if reply.done == Some(true) {
        if let Some(u) = usage(reply.prompt_eval_count.as_ref(), reply.eval_count.as_ref()) {
            reading.usage = Some(u);
        }
    }
}

/// Reads a whole response body. `None` if it is not a JSON object.
pub fn read_body(json: &[u8]) -> Option<Reading> {
    let mut reading = Reading::default();
    fold(&mut reading, json::parse_reply(json)?);
    Some(reading)
}

/// Reads one line of a stream.
pub fn read_event(reading: &mut Reading, line: &[u8]) {
    if let Some(reply) = json::parse_reply(line) {
        fold(reading, reply);
    }
}

/// Finds the counts in the last bytes of a body too large to keep whole: they are the final
/// object's last fields.
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    if json::value_in_tail(tail, "done") != Some(Value::Bool(true)) {
        return None;
    }
    usage(
        json::value_in_tail(tail, "prompt_eval_count").as_ref(),
        json::value_in_tail(tail, "eval_count").as_ref(),
    )
}

#[cfg(test)]
mod tests {

    use super::*;

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn chat_and_generate_requests() {
        let e = estimate_request(
            Endpoint::Chat,
            parse(br#"{"model":"llama3.2","messages":[{"role":"user","content":"abcdefgh"}],"options":{"num_predict":64,"temperature":0}}"#),
            100,
        )
        .unwrap();
        assert_eq!(e.model.as_deref(), Some("llama3.2"));
        assert_eq!(e.input_tokens, 2 + PER_MESSAGE + PER_CONVERSATION);
        assert_eq!(e.output_tokens, 64);
        assert!(e.stream, "Ollama streams unless told not to");

        let e = estimate_request(
            Endpoint::Generate,
            parse(br#"{"model":"m","prompt":"abcd","system":"abcd","context":[1,2,3],"stream":false,"options":{"num_predict":-1}}"#),
            100,
        )
        .unwrap();
        assert_eq!((e.input_tokens, e.output_tokens), (5, 100));
        assert!(!e.stream);
    }

    #[test]
    fn stream_lines_and_the_final_counts() {
        let mut r = Reading::default();
        read_event(
            &mut r,
            br#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"The"},"done":false}"#,
        );
        read_event(
            &mut r,
            br#"{"model":"llama3.2","response":" sky","done":false}"#,
        );
        assert_eq!(r.usage, None);
        read_event(
            &mut r,
            br#"{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":4883583458,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}"#,
        );
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (26, 282));
        assert_eq!(r.model.as_deref(), Some("llama3.2"));
        assert_eq!(r.generated.tokens(), 2);
    }

    #[test]
    fn a_missing_count_is_zero_and_a_bad_one_spoils_the_report() {
        let r = read_body(br#"{"model":"m","response":"","done":true,"eval_count":3}"#).unwrap();
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((0, 3))
        );
        let r = read_body(br#"{"done":true,"eval_count":-3,"prompt_eval_count":1}"#).unwrap();
        assert_eq!(r.usage, None);
        let r = read_body(br#"{"done":false,"eval_count":3,"prompt_eval_count":1}"#).unwrap();
        assert_eq!(r.usage, None);
        let r = read_body(br#"{"error":"model \"x\" not found"}"#).unwrap();
        assert_eq!(r.usage, None);
    }

    #[test]
    fn tail_counts() {
        let tail =
            br#"ord"},"done":true,"done_reason":"stop","prompt_eval_count":12,"eval_count":900}"#;
        assert_eq!(
            usage_in_tail(tail).map(|u| (u.input_tokens, u.output_tokens)),
            Some((12, 900))
        );
        assert_eq!(usage_in_tail(br#""done":false,"eval_count":3}"#), None);
    }
}
