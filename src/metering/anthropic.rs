//! Anthropic's Messages API (`POST /v1/messages`).
//!
//! The request holds `system` (a string or text blocks), `messages` (content as a string or
//! a list of blocks: text, images, tool calls and tool results) and `max_tokens`. Usage
//! comes as `input_tokens` (the part of the prompt that was not cached), `output_tokens`,
//! and the cached part apart: `cache_creation_input_tokens` (written to the cache) and
//! `cache_read_input_tokens` (read from it). The billing record counts every input token,
//! as OpenAI's `prompt_tokens` does, so the three are added into `input_tokens`; the cache
//! reads are also kept as `cached_input_tokens` and the cache writes as
//! `cache_write_input_tokens`, since they are priced apart.
//!
//! A stream is a sequence of typed events: `message_start` carries the message with the
//! input usage, `content_block_delta` the text, `message_delta` the final output count
//! (cumulative; newer servers repeat the input figures there too), then `message_stop`.
//! `ping` and `error` events carry no usage. A stream cut after `message_start` still has
//! its input reported; only its output is estimated.

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
    system: Option<Content>,
    #[serde(default, deserialize_with = "lenient")]
    messages: Option<Vec<Message>>,
    #[serde(default, deserialize_with = "cap")]
    max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "flag")]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<Blocks>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Blocks {
    Text(String),
    List(Vec<Block>),
}

/// A content block: text, a tool call (`input`), a tool result (`content`, itself blocks),
/// or thinking. Images and documents count nothing here.
#[derive(Deserialize)]
struct Block {
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    thinking: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    content: Option<Blocks>,
}

impl Blocks {
    /// Calls `f` with the length of every piece of text, tool input JSON included.
    fn each_len(&self, f: &mut dyn FnMut(usize)) {
        match self {
            Blocks::Text(t) => f(t.len()),
            Blocks::List(blocks) => blocks.iter().for_each(|b| b.each_len(f)),
        }
    }
}

impl Block {
    fn each_len(&self, f: &mut dyn FnMut(usize)) {
        for text in [&self.text, &self.thinking].into_iter().flatten() {
            f(text.len());
        }
        if let Some(input) = &self.input {
            f(input.to_string().len());
        }
        if let Some(content) = &self.content {
            content.each_len(f);
        }
    }
}

/// Estimates a request body (a JSON object). `None` if it is not an object.
pub fn estimate_request(body: Value, default_max_tokens: u64) -> Option<RequestEstimate> {
    // serde would also fill a struct from a list, by position.
    if !body.is_object() {
        return None;
    }
    let req = Request::deserialize(body).ok()?;
    let system = req.system.as_ref().map_or(0, Content::tokens);
    let messages = req.messages.as_deref().unwrap_or_default();
    let text: u64 = messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(|c| {
            let mut n = 0;
            c.each_len(&mut |len| n += estimate::bytes_tokens(len));
            n
        })
        .sum();
    Some(RequestEstimate {
        model: req.model,
        input_tokens: system + text + PER_MESSAGE * messages.len() as u64 + PER_CONVERSATION,
        output_tokens: req.max_tokens.unwrap_or(default_max_tokens),
        stream: req.stream.unwrap_or(false),
        billable: true,
    })
}

/// Usage as Anthropic writes it. Any count may be missing (or null) in a stream event.
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default, deserialize_with = "lenient")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// The input figures, every input token in `input_tokens`; `None` if the report has no
    /// `input_tokens`. `earlier` fills in what a later event leaves out.
    fn input(&self, earlier: Option<&Usage>) -> Option<Usage> {
        let uncached = self.input_tokens.or_else(|| {
            earlier.map(|u| {
                u.input_tokens
                    .saturating_sub(u.cached_input_tokens.unwrap_or(0))
                    .saturating_sub(u.cache_write_input_tokens.unwrap_or(0))
            })
        })?;
        let write = self
            .cache_creation_input_tokens
            .or_else(|| earlier.and_then(|u| u.cache_write_input_tokens));
        let read = self
            .cache_read_input_tokens
            .or_else(|| earlier.and_then(|u| u.cached_input_tokens));
        let total = uncached
            .saturating_add(write.unwrap_or(0))
            .saturating_add(read.unwrap_or(0));
        Some(Usage {
            input_tokens: clamp(total),
            output_tokens: 0,
            cached_input_tokens: read.map(clamp),
            cache_write_input_tokens: write.map(clamp),
            reasoning_tokens: None,
        })
    }

    fn complete(&self, earlier: Option<&Usage>) -> Option<Usage> {
        let output = self.output_tokens?;
        Some(Usage {
            output_tokens: clamp(output),
            ..self.input(earlier)?
        })
    }
}

/// A message, whole or inside `message_start`.
#[derive(Deserialize)]
struct Reply {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "object")]
    usage: Option<WireUsage>,
    #[serde(default, deserialize_with = "lenient")]
    content: Option<Vec<Block>>,
}

/// Reads a whole response body. `None` if it is not a JSON object.
pub fn read_body(json: &[u8]) -> Option<Reading> {
    let reply: Reply = json::parse_reply(json)?;
    let mut reading = Reading {
        model: reply.model,
        usage: reply.usage.and_then(|u| u.complete(None)),
        ..Reading::default()
    };
    for block in reply.content.iter().flatten() {
        block.each_len(&mut |len| reading.generated.add_len(len));
    }
    Some(reading)
}

