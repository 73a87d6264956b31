//! OpenAI's Responses API (`POST /v1/responses`).
//!
//! The request holds `input` (a string, or a list of items: messages whose `content` is a
//! string or a list of parts, tool outputs, earlier tool calls), `instructions` and
//! `max_output_tokens`. The response object reports `usage.input_tokens` and
//! `usage.output_tokens`, with `input_tokens_details.cached_tokens` and
//! `output_tokens_details.reasoning_tokens`. A stream is a sequence of typed events; the last
//! one, `response.completed` (or `response.incomplete` or `response.failed`), carries the
//! whole response object and so its usage. Text arrives in `*.delta` events.
//!
//! A request that continues an earlier one (`previous_response_id`) is charged by the server
//! for the whole conversation; the estimate sees only the new input, and settlement corrects
//! it once the usage is in.

use serde::Deserialize;
use serde_json::Value;

use super::estimate::{Content, PER_CONVERSATION, PER_MESSAGE};
use super::json::{self, cap, clamp, flag, lenient, object};
use super::{estimate, Reading, RequestEstimate, Usage};

#[derive(Deserialize)]
struct Request {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    input: Option<Input>,
    #[serde(default, deserialize_with = "lenient")]
    instructions: Option<String>,
    #[serde(default, deserialize_with = "cap")]
    max_output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "flag")]
    stream: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Item>),
}

/// One input item. Messages carry `content`; a tool's result carries `output`; an earlier
/// tool call carries its `arguments`. Other items (reasoning, references) count as framing.
#[derive(Deserialize)]
struct Item {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<Content>,
    #[serde(default, deserialize_with = "lenient")]
    output: Option<Content>,
    #[serde(default, deserialize_with = "lenient")]
    arguments: Option<String>,
}

/// Estimates a request body (a JSON object). `None` if it is not an object.
pub fn estimate_request(body: Value, default_max_tokens: u64) -> Option<RequestEstimate> {
    // serde would also fill a struct from a list, by position.
    if !body.is_object() {
        return None;
    }
    let req = Request::deserialize(body).ok()?;
    let instructions = req.instructions.as_deref().map_or(0, estimate::text_tokens);
    let input = match &req.input {
        None => 0,
        Some(Input::Text(t)) => estimate::text_tokens(t) + PER_MESSAGE,
        Some(Input::Items(items)) => items
            .iter()
            .map(|i| {
                let text = [&i.content, &i.output]
                    .into_iter()
                    .flatten()
                    .map(Content::tokens)
                    .sum::<u64>();
                text + i.arguments.as_deref().map_or(0, estimate::text_tokens) + PER_MESSAGE
            })
            .sum(),
    };
    Some(RequestEstimate {
        model: req.model,
        input_tokens: instructions + input + PER_CONVERSATION,
        output_tokens: req.max_output_tokens.unwrap_or(default_max_tokens),
        stream: req.stream.unwrap_or(false),
        billable: true,
    })
}

/// A response object, whole or inside a stream event.
#[derive(Deserialize)]
struct Response {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "object")]
    usage: Option<WireUsage>,
    #[serde(default, deserialize_with = "lenient")]
    output: Option<Vec<OutputItem>>,
}

#[derive(Deserialize)]
struct WireUsage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(default, deserialize_with = "object")]
    input_tokens_details: Option<InputDetails>,
    #[serde(default, deserialize_with = "object")]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize)]
struct InputDetails {
    #[serde(default, deserialize_with = "lenient")]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OutputDetails {
    #[serde(default, deserialize_with = "lenient")]
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            input_tokens: clamp(u.input_tokens),
            output_tokens: clamp(u.output_tokens),
            cached_input_tokens: u
                .input_tokens_details
                .and_then(|d| d.cached_tokens)
                .map(clamp),
            cache_write_input_tokens: None,
            reasoning_tokens: u
                .output_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .map(clamp),
        }
    }
}

/// An output item: a message (text parts), a function call (arguments) or reasoning
/// (summary parts).
#[derive(Deserialize)]
struct OutputItem {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<Content>,
    #[serde(default, deserialize_with = "lenient")]
    summary: Option<Content>,
    #[serde(default, deserialize_with = "lenient")]
    arguments: Option<String>,
}

fn fold(reading: &mut Reading, response: Response) {
    if reading.model.is_none() {
        reading.model = response.model;
    }
    if let Some(u) = response.usage {
        reading.usage = Some(u.into());
    }
    for item in response.output.iter().flatten() {
        for content in [&item.content, &item.summary].into_iter().flatten() {
            content.each_text(|t| reading.generated.add(t));
        }
        if let Some(args) = &item.arguments {
            reading.generated.add(args);
        }
    }
}