#[derive(Deserialize)]
struct Event {
    #[serde(default, rename = "type", deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "object")]
    message: Option<Reply>,
    #[serde(default, deserialize_with = "object")]
    usage: Option<WireUsage>,
    #[serde(default, deserialize_with = "object")]
    delta: Option<Delta>,
}

/// A `content_block_delta`'s piece: text, thinking, or a tool call's JSON.
#[derive(Deserialize)]
struct Delta {
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    thinking: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    partial_json: Option<String>,
}

/// Reads one stream event.
pub fn read_event(reading: &mut Reading, data: &[u8]) {
    let Some(event) = json::parse_reply::<Event>(data) else {
        return;
    };
    match event.kind.as_deref() {
        Some("message_start") => {
            let Some(message) = event.message else {
                return;
            };
            if reading.model.is_none() {
                reading.model = message.model;
            }
            if let Some(input) = message.usage.and_then(|u| u.input(None)) {
                reading.input = Some(input);
            }
        }
        Some("content_block_delta") => {
            if let Some(d) = event.delta {
                for text in [&d.text, &d.thinking, &d.partial_json]
                    .into_iter()
                    .flatten()
                {
                    reading.generated.add(text);
                }
            }
        }
        Some("message_delta") => {
            let Some(usage) = event.usage else {
                return;
            };
            if let Some(input) = usage.input(reading.input.as_ref()) {
                reading.input = Some(input);
            }
            if let Some(complete) = usage.complete(reading.input.as_ref()) {
                reading.usage = Some(complete);
            }
        }
        _ => {}
    }
}

/// Finds the usage in the last bytes of a body too large to keep whole (`usage` is the
/// message's last field).
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    let value = json::value_in_tail(tail, "usage")?;
    if !value.is_object() {
        return None;
    }
    WireUsage::deserialize(value).ok()?.complete(None)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn request_with_system_blocks_and_tools() {
        let e = estimate_request(
            parse(br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,
                "system":[{"type":"text","text":"abcdefgh","cache_control":{"type":"ephemeral"}}],
                "messages":[
                  {"role":"user","content":"abcd"},
                  {"role":"assistant","content":[{"type":"text","text":"abcd"},{"type":"tool_use","id":"t","name":"f","input":{"q":"x"}}]},
                  {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"abcd"}]},
                                            {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}]}"#),
            100,
        )
        .unwrap();
        assert_eq!(e.model.as_deref(), Some("claude-sonnet-4-5"));
        // system 2; "abcd" 1; "abcd" + {"q":"x"} (9 bytes) = 13 bytes, 4; tool result 1.
        assert_eq!(
            e.input_tokens,
            2 + 1 + 4 + 1 + 3 * PER_MESSAGE + PER_CONVERSATION
        );
        assert_eq!(e.output_tokens, 1024);
        assert!(e.stream);
        let e = estimate_request(parse(br#"{"messages":[]}"#), 100).unwrap();
        assert_eq!((e.input_tokens, e.output_tokens), (PER_CONVERSATION, 100));
    }

    #[test]
    fn body_usage_adds_the_cache_into_the_input() {
        let r = read_body(br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
            "content":[{"type":"text","text":"abcdefgh"}],"stop_reason":"end_turn","stop_sequence":null,
            "usage":{"input_tokens":20,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":12,"service_tier":"standard"}}"#)
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 2120,
                output_tokens: 12,
                cached_input_tokens: Some(2000),
                cache_write_input_tokens: Some(100),
                reasoning_tokens: None,
            })
        );
        assert_eq!(r.generated.tokens(), 2);
        let r = read_body(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap();
        assert_eq!(r.usage, None);
    }

    #[test]
    fn stream_usage_from_start_and_delta() {
        let mut r = Reading::default();
        read_event(
            &mut r,
            br#"{"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
        );
        assert_eq!(r.usage, None);
        assert_eq!(r.input.map(|u| u.input_tokens), Some(30));
        read_event(
            &mut r,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        );
        read_event(&mut r, br#"{"type": "ping"}"#);
        read_event(
            &mut r,
            br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
        );
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (30, 15));
        assert_eq!(u.cached_input_tokens, Some(5));
        assert_eq!(r.model.as_deref(), Some("claude-x"));
        assert_eq!(r.generated.tokens(), 2);
    }

    #[test]
    fn a_delta_that_repeats_the_input_figures_wins() {
        let mut r = Reading::default();
        read_event(
            &mut r,
            br#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":3,"output_tokens":1}}}"#,
        );
        read_event(
            &mut r,
            br#"{"type":"message_delta","usage":{"input_tokens":11,"cache_read_input_tokens":4,"output_tokens":7}}"#,
        );
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (18, 7));
        assert_eq!(
            (u.cached_input_tokens, u.cache_write_input_tokens),
            (Some(4), Some(3))
        );
    }

    #[test]
    fn a_delta_without_a_start_has_no_input() {
        let mut r = Reading::default();
        read_event(
            &mut r,
            br#"{"type":"message_delta","usage":{"output_tokens":7}}"#,
        );
        assert_eq!(r.usage, None);
        assert_eq!(r.input, None);
    }

    #[test]
    fn tail_usage() {
        let tail = br#"ext":"x"}],"stop_reason":"end_turn","usage":{"input_tokens":4,"output_tokens":9,"cache_read_input_tokens":null}}"#;
        let u = usage_in_tail(tail).unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (4, 9));
        assert_eq!(u.cached_input_tokens, None);
    }
}