/// Reads a whole response body. `None` if it is not a JSON object.
pub fn read_body(json: &[u8]) -> Option<Reading> {
    let mut reading = Reading::default();
    fold(&mut reading, json::parse_reply(json)?);
    Some(reading)
}

/// A stream event: `type`, a text `delta`, or the `response` object.
#[derive(Deserialize)]
struct Event {
    #[serde(default, rename = "type", deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    delta: Option<String>,
    #[serde(default, deserialize_with = "object")]
    response: Option<Response>,
}

/// Reads one stream event.
pub fn read_event(reading: &mut Reading, data: &[u8]) {
    let Some(event) = json::parse_reply::<Event>(data) else {
        return;
    };
    let kind = event.kind.as_deref().unwrap_or("");
    if let Some(delta) = &event.delta {
        if kind.ends_with(".delta") {
            reading.generated.add(delta);
        }
    }
    // The final event repeats the whole output: its text was counted from the deltas.
    if let Some(mut response) = event.response {
        response.output = None;
        fold(reading, response);
    }
}

/// Finds the usage in the last bytes of a body too large to keep whole.
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

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn request_of_every_input_shape() {
        let e = estimate_request(
            parse(br#"{"model":"gpt-4.1","input":"abcdefgh","instructions":"abcd","max_output_tokens":40,"stream":true}"#),
            100,
        )
        .unwrap();
        assert_eq!(e.model.as_deref(), Some("gpt-4.1"));
        assert_eq!(e.input_tokens, 2 + 1 + PER_MESSAGE + PER_CONVERSATION);
        assert_eq!(e.output_tokens, 40);
        assert!(e.stream);

        let e = estimate_request(
            parse(br#"{"input":[
                {"role":"user","content":[{"type":"input_text","text":"abcd"},{"type":"input_image","image_url":"data:..."}]},
                {"type":"function_call","call_id":"c","name":"f","arguments":"{\"x\":1}"},
                {"type":"function_call_output","call_id":"c","output":"12345678"},
                {"type":"item_reference","id":"msg_1"}]}"#),
            100,
        )
        .unwrap();
        assert_eq!(
            e.input_tokens,
            1 + 2 + 2 + 4 * PER_MESSAGE + PER_CONVERSATION
        );
        assert_eq!(e.output_tokens, 100);
        assert!(!e.stream);
        assert!(estimate_request(parse(b"[]"), 1).is_none());
    }

    #[test]
    fn body_usage_and_text() {
        let r = read_body(br#"{"id":"resp_1","object":"response","model":"gpt-4.1-2025-04-14",
            "output":[{"type":"reasoning","summary":[{"type":"summary_text","text":"abcd"}]},
              {"type":"message","content":[{"type":"output_text","text":"abcdefgh","annotations":[]}]}],
            "usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":8},"output_tokens":87,
              "output_tokens_details":{"reasoning_tokens":64},"total_tokens":123}}"#)
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4.1-2025-04-14"));
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (36, 87));
        assert_eq!(
            (u.cached_input_tokens, u.reasoning_tokens),
            (Some(8), Some(64))
        );
        assert_eq!(r.generated.tokens(), 3);
    }

    #[test]
    fn stream_events() {
        let mut r = Reading::default();
        for data in [
            &br#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","model":"m","output":[],"usage":null}}"#[..],
            br#"{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi"}"#,
            br#"{"type":"response.output_text.done","text":"Hi there"}"#,
            br#"{"type":"error","code":"x","message":"y"}"#,
        ] {
            read_event(&mut r, data);
        }
        assert_eq!(r.usage, None);
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.generated.tokens(), 1);
        read_event(
            &mut r,
            br#"{"type":"response.completed","response":{"model":"m","output":[{"type":"message","content":[{"type":"output_text","text":"Hi there"}]}],"usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}}"#,
        );
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((5, 2))
        );
        assert_eq!(r.generated.tokens(), 1);
    }

    #[test]
    fn usage_in_the_tail() {
        let tail =
            br#"}]}],"usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7},"user":null}"#;
        assert_eq!(
            usage_in_tail(tail).map(|u| (u.input_tokens, u.output_tokens)),
            Some((3, 4))
        );
        assert_eq!(usage_in_tail(br#""usage":{"prompt_tokens":3}}"#), None);
    }
}
